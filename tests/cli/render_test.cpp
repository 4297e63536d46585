// Table and CSV rendering of API answers built by hand in the documented shapes (docs/api.md).
#include "cli/render.h"

#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace ratio::cli {
namespace {

using nlohmann::json;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Column on screen of a byte offset: UTF-8 continuation bytes take no column.
size_t screen_column(const std::string& line, size_t byte_offset) {
  size_t column = 0;
  for (size_t i = 0; i < byte_offset && i < line.size(); ++i)
    if ((static_cast<unsigned char>(line[i]) & 0xC0) != 0x80) ++column;
  return column;
}

json results_answer() {
  json base = {{"job_id", 1}, {"step", "0"}, {"name", "baseline GPT-2"}, {"status", "succeeded"},
               {"final_val_loss", 3.574}, {"best_val_loss", 3.57}, {"delta", 0.0}, {"delta_pct", 0.0},
               {"params_total", 124439808}, {"params_added", 0}, {"efficiency", nullptr}, {"tokens_per_s", 81234.5},
               {"verdict", "BASELINE"}, {"verdict_reason", "the reference"}, {"alphas", json::object()},
               {"seeds", 1}, {"val_loss_std", nullptr}, {"within_noise", nullptr}, {"dead_params", json::array()}};
  json ra = {{"job_id", 2}, {"step", "5"}, {"name", "+ RA, \"banded\""}, {"status", "succeeded"},
             {"final_val_loss", 3.6367}, {"best_val_loss", 3.63}, {"delta", 0.0627}, {"delta_pct", 1.754},
             {"params_total", 124439820}, {"params_added", 12}, {"efficiency", -5225.0}, {"tokens_per_s", 70000.0},
             {"verdict", "REMOVE"}, {"verdict_reason", "worse than baseline beyond noise: +0.0627"},
             {"alphas", {{"h.0.attn.ra_alpha", 0.2}, {"h.1.attn.ra_alpha", 0.4}}},
             {"seeds", 2}, {"val_loss_std", 0.011}, {"within_noise", false},
             {"dead_params", {"h.0.coupler.mlp_down.weight"}}};
  json queued = {{"job_id", 3}, {"step", "8"}, {"name", "+ MLA"}, {"status", "queued"}, {"final_val_loss", nullptr},
                 {"params_total", 123000000}, {"params_added", -1439808}, {"verdict", nullptr},
                 {"verdict_reason", "waiting for results (0 of 1 runs finished)"}};
  return {{"matrix", {{"id", 4}, {"name", "demo"}}}, {"baseline_step", "0"},
          {"plain_scaling", nullptr}, {"rows", {base, ra, queued}}};
}

TEST(CliRender, HumanCounts) {
  EXPECT_EQ(human_count(124439808), "124.44M");
  EXPECT_EQ(human_count(12), "12");
  EXPECT_EQ(human_count(-1439808), "-1.44M");
  EXPECT_EQ(human_count(98304), "98.3K");
}

TEST(CliRender, TableColumnsAlign) {
  const std::string table = format_table({"a", "number"}, {{"long cell", "1"}, {"x", "12345"}}, {false, true});
  const std::vector<std::string> lines = lines_of(table);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0], "a          number");
  EXPECT_EQ(lines[1], "---------  ------");
  EXPECT_EQ(lines[2], "long cell       1");
  EXPECT_EQ(lines[3], "x           12345");
}

TEST(CliRender, TableWidthCountsUtf8CodePoints) {
  const std::vector<std::string> lines = lines_of(format_table({"n", "v"}, {{"α", "1"}, {"ab", "2"}}, {false, false}));
  EXPECT_EQ(lines[2], "α   1");
  EXPECT_EQ(lines[3], "ab  2");
}

TEST(CliRender, ResultsTable) {
  const std::string text = render_results_table(results_answer());
  const std::vector<std::string> lines = lines_of(text);
  EXPECT_EQ(lines[0], "matrix 4 (demo), baseline step 0");
  json with_plain = results_answer();
  with_plain["plain_scaling"] = {{"step", "2"}, {"efficiency", 0.0512}};
  EXPECT_EQ(lines_of(render_results_table(with_plain))[0],
            "matrix 4 (demo), baseline step 0, plain scaling step 2 (efficiency 0.0512)");
  with_plain["plain_scaling"]["efficiency"] = nullptr;
  EXPECT_EQ(lines_of(render_results_table(with_plain))[0],
            "matrix 4 (demo), baseline step 0, plain scaling step 2 "
            "(its gain is within noise: no efficiency yardstick)");
  // Header, rule, three rows: the verdict column starts at the same screen column in each (a UTF-8 "±" is 2 bytes).
  const size_t verdict_col = screen_column(lines[2], lines[2].find("verdict"));
  EXPECT_EQ(screen_column(lines[4], lines[4].find("BASELINE")), verdict_col);
  EXPECT_EQ(screen_column(lines[5], lines[5].find("REMOVE !grad")), verdict_col);
  EXPECT_NE(lines[5].find("3.6367 ± 0.0110"), std::string::npos);
  EXPECT_NE(lines[5].find("+0.0627"), std::string::npos);
  EXPECT_NE(lines[5].find("+1.75%"), std::string::npos);
  EXPECT_NE(lines[5].find("0.300 (2)"), std::string::npos);  // mean of the two alphas
  EXPECT_NE(lines[6].find("-1.44M"), std::string::npos);
  EXPECT_NE(text.find("step 5: REMOVE: worse than baseline beyond noise: +0.0627\n"
                      "  no gradient: h.0.coupler.mlp_down.weight"),
            std::string::npos);
  EXPECT_NE(text.find("step 8: pending: waiting for results"), std::string::npos);
}

TEST(CliRender, ResultsCsvQuotesAndJoins) {
  const std::vector<std::string> lines = lines_of(render_results_csv(results_answer()));
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0], "job_id,step,name,status,final_val_loss,best_val_loss,val_loss_std,seeds,delta,delta_pct,"
                      "within_noise,params_total,params_added,efficiency,tokens_per_s,verdict,verdict_reason,"
                      "alphas,dead_params,decision,decision_lower,decision_upper");
  EXPECT_EQ(lines[2],
            "2,5,\"+ RA, \"\"banded\"\"\",succeeded,3.6367,3.63,0.011,2,0.0627,1.754,false,124439820,12,-5225,70000,"
            "REMOVE,worse than baseline beyond noise: +0.0627,h.0.attn.ra_alpha=0.2;h.1.attn.ra_alpha=0.4,"
            "h.0.coupler.mlp_down.weight,,,");
  EXPECT_EQ(lines[3], "3,8,+ MLA,queued,,,,,,,,123000000,-1439808,,,,waiting for results (0 of 1 runs finished),,,,,");
}

// A `decide` matrix: its line above the table, a decision column, and why each seed was added.
TEST(CliRender, ResultsOfADecideMatrix) {
  json results = results_answer();
  results["decide"] = {{"max_seeds", 8}, {"confidence", 0.95}, {"min_effect", 0.01}, {"open_steps", 1},
                       {"gpu_seconds_left_at_most", 5400.0}};
  results["rows"][1]["decision"] = {{"outcome", "undecided"}, {"seeds", 8}, {"mean", 0.0627}, {"lower", -0.0123},
                                    {"upper", 0.1377}, {"look_confidence", 0.99286}, {"reason", "undecided ..."},
                                    {"history", {{{"job_id", 17}, {"seed", 3}, {"reason", "seed 3 added: open: ..."}}}}};
  const std::string text = render_results_table(results);
  EXPECT_NE(text.find("decide: max_seeds 8, confidence 0.95, min_effect 0.01; 1 step open, at most 1.50 GPU-hours to go"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("decision [interval]"), std::string::npos);
  EXPECT_NE(text.find("undecided [-0.0123, +0.1377]"), std::string::npos) << text;
  EXPECT_NE(text.find("  job 17: seed 3 added: open: ..."), std::string::npos) << text;
  const std::vector<std::string> csv = lines_of(render_results_csv(results));
  EXPECT_NE(csv[2].find(",undecided,-0.0123,0.1377"), std::string::npos) << csv[2];
}

TEST(CliRender, ClipLinesKeepsRedrawsOnOneRowEach) {
  EXPECT_EQ(clip_lines("abcdef\nxy\n", 5), "abcd\nxy\n");
  EXPECT_EQ(clip_lines("±±±\n", 3), "±±\n");  // "±" is two bytes, one column
  EXPECT_EQ(clip_lines("abc\n", 0), "abc\n");
}

TEST(CliRender, CsvCell) {
  EXPECT_EQ(csv_cell("plain"), "plain");
  EXPECT_EQ(csv_cell("a,b"), "\"a,b\"");
  EXPECT_EQ(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(csv_cell("two\nlines"), "\"two\nlines\"");
}

TEST(CliRender, MatrixStatus) {
  json matrix = {{"matrix", {{"id", 4}, {"name", "demo"}}},
                 {"jobs",
                  {{{"id", 10}, {"step", "0"}, {"name", "baseline"}, {"status", "succeeded"}, {"iter", 300},
                    {"max_iters", 300}, {"final_val_loss", 1.9512}, {"attempts", 1}},
                   {{"id", 11}, {"step", "5"}, {"name", "+ RA"}, {"status", "running"}, {"iter", 120},
                    {"max_iters", 300}, {"final_val_loss", nullptr}, {"attempts", 2}},
                   {{"id", 12}, {"step", "8"}, {"name", "+ MLA"}, {"status", "failed"}, {"iter", 3},
                    {"max_iters", 300}, {"final_val_loss", nullptr}, {"attempts", 1}, {"reason", "diverged"}}}}};
  const std::vector<std::string> lines = lines_of(render_matrix_status(matrix, {{11, 2.3456}}));
  EXPECT_EQ(lines[0], "matrix 4 (demo): 3 jobs, 1 succeeded, 1 running, 1 failed");
  EXPECT_NE(lines[3].find("300/300"), std::string::npos);
  EXPECT_NE(lines[3].find("1.9512"), std::string::npos);
  EXPECT_NE(lines[4].find("120/300"), std::string::npos);
  EXPECT_NE(lines[4].find("2.3456"), std::string::npos);
  EXPECT_NE(lines[5].find("diverged"), std::string::npos);
}

TEST(CliRender, MatrixListFlagsMixedBuilds) {
  json list = {{"matrices",
                {{{"id", 1}, {"name", "demo"}, {"created_at", "2026-11-24T10:00:00Z"}, {"total", 12},
                  {"counts", {{"succeeded", 12}, {"running", 0}, {"queued", 0}, {"failed", 0}, {"cancelled", 0}}},
                  {"build_ids", {"abc", "def"}}}}}};
  const std::string text = render_matrix_list(list);
  EXPECT_NE(text.find("2 (mixed!)"), std::string::npos);
  EXPECT_NE(render_matrix_list({{"matrices", json::array()}}).find("ratio submit --preset demo"), std::string::npos);
}

TEST(CliRender, Expansion) {
  json expansion = {{"matrix", {{"name", "tiny"}}},
                    {"jobs",
                     {{{"step", "0"}, {"name", "base"}, {"config_hash", "0123456789abcdef"},
                       {"config", {{"tags", json::array()}}}, {"params", {{"total", 800000}, {"added", 0}}}},
                      {{"step", "19"}, {"name", "3 forced open"}, {"config_hash", "fedcba9876543210"},
                       {"config", {{"tags", {"forced_gates_twin_of:3"}}}},
                       {"params", {{"total", 812000}, {"added", 12000}}}}}},
                    {"warnings", {{{"rule", "same_model"}, {"steps", {"2", "8"}}, {"message", "same architecture"}}}}};
  const std::string text = render_expansion(expansion);
  EXPECT_NE(text.find("matrix tiny: 2 jobs"), std::string::npos);
  EXPECT_NE(text.find("forced_gates_twin_of:3"), std::string::npos);
  EXPECT_NE(text.find("12.0K"), std::string::npos);
  EXPECT_NE(text.find("warning [same_model] steps 2,8: same architecture"), std::string::npos);
}

}  // namespace
}  // namespace ratio::cli

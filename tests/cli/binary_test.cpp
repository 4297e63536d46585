// The real `ratio` binary without a daemon: local commands, exit codes and error one-liners.
#include <algorithm>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "matrix/job_spec.h"
#include "tests/cli/cli_process.h"

namespace ratio::cli::test {
namespace {

using nlohmann::json;

TEST(CliBinary, ExpandDemoPresetJsonShape) {
  const Ran ran = run_ratio({"expand", "--preset", "demo", "--json"});
  ASSERT_EQ(ran.code, 0) << ran.err;
  const json j = json::parse(ran.out);
  EXPECT_EQ(j.at("matrix").at("name"), "demo");
  ASSERT_TRUE(j.at("warnings").is_array());
  const json& jobs = j.at("jobs");
  ASSERT_GE(jobs.size(), 6u);
  std::vector<std::string> steps;
  for (const json& job : jobs) {
    steps.push_back(job.at("step").get<std::string>());
    EXPECT_TRUE(job.at("name").is_string());
    // Each entry's config is a complete job spec the worker accepts, with a 16-hex-digit hash.
    const JobSpec spec = job_spec_from_json(job.at("config"));
    EXPECT_EQ(job.at("config_hash").get<std::string>(), config_hash(spec));
    EXPECT_EQ(job.at("config_hash").get<std::string>().size(), 16u);
    EXPECT_GT(job.at("params").at("total").get<int64_t>(), 0);
    EXPECT_TRUE(job.at("params").contains("added"));
    EXPECT_TRUE(job.at("params").at("by_mechanism").is_object());
  }
  for (const char* step : {"0", "2", "5", "8", "12", "16"})
    EXPECT_NE(std::find(steps.begin(), steps.end(), step), steps.end()) << "step " << step;
}

TEST(CliBinary, ExpandTableAndPresets) {
  const Ran table = run_ratio({"expand", "--preset", "demo"});
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.out.find("matrix demo:"), std::string::npos);
  EXPECT_NE(table.out.find("config_hash"), std::string::npos);
  const Ran presets = run_ratio({"presets"});
  ASSERT_EQ(presets.code, 0) << presets.err;
  for (const char* name : {"demo", "gpt2-ratio-ablation", "gpt2-ratio-forced-gates", "gpt2-ratio-search"})
    EXPECT_NE(presets.out.find(name), std::string::npos) << name;
}

TEST(CliBinary, UnknownPresetListsTheKnownOnes) {
  const Ran ran = run_ratio({"expand", "--preset", "nope"});
  EXPECT_EQ(ran.code, 4);
  EXPECT_NE(ran.err.find("nope"), std::string::npos) << ran.err;
  EXPECT_NE(ran.err.find("demo"), std::string::npos) << ran.err;
}

TEST(CliBinary, InvalidMatrixFileNamesLineAndPath) {
  const std::filesystem::path file = std::filesystem::temp_directory_path() / "ratio-cli-bad-matrix.yaml";
  std::ofstream(file) << "name: bad\nsteps:\n  - id: 0\n    name: base\n    mlp_ratio: wide\n";
  const Ran ran = run_ratio({"expand", file.string()});
  std::filesystem::remove(file);
  EXPECT_EQ(ran.code, 4);
  EXPECT_NE(ran.err.find("ratio-cli-bad-matrix.yaml:5:"), std::string::npos) << ran.err;
  EXPECT_NE(ran.err.find("mlp_ratio"), std::string::npos) << ran.err;
}

TEST(CliBinary, UnreachableDaemonSaysHowToStartIt) {
  const std::string url = "http://127.0.0.1:" + std::to_string(free_port());
  const Ran ran = run_ratio({"--server", url, "status"});
  EXPECT_EQ(ran.code, 3);
  EXPECT_NE(ran.err.find("cannot reach ratiod at " + url), std::string::npos) << ran.err;
  EXPECT_NE(ran.err.find("Start it with"), std::string::npos) << ran.err;
  // $RATIO_SERVER is the default when --server is absent.
  const Ran env = run_ratio({"results", "1"}, "RATIO_SERVER=" + url);
  EXPECT_EQ(env.code, 3);
  EXPECT_NE(env.err.find(url), std::string::npos) << env.err;
}

TEST(CliBinary, UsageErrorsExitTwo) {
  const Ran ran = run_ratio({"sumbit", "x.yaml"});
  EXPECT_EQ(ran.code, 2);
  EXPECT_EQ(ran.err,
            "ratio: unknown command 'sumbit'; commands: submit status results rerun cancel logs expand "
            "presets export (ratio --help)\n");
  EXPECT_EQ(ran.out, "");
}

TEST(CliBinary, MissingMatrixFileExitsSixBeforeContactingTheDaemon) {
  const Ran ran = run_ratio({"--server", "http://127.0.0.1:1", "submit", "/nonexistent/m.yaml"});
  EXPECT_EQ(ran.code, 6);
  EXPECT_NE(ran.err.find("cannot read matrix file '/nonexistent/m.yaml'"), std::string::npos) << ran.err;
}

TEST(CliBinary, VersionHelpAndUnknownFlag) {
  const Ran version = run_ratio({"--version"});
  EXPECT_EQ(version.code, 0);
  EXPECT_EQ(version.out.rfind("ratio ", 0), 0u) << version.out;
  EXPECT_NE(version.out.find("\nbuild "), std::string::npos) << version.out;
  const Ran sub = run_ratio({"logs", "--help"});
  EXPECT_EQ(sub.code, 0);
  EXPECT_NE(sub.out.find("--tail"), std::string::npos) << sub.out;
  const Ran bad = run_ratio({"--bogus", "status"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_EQ(bad.err, "ratio: unknown option '--bogus' (ratio --help)\n");
}

TEST(CliBinary, HelpDocumentsExitCodes) {
  const Ran ran = run_ratio({"--help"});
  EXPECT_EQ(ran.code, 0);
  EXPECT_NE(ran.out.find("Exit codes:"), std::string::npos);
  EXPECT_NE(ran.out.find("3  ratiod not reachable"), std::string::npos);
}

}  // namespace
}  // namespace ratio::cli::test

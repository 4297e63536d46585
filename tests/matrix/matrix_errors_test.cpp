// Malformed matrices: each must fail as a whole with the right file, line, column and key path.
// Lines and columns are 1-based and counted by hand from the text of each case.

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include <nlohmann/json.hpp>

#include "matrix/matrix.h"

using namespace ratio;

namespace {

struct BadCase {
  const char* label;
  std::string text;
  int line;
  int column;
  const char* path;
  const char* message_part;  // a phrase the message must contain
};

// A step list that is valid on its own, appended to cases that break something at the top level.
const std::string kOneStep = "steps:\n  - id: 0\n";

const BadCase kCases[] = {
    {"not a mapping", "- 1\n- 2\n", 1, 1, "", "mapping with at least"},
    {"name missing", "steps: [{id: 0}]\n", 1, 1, "name", "missing"},
    {"steps missing", "name: x\n", 1, 1, "steps", "missing"},
    {"unknown top-level key", std::string("name: x\nstep: []\n") + kOneStep, 2, 1, "step", "unknown key"},
    {"name with a space", std::string("name: my matrix\n") + kOneStep, 1, 7, "name", "letters, digits"},
    {"description not text", std::string("name: x\ndescription: [a, b]\n") + kOneStep, 2, 14, "description", "expected text"},
    {"empty step list", "name: x\nsteps: []\n", 2, 8, "steps", "non-empty list"},
    {"step not a mapping", "name: x\nsteps:\n  - 5\n", 3, 5, "steps[0]", "expected a step mapping"},
    {"step without id", "name: x\nsteps:\n  - name: a\n", 3, 5, "steps[0]", "no id"},
    {"duplicate step id", "name: x\nsteps:\n  - id: 1\n  - id: 1\n", 4, 5, "steps[1].id", "duplicate step id '1'"},
    {"step id with a space", "name: x\nsteps:\n  - id: a b\n", 3, 9, "steps[0].id", "must be a number or a name"},
    {"unknown step key", "name: x\nsteps:\n  - id: 0\n    mlp_ratoi: 5\n", 4, 5, "steps[0].mlp_ratoi",
     "unknown step key"},
    {"integer expected", "name: x\nsteps:\n  - id: 0\n    mla: {latent_dim: big}\n", 4, 23,
     "steps[0].mla.latent_dim", "expected an integer, got \"big\"; write a value like 128"},
    {"unknown mechanism option", "name: x\nsteps:\n  - id: 0\n    ra: {alpah: 0.3}\n", 4, 10, "steps[0].ra.alpah",
     "unknown key; known keys here: alpha"},
    {"out of range", "name: x\nsteps:\n  - id: 0\n    mlp_ratio: 100\n", 4, 16, "steps[0].mlp_ratio", "out of range"},
    {"not one of the modes", "name: x\nsteps:\n  - id: 0\n    ra_ct: {mode: median}\n", 4, 19,
     "steps[0].ra_ct.mode", "'median' is not one of"},
    {"mechanism given a number", "name: x\nsteps:\n  - id: 0\n    mla: 5\n", 4, 10, "steps[0].mla",
     "expected true, false or a mapping"},
    {"quoted number is text", "name: x\nsteps:\n  - id: 0\n    n_layer: \"4\"\n", 4, 14, "steps[0].n_layer",
     "expected an integer, got \"4\""},
    {"unknown base section", std::string("name: x\nbase:\n  optim: {}\n") + kOneStep, 3, 3, "base.optim", "base holds model"},
    {"base value of wrong type", std::string("name: x\nbase:\n  train:\n    lr: fast\n") + kOneStep, 4, 9, "base.train.lr",
     "expected a number"},
    {"heads do not divide width", "name: x\nsteps:\n  - id: 0\n    n_head: 7\n", 4, 13, "steps[0].n_head",
     "not divisible by n_head 7"},
    {"default window exceeds a small block", "name: x\nsteps:\n  - id: 0\n    block_size: 16\n    ra: true\n", 5, 9,
     "steps[0].ra", "resolved model.ra.window"},
    {"base value too large for one step", "name: x\nbase:\n  model: {ra: {window: 32}}\nsteps:\n  - {id: 0, ra: true}\n  - {id: 1, ra: true, block_size: 16}\n",
     3, 24, "base.model.ra.window", "window 32 >= block_size 16; use 0 for the whole causal context (for steps[1])"},
    {"min_lr above lr", "name: x\nsteps:\n  - id: 0\n    train: {lr: 1.0e-4, min_lr: 1.0e-3}\n", 4, 33,
     "steps[0].train.min_lr", "min_lr exceeds lr"},
    {"seed not an integer", std::string("name: x\nseeds: [1, two]\n") + kOneStep, 2, 12, "seeds[1]", "expected an integer"},
    {"seed listed twice", std::string("name: x\nseeds: [1, 1]\n") + kOneStep, 2, 12, "seeds[1]", "listed twice"},
    {"decide without seeds", std::string("name: x\ndecide: {max_seeds: 4}\n") + kOneStep, 2, 9, "decide",
     "at least 2 seeds"},
    {"decide with more seeds than max", std::string("name: x\nseeds: [1, 2, 3]\ndecide: {max_seeds: 2}\n") + kOneStep, 2,
     8, "seeds", "decide.max_seeds is 2"},
    {"decide confidence of 1", std::string("name: x\nseeds: [1, 2]\ndecide: {confidence: 1}\n") + kOneStep, 3, 22,
     "decide.confidence", "out of range [0.5, 1.0)"},
    {"decide unknown key", std::string("name: x\nseeds: [1, 2]\ndecide: {seeds: 4}\n") + kOneStep, 3, 10,
     "decide.seeds", "known keys: max_seeds, confidence, min_effect"},
    {"decide not a mapping", std::string("name: x\nseeds: [1, 2]\ndecide: yes\n") + kOneStep, 3, 9, "decide",
     "expected a mapping"},
    {"grid axis not a list", std::string("name: x\ngrid: {mlp_ratio: 2.0}\n") + kOneStep, 2, 19, "grid.mlp_ratio",
     "non-empty list of values"},
    {"grid value of wrong type", std::string("name: x\ngrid: {mlp_ratio: [2.0, wide]}\n") + kOneStep, 2, 25, "grid.mlp_ratio[1]",
     "expected a number, got \"wide\""},
    {"forced twin of an unknown step", std::string("name: x\nforced_gates: [3]\n") + kOneStep, 2, 16, "forced_gates",
     "no step has id '3'"},
    {"forced_gates not a switch", std::string("name: x\nforced_gates: maybe\n") + kOneStep, 2, 15, "forced_gates",
     "expected true, false or a list"},
    {"max_attempts out of range", std::string("name: x\nmax_attempts: 0\n") + kOneStep, 2, 15, "max_attempts", "out of range [1, 100]"},
    {"duplicate key", "name: x\nsteps:\n  - id: 0\n    mla: true\n    mla: false\n", 5, 5, "steps[0].mla",
     "duplicate key (first on line 4)"},
    {"key without a value", "name: x\nsteps:\n  - id: 0\n    mlp_ratio:\n", 4, 5, "steps[0].mlp_ratio", "has no value"},
    {"YAML merge key", "name: x\nsteps:\n  - id: 0\n    <<: {ra: true}\n", 4, 5, "steps[0].<<",
     "merge keys are not supported"},
    {"grid too large", "name: x\ngrid: {n_layer: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], n_head: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],\n"
     "  train.lr: [1.0e-4, 2.0e-4, 3.0e-4, 4.0e-4, 5.0e-4, 6.0e-4, 7.0e-4, 8.0e-4, 9.0e-4, 1.0e-3]}\n"
     "seeds: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]\n" "steps:\n  - id: 0\n", 2, 7, "grid", "expands to 11000 jobs"},
    {"tags not a list", "name: x\nsteps:\n  - id: 0\n    tags: foo\n", 4, 11, "steps[0].tags", "list of strings"},
    {"step model not a mapping", "name: x\nsteps:\n  - id: 0\n    model: 5\n", 4, 12, "steps[0].model",
     "expected a mapping"},
    {"YAML: map value where none may be", "name: x\n  steps: 3\n", 2, 8, "", "YAML syntax error"},
    {"YAML: key outside the step list", "name: x\nsteps:\n  - id: 0\n  name: a\n", 4, 3, "", "YAML syntax error"},
    {"JSON syntax", "{\"name\": \"x\",\n \"steps\": [}", 2, 12, "", "JSON syntax error"},
    {"YAML byte that is not UTF-8", "name: x\xff\n" + kOneStep, 1, 8, "", "byte 0xFF is not valid UTF-8"},
    {"JSON byte that is not UTF-8", "{\"name\": \"\xc3\xa9\xc3\",\n \"steps\": []}", 1, 12, "", "byte 0xC3 is not valid UTF-8"},
    {"overlong UTF-8", "name: x\nsteps:\n  - {id: 0, name: \xc0\xaf}\n", 3, 19, "", "byte 0xC0 is not valid UTF-8"},
    {"NUL byte", std::string("name: x\0\n", 10) + kOneStep, 1, 8, "", "control character 0x00"},
    {"JSON value of wrong type", "{\"name\": \"x\",\n \"steps\": [{\"id\": 0, \"mla\": {\"latent_dim\": \"big\"}}]}", 2,
     44, "steps[0].mla.latent_dim", "expected an integer"},
};

class MalformedMatrix : public testing::TestWithParam<BadCase> {};

TEST_P(MalformedMatrix, FailsWithLocationAndPath) {
  const BadCase& c = GetParam();
  try {
    expand_matrix(c.text, "bad.yaml");
    FAIL() << "accepted: " << c.text;
  } catch (const MatrixError& e) {
    const MatrixProblem& p = e.primary();
    EXPECT_EQ(p.file, "bad.yaml");
    EXPECT_EQ(p.line, c.line) << e.what();
    EXPECT_EQ(p.column, c.column) << e.what();
    EXPECT_EQ(p.path, c.path) << e.what();
    EXPECT_NE(p.message.find(c.message_part), std::string::npos) << e.what();
    // The one-line form leads with file:line:column.
    const std::string where = "bad.yaml:" + std::to_string(c.line) + ":" + std::to_string(c.column) + ": ";
    EXPECT_EQ(std::string(e.what()).rfind(where, 0), 0u) << e.what();
  }
}

std::string case_name(const testing::TestParamInfo<BadCase>& info) {
  std::string name;
  for (const char* s = info.param.label; *s; ++s) name += std::isalnum(static_cast<unsigned char>(*s)) ? *s : '_';
  return name;
}

INSTANTIATE_TEST_SUITE_P(Table, MalformedMatrix, testing::ValuesIn(kCases), case_name);

TEST(MatrixErrors, TableHasAtLeast25Cases) { EXPECT_GE(std::size(kCases), 25u); }

TEST(MatrixErrors, ProblemsComeInFileOrder) {
  // The step's unknown key is found before the missing name, but comes after it in the file.
  try {
    expand_matrix("steps:\n  - {id: 0, colour: red}\nmax_attempts: 0\n", "order.yaml");
    FAIL();
  } catch (const MatrixError& e) {
    ASSERT_EQ(e.problems().size(), 3u) << e.what();
    EXPECT_EQ(e.primary().path, "name");
    EXPECT_EQ(e.problems()[1].path, "steps[0].colour");
    EXPECT_EQ(e.problems()[2].path, "max_attempts");
  }
}

TEST(MatrixErrors, EveryProblemIsReportedNotJustTheFirst) {
  const char* text =
      "name: x\n"
      "steps:\n"
      "  - id: 0\n"
      "    mla: {latent_dim: big}\n"
      "  - id: 1\n"
      "    ra: {alpah: 0.3}\n";
  try {
    expand_matrix(text, "two.yaml");
    FAIL();
  } catch (const MatrixError& e) {
    ASSERT_EQ(e.problems().size(), 2u) << e.what();
    EXPECT_EQ(e.problems()[0].line, 4);
    EXPECT_EQ(e.problems()[1].line, 6);
    EXPECT_EQ(e.problems()[1].path, "steps[1].ra.alpah");
  }
}

TEST(MatrixErrors, BaseErrorIsReportedOnceNotPerStep) {
  const char* text = "name: x\nbase:\n  train:\n    lr: fast\nsteps:\n  - id: 0\n  - id: 1\n  - id: 2\n";
  try {
    expand_matrix(text, "b.yaml");
    FAIL();
  } catch (const MatrixError& e) {
    EXPECT_EQ(e.problems().size(), 1u) << e.what();
  }
}

TEST(MatrixErrors, AliasBombIsRefusedQuickly) {
  // 10 levels of 10 aliases each: 10^10 values if walked naively.
  std::string text = "name: x\na0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n";
  for (int level = 1; level <= 10; ++level) {
    const std::string prev = "*a" + std::to_string(level - 1);
    text += "a" + std::to_string(level) + ": &a" + std::to_string(level) + " [" + prev;
    for (int i = 1; i < 10; ++i) text += ", " + prev;
    text += "]\n";
  }
  text += "steps:\n  - id: 0\n";
  try {
    expand_matrix(text, "bomb.yaml");
    FAIL();
  } catch (const MatrixError& e) {
    EXPECT_NE(std::string(e.what()).find("more than 200000 values"), std::string::npos) << e.what();
  }
}

TEST(MatrixErrors, DeepNestingIsRefusedWithItsPosition) {
  std::string text = "name: x\nsteps: " + std::string(5000, '[') + std::string(5000, ']') + "\n";
  try {
    expand_matrix(text, "deep.yaml");
    FAIL();
  } catch (const MatrixError& e) {
    EXPECT_EQ(e.primary().line, 2);
    EXPECT_NE(std::string(e.what()).find("nested too deeply"), std::string::npos) << e.what();
  }
}

TEST(MatrixErrors, ToJsonCarriesTheApiFields) {
  try {
    expand_matrix("name: x\nsteps:\n  - id: 0\n    mla: {latent_dim: big}\n", "demo.yaml");
    FAIL();
  } catch (const MatrixError& e) {
    nlohmann::json j = to_json(e);
    EXPECT_EQ(j["file"], "demo.yaml");
    EXPECT_EQ(j["line"], 4);
    EXPECT_EQ(j["column"], 23);
    EXPECT_EQ(j["path"], "steps[0].mla.latent_dim");
    EXPECT_EQ(j["error"], "demo.yaml:4:23: steps[0].mla.latent_dim: expected an integer, got \"big\"; write a value "
                          "like 128");
    EXPECT_EQ(j["errors"].size(), 1u);
  }
}

TEST(MatrixErrors, UnreadableFileNamesThePath) {
  try {
    expand_matrix_file("/nonexistent/matrix.yaml");
    FAIL();
  } catch (const MatrixError& e) {
    EXPECT_EQ(e.primary().file, "/nonexistent/matrix.yaml");
    EXPECT_NE(std::string(e.what()).find("cannot read"), std::string::npos);
  }
}

// Random edits of a preset (deleted characters, inserted YAML punctuation, swapped characters):
// every result is either a valid matrix or a MatrixError pointing inside the file, never another
// exception. (A longer run of these edits found `1e999`, which std::stod cannot hold.)
TEST(MatrixErrors, EditedPresetsFailOnlyWithLocatedErrors) {
  const std::vector<std::string> inserts = {": ", "{", "}", "[", "]", "\n", "- ", "~", "\"", "0", "-1",
                                            "1e999", "true", "x.y: 1\n", "\t", "&a ", "*a", "!!int ", "#"};
  const std::string base = preset_text("demo");
  const int lines = int(std::count(base.begin(), base.end(), '\n')) + 8;
  std::mt19937 rng(7);
  int valid = 0, invalid = 0;
  for (int i = 0; i < 400; ++i) {
    std::string text = base;
    for (int edit = 0; edit < 2; ++edit) {
      const size_t pos = rng() % text.size();
      switch (rng() % 3) {
        case 0: text.erase(pos, 1 + rng() % 5); break;
        case 1: text.insert(pos, inserts[rng() % inserts.size()]); break;
        default: std::swap(text[pos], text[rng() % text.size()]);
      }
    }
    try {
      expand_matrix(text, "edited.yaml");
      ++valid;
    } catch (const MatrixError& e) {
      ++invalid;
      EXPECT_GE(e.primary().line, 1) << e.what();
      EXPECT_LE(e.primary().line, lines) << e.what();
      EXPECT_GE(e.primary().column, 1) << e.what();
    }
  }
  EXPECT_GT(invalid, 100);  // the edits do break things
  EXPECT_GT(valid, 10);     // and some land in comments or descriptions
}

}  // namespace

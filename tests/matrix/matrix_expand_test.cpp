// Matrix expansion: shorthands, the seeds and grid axes, forced-gates twins, hashes, JSON = YAML,
// and each lint rule.

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "matrix/matrix.h"

using namespace ratio;
using nlohmann::json;

namespace {

// A small model so every case is valid and quick; steps are appended by each test.
const std::string kHeader =
    "name: t\n"
    "base:\n"
    "  model: {n_layer: 2, n_head: 2, n_embd: 32, vocab_size: 256, block_size: 128}\n"
    "  train: {max_iters: 10, warmup_iters: 2}\n";

Expansion expand(const std::string& steps_and_axes) { return expand_matrix(kHeader + steps_and_axes, "t.yaml"); }

const ExpandedJob& job(const Expansion& e, const std::string& step) {
  for (const auto& j : e.jobs) {
    if (j.spec.step == step) return j;
  }
  throw std::runtime_error("no job for step " + step);
}

std::vector<std::string> rules(const Expansion& e) {
  std::vector<std::string> r;
  for (const auto& w : e.warnings) r.push_back(w.rule);
  return r;
}

bool has_tag(const JobSpec& s, const std::string& tag) {
  return std::find(s.tags.begin(), s.tags.end(), tag) != s.tags.end();
}

TEST(Expand, ShorthandsMeanTheLongForm) {
  Expansion e = expand(
      "steps:\n"
      "  - {id: short, mla: true, ra: {alpha: 0.5}, mlp_ratio: 5.0, force_gates_open: true, mlp_gate: true}\n"
      "  - id: long\n"
      "    model:\n"
      "      mla: {enabled: true}\n"
      "      ra: {enabled: true, alpha: 0.5}\n"
      "      mlp_ratio: 5.0\n"
      "      force_gates_open: true\n"
      "      mlp_gate: {enabled: true}\n");
  EXPECT_EQ(job(e, "short").config_hash, job(e, "long").config_hash);
  const ModelConfig& m = job(e, "short").spec.model;
  EXPECT_TRUE(m.mla.enabled);
  EXPECT_TRUE(m.ra.enabled);  // options imply the switch inside a step
  EXPECT_DOUBLE_EQ(m.ra.alpha, 0.5);
  EXPECT_EQ(m.mlp_hidden(), 160);
}

TEST(Expand, BaseSetsOptionsWithoutSwitchingOn) {
  Expansion e = expand_matrix(
      "name: t\n"
      "base:\n"
      "  model: {n_layer: 2, n_head: 2, n_embd: 32, block_size: 64, ra: {alpha: 0.7, window: 8}}\n"
      "steps:\n"
      "  - id: 0\n"
      "  - {id: 1, ra: true}\n"
      "  - {id: 2, ra: {window: 16}}\n",
      "t.yaml");
  EXPECT_FALSE(job(e, "0").spec.model.ra.enabled);
  const RaConfig& ra1 = job(e, "1").spec.model.ra;
  EXPECT_TRUE(ra1.enabled);
  EXPECT_DOUBLE_EQ(ra1.alpha, 0.7);
  EXPECT_EQ(ra1.window, 8);
  const RaConfig& ra2 = job(e, "2").spec.model.ra;
  EXPECT_TRUE(ra2.enabled);
  EXPECT_DOUBLE_EQ(ra2.alpha, 0.7);  // step options merge into base's
  EXPECT_EQ(ra2.window, 16);
}

TEST(Expand, StepOverridesTrainAndData) {
  Expansion e = expand(
      "steps:\n"
      "  - id: 0\n"
      "  - id: 1\n"
      "    name: pruned\n"
      "    description: prunes\n"
      "    tags: [cheap]\n"
      "    train: {lr: 1.0e-3, prune: {target_sparsity: 0.3}}\n"
      "    data: {dataset: /data/shards, tokenizer: gpt2}\n");
  const JobSpec& s = job(e, "1").spec;
  EXPECT_DOUBLE_EQ(s.train.lr, 1e-3);
  EXPECT_TRUE(s.train.prune.enabled);
  EXPECT_DOUBLE_EQ(s.train.prune.target_sparsity, 0.3);
  EXPECT_EQ(s.train.max_iters, 10);  // from base
  EXPECT_EQ(s.data.dataset, "/data/shards");
  EXPECT_EQ(s.name, "pruned");
  EXPECT_EQ(s.description, "prunes");
  EXPECT_EQ(s.tags, std::vector<std::string>{"cheap"});
  EXPECT_EQ(s.matrix, "t");
  EXPECT_EQ(job(e, "0").spec.name, "step 0");  // a default name
  EXPECT_FALSE(job(e, "0").spec.train.prune.enabled);
}

TEST(Expand, SeedsGiveOneJobPerSeedPerStep) {
  Expansion e = expand("seeds: [1, 2, 3]\nsteps:\n  - {id: 0}\n  - {id: 5, ra: true}\n");
  ASSERT_EQ(e.jobs.size(), 6u);
  EXPECT_EQ(e.steps, 2);
  std::set<std::string> hashes;
  for (size_t i = 0; i < e.jobs.size(); ++i) {
    const JobSpec& s = e.jobs[i].spec;
    const uint64_t seed = i % 3 + 1;
    EXPECT_EQ(s.step, i < 3 ? "0" : "5");  // the step id stays, so results group by step
    EXPECT_EQ(s.train.seed, seed);
    EXPECT_TRUE(has_tag(s, "seed:" + std::to_string(seed)));
    hashes.insert(e.jobs[i].config_hash);
  }
  EXPECT_EQ(hashes.size(), 6u);
  EXPECT_TRUE(e.warnings.empty());
}

TEST(Expand, DecideIsCarriedWithItsDefaults) {
  Expansion e = expand("seeds: [1, 2]\ndecide: {max_seeds: 6, min_effect: 0.02}\nsteps:\n  - {id: 0}\n  - {id: 5, ra: true}\n");
  ASSERT_TRUE(e.decide.has_value());
  EXPECT_EQ(e.decide->max_seeds, 6);
  EXPECT_DOUBLE_EQ(e.decide->confidence, 0.95);
  EXPECT_DOUBLE_EQ(e.decide->min_effect, 0.02);
  EXPECT_EQ(e.jobs.size(), 4u);  // the listed seeds only: ratiod adds the rest while a step is open
  const nlohmann::json j = to_json(e)["matrix"]["decide"];
  EXPECT_EQ(j["max_seeds"], 6);
  EXPECT_EQ(j["min_effect"], 0.02);
  EXPECT_TRUE(to_json(expand("steps:\n  - {id: 0}\n"))["matrix"]["decide"].is_null());
}

TEST(Expand, GridGivesOneJobPerValuePerStep) {
  Expansion e = expand("grid: {mlp_ratio: [2.0, 3.0]}\nseeds: [7, 8]\nsteps:\n  - {id: 0}\n  - {id: 8, mla: true}\n");
  ASSERT_EQ(e.jobs.size(), 8u);  // 2 steps x 2 ratios x 2 seeds
  const JobSpec& s = e.jobs[2].spec;
  EXPECT_EQ(s.step, "0/mlp_ratio=3.0");
  EXPECT_EQ(s.model.mlp_hidden(), 96);
  EXPECT_TRUE(has_tag(s, "grid:mlp_ratio=3.0"));
  EXPECT_TRUE(has_tag(s, "seed:7"));
  EXPECT_EQ(e.jobs[4].spec.step, "8/mlp_ratio=2.0");
  EXPECT_TRUE(e.jobs[4].spec.model.mla.enabled);
}

TEST(Expand, GridOverSwitchesAndNestedOptions) {
  Expansion e = expand("grid: {mla: [false, true], ra.alpha: [0.1, 0.2], train.lr: [1.0e-3]}\nsteps:\n  - {id: 0}\n");
  ASSERT_EQ(e.jobs.size(), 4u);
  EXPECT_EQ(e.jobs[0].spec.step, "0/mla=false,ra.alpha=0.1,train.lr=1.0e-3");
  EXPECT_FALSE(e.jobs[0].spec.model.mla.enabled);
  EXPECT_TRUE(e.jobs[3].spec.model.mla.enabled);
  for (const auto& j : e.jobs) {
    EXPECT_TRUE(j.spec.model.ra.enabled);  // a grid over an option switches the mechanism on
    EXPECT_DOUBLE_EQ(j.spec.train.lr, 1e-3);
  }
  EXPECT_DOUBLE_EQ(e.jobs[1].spec.model.ra.alpha, 0.2);
}

TEST(Expand, ForcedGatesTwinEveryGatedStepAfterTheHighestId) {
  Expansion e = expand(
      "forced_gates: true\n"
      "steps:\n"
      "  - {id: 0}\n"
      "  - {id: 3, mlp_gate: true}\n"
      "  - {id: named, ra_ct: true}\n"
      "  - {id: 9, mlp_latent: {tying: per_head_scalar}}\n"
      "  - {id: 4, mlp_latent: {tying: untied}}\n");  // no gate: no twin
  std::vector<std::string> ids;
  for (const auto& j : e.jobs) ids.push_back(j.spec.step);
  EXPECT_EQ(ids, (std::vector<std::string>{"0", "3", "named", "9", "4", "10", "11", "12"}));
  EXPECT_TRUE(has_tag(job(e, "10").spec, "forced_gates_twin_of:3"));
  EXPECT_TRUE(has_tag(job(e, "11").spec, "forced_gates_twin_of:named"));
  EXPECT_TRUE(has_tag(job(e, "12").spec, "forced_gates_twin_of:9"));
  EXPECT_EQ(job(e, "12").spec.name, "step 9 (gates forced open)");
  EXPECT_EQ(e.steps, 8);
}

TEST(Expand, ForcedGatesForListedSteps) {
  Expansion e = expand(
      "forced_gates: {steps: [3, 0], first_id: 40}\n"
      "steps:\n"
      "  - {id: 0}\n"
      "  - {id: 3, mlp_gate: true}\n"
      "  - {id: 5, ra_ct: true}\n");
  EXPECT_EQ(e.jobs.size(), 4u);  // step 5 has a gate but was not listed
  EXPECT_TRUE(job(e, "40").spec.model.force_gates_open);
  EXPECT_TRUE(has_tag(job(e, "40").spec, "forced_gates_twin_of:3"));
  // Step 0 was listed but has nothing to force open.
  ASSERT_FALSE(e.warnings.empty());
  bool found = false;
  for (const auto& w : e.warnings) {
    if (w.rule == "forced_twin_without_gates" && w.steps == std::vector<std::string>{"0"}) found = true;
  }
  EXPECT_TRUE(found);
}

TEST(Expand, TwinIdCollidingWithAStepIsAnError) {
  EXPECT_THROW(expand("forced_gates: {first_id: 3}\nsteps:\n  - {id: 3, mlp_gate: true}\n"), MatrixError);
}

TEST(Expand, ConfigHashDoesNotDependOnKeyOrder) {
  Expansion a = expand_matrix(
      "name: t\n"
      "base:\n"
      "  model: {n_layer: 2, n_head: 2, n_embd: 32, block_size: 64}\n"
      "  train: {max_iters: 10, warmup_iters: 2}\n"
      "steps:\n"
      "  - {id: 1, mla: {latent_dim: 8}, ra: {window: 4, alpha: 0.2}, mlp_ratio: 3.0}\n",
      "a.yaml");
  Expansion b = expand_matrix(
      "steps:\n"
      "  - {mlp_ratio: 3.0, ra: {alpha: 0.2, window: 4}, mla: {latent_dim: 8}, id: 1}\n"
      "base:\n"
      "  train: {warmup_iters: 2, max_iters: 10}\n"
      "  model: {block_size: 64, n_embd: 32, n_head: 2, n_layer: 2}\n"
      "name: t\n",
      "b.yaml");
  EXPECT_EQ(a.jobs[0].config_hash, b.jobs[0].config_hash);
  EXPECT_EQ(to_json(a)["jobs"], to_json(b)["jobs"]);
}

TEST(Expand, JsonAndYamlFormsAgree) {
  const std::string yaml =
      "name: t\n"
      "description: both forms\n"
      "priority: 5\n"
      "max_attempts: 2\n"
      "seeds: [1, 2]\n"
      "forced_gates: true\n"
      "base:\n"
      "  model: {n_layer: 2, n_head: 2, n_embd: 32, block_size: 64}\n"
      "  train: {max_iters: 10, warmup_iters: 2, lr: 1.0e-3}\n"
      "  data: {dataset: fortunes}\n"
      "steps:\n"
      "  - id: 0\n"
      "    name: base\n"
      "  - id: 3\n"
      "    mlp_gate: {alpha: 0.2}\n"
      "    train: {prune: true}\n";
  const std::string json_text = R"({
	"name": "t", "description": "both forms", "priority": 5, "max_attempts": 2,
	"seeds": [1, 2], "forced_gates": true,
	"base": {
		"model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64},
		"train": {"max_iters": 10, "warmup_iters": 2, "lr": 1.0e-3},
		"data": {"dataset": "fortunes"}
	},
	"steps": [
		{"id": 0, "name": "base"},
		{"id": 3, "mlp_gate": {"alpha": 0.2}, "train": {"prune": true}}
	]
})";
  json from_yaml = to_json(expand_matrix(yaml, "m.yaml"));
  json from_json = to_json(expand_matrix(json_text, "m.json"));
  EXPECT_EQ(from_yaml["matrix"]["source"], "m.yaml");
  from_yaml["matrix"].erase("source");
  from_json["matrix"].erase("source");
  EXPECT_EQ(from_yaml, from_json);
  EXPECT_EQ(from_yaml["jobs"].size(), 6u);  // 2 steps + 1 twin, 2 seeds each
}

TEST(Expand, JsonOutputShape) {
  json out = to_json(expand("max_attempts: 4\npriority: -2\nsteps:\n  - {id: 0, name: baseline}\n"));
  EXPECT_EQ(out["matrix"]["name"], "t");
  EXPECT_EQ(out["matrix"]["max_attempts"], 4);
  EXPECT_EQ(out["matrix"]["priority"], -2);
  EXPECT_EQ(out["matrix"]["source"], "t.yaml");
  ASSERT_EQ(out["jobs"].size(), 1u);
  const json& j = out["jobs"][0];
  EXPECT_EQ(j["step"], "0");
  EXPECT_EQ(j["name"], "baseline");
  EXPECT_EQ(j["config"]["spec_version"], kJobSpecVersion);
  EXPECT_EQ(j["config"]["step"], "0");
  EXPECT_EQ(j["config_hash"].get<std::string>().size(), 16u);
  for (const char* key : {"total", "baseline", "added", "effective", "by_mechanism"}) {
    EXPECT_TRUE(j["params"].contains(key)) << key;
  }
  EXPECT_EQ(j["params"]["added"], 0);
  EXPECT_TRUE(out["warnings"].is_array());
}

TEST(Expand, NumericAndQuotedStepIdsAreTheSame) {
  EXPECT_THROW(expand("steps:\n  - {id: 3}\n  - {id: \"3\"}\n"), MatrixError);
}

// ---- lint -------------------------------------------------------------------------------------------

TEST(Lint, CleanMatrixHasNoWarnings) {
  Expansion e = expand("steps:\n  - {id: 0}\n  - {id: 5, ra: true}\n  - {id: 8, mla: true}\n");
  EXPECT_TRUE(e.warnings.empty()) << to_json(e)["warnings"].dump(1);
}

TEST(Lint, TwoStepsWithTheSameConfig) {
  Expansion e = expand("steps:\n  - {id: 2, mlp_ratio: 4.0}\n  - {id: 8, name: other name}\n");
  ASSERT_EQ(rules(e), std::vector<std::string>{"duplicate_config"});
  EXPECT_EQ(e.warnings[0].steps, (std::vector<std::string>{"2", "8"}));
  EXPECT_NE(e.warnings[0].message.find("steps 2 and 8"), std::string::npos);
}

TEST(Lint, TwoStepsThatTrainTheSameModel) {
  // Forced-open gates make mechanism 1 the identity: step 19 is step 0 with an unused switch.
  Expansion e = expand("steps:\n  - {id: 0}\n  - {id: 19, mlp_gate: true, force_gates_open: true}\n");
  bool same = false;
  for (const auto& w : e.warnings) {
    if (w.rule == "same_model") {
      same = true;
      EXPECT_EQ(w.steps, (std::vector<std::string>{"0", "19"}));
      EXPECT_NE(w.message.find("model.mlp_gate.enabled"), std::string::npos) << w.message;
    }
  }
  EXPECT_TRUE(same) << to_json(e)["warnings"].dump(1);
}

TEST(Lint, RatiosThatRoundToTheSameWidth) {
  Expansion e = expand("steps:\n  - {id: a, mlp_ratio: 2.5}\n  - {id: b, mlp_ratio: 2.51}\n");  // both 80 units
  ASSERT_EQ(rules(e), std::vector<std::string>{"same_model"}) << to_json(e)["warnings"].dump(1);
  EXPECT_NE(e.warnings[0].message.find("model.mlp_ratio"), std::string::npos);
}

TEST(Lint, ForcedPerHeadGatesAreTheUntiedCoupler) {
  Expansion e = expand(
      "steps:\n"
      "  - {id: a, mlp_latent: {tying: untied}}\n"
      "  - {id: b, mlp_latent: {tying: per_head_scalar}, force_gates_open: true}\n");
  ASSERT_EQ(rules(e), std::vector<std::string>{"same_model"}) << to_json(e)["warnings"].dump(1);
  EXPECT_EQ(e.warnings[0].steps, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(job(e, "a").params.total, job(e, "b").params.total);
}

TEST(Lint, ReciprocalAlphaZero) {
  Expansion e = expand("steps:\n  - {id: 5, ra: {alpha: 0.0, learnable: false}}\n");
  ASSERT_EQ(rules(e), std::vector<std::string>{"no_effect"});
  EXPECT_NE(e.warnings[0].message.find("ra.alpha is 0"), std::string::npos);
}

TEST(Lint, GateForcedOpenIsTheIdentity) {
  Expansion e = expand("steps:\n  - {id: 3, mlp_gate: true, force_gates_open: true}\n");
  ASSERT_EQ(rules(e), std::vector<std::string>{"no_effect"});
  EXPECT_NE(e.warnings[0].message.find("identity"), std::string::npos);
}

TEST(Lint, ForcedGatesWithoutAnyGate) {
  Expansion e = expand("steps:\n  - {id: 1, force_gates_open: true, mla: true}\n");
  ASSERT_EQ(rules(e), std::vector<std::string>{"no_effect"});
  EXPECT_NE(e.warnings[0].message.find("force_gates_open has no effect"), std::string::npos);
}

TEST(Lint, OptionsOnADisabledMechanism) {
  Expansion e = expand("steps:\n  - id: 1\n    mla: true\n    ra: {enabled: false, alpha: 0.5}\n");
  ASSERT_EQ(rules(e), std::vector<std::string>{"option_on_disabled"});
  EXPECT_NE(e.warnings[0].message.find("steps[0].ra.alpha (line 8)"), std::string::npos) << e.warnings[0].message;
}

TEST(Lint, OptionIgnoredByTheChosenMode) {
  Expansion e = expand(
      "steps:\n"
      "  - {id: 1, learned_ratio: {init: 2.0}, mlp_ratio: 3.0}\n"
      "  - {id: 2, ra_ct: {mode: entropy, k: 4}}\n");
  ASSERT_EQ(e.warnings.size(), 2u) << to_json(e)["warnings"].dump(1);
  EXPECT_NE(e.warnings[0].message.find("mlp_ratio is ignored with learned_ratio"), std::string::npos);
  EXPECT_NE(e.warnings[1].message.find("ra_ct.k is only used by mode topk"), std::string::npos);
}

TEST(Lint, GridReplacesAValueTheStepSets) {
  Expansion e = expand("grid: {mlp_ratio: [2.0, 3.0]}\nsteps:\n  - {id: 2, mlp_ratio: 5.0}\n");
  ASSERT_EQ(rules(e), std::vector<std::string>{"no_effect"});
  EXPECT_EQ(e.warnings[0].steps, std::vector<std::string>{"2"});
  EXPECT_NE(e.warnings[0].message.find("steps[0].mlp_ratio (line 7) is replaced by every value of grid.mlp_ratio"),
            std::string::npos)
      << e.warnings[0].message;
}

TEST(Lint, SeedsDoNotRepeatAWarning) {
  Expansion e = expand("seeds: [1, 2, 3]\nsteps:\n  - {id: 3, mlp_gate: true, force_gates_open: true}\n");
  EXPECT_EQ(e.warnings.size(), 1u) << to_json(e)["warnings"].dump(1);
}

}  // namespace

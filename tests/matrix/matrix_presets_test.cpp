// The built-in presets against ../shared/spec/ablation-steps.md: the step table, the study's
// training settings and mechanism defaults, the forced-gates twins, and the tiny demo.

#include <gtest/gtest.h>

#include <set>

#include <nlohmann/json.hpp>

#include "matrix/matrix.h"

using namespace ratio;
using nlohmann::json;

namespace {

const ExpandedJob& job(const Expansion& e, const std::string& step) {
  for (const auto& j : e.jobs) {
    if (j.spec.step == step) return j;
  }
  throw std::runtime_error("no job for step " + step + " in " + e.name);
}

std::vector<std::string> step_ids(const Expansion& e) {
  std::vector<std::string> ids;
  for (const auto& j : e.jobs) ids.push_back(j.spec.step);
  return ids;
}

// One row of the study's step table.
struct Row {
  const char* step;
  bool mla;
  double ra_alpha;  // 0 = no RA
  int hidden;
  bool m1;
  bool m2;
  const char* ra_ct;  // "" = off, else "mode/apply"
};

const Row kStudyTable[] = {
    {"0", false, 0.0, 3072, false, false, ""},         {"1", false, 0.0, 3072, false, false, ""},
    {"2", false, 0.0, 3840, false, false, ""},         {"3", false, 0.0, 3264, true, false, ""},
    {"4", false, 0.0, 3072, true, true, ""},           {"5", false, 0.3, 3072, false, false, ""},
    {"6", false, 0.3, 3840, false, false, ""},         {"7", false, 0.3, 3072, true, true, ""},
    {"8", true, 0.0, 3072, false, false, ""},          {"9", true, 0.0, 2560, false, false, ""},
    {"10", true, 0.0, 2048, true, true, ""},           {"11", true, 0.3, 2560, false, false, ""},
    {"12", true, 0.3, 2048, true, true, ""},           {"13", false, 0.0, 3072, false, false, "topk/output"},
    {"14", true, 0.0, 2560, false, false, "topk/output"}, {"15", true, 0.3, 2560, false, false, "topk/output"},
    {"16", true, 0.3, 2048, true, true, "topk/output"},   {"17", false, 0.0, 3072, false, false, "topk/weights"},
    {"18", false, 0.0, 3072, false, false, "entropy/output"},
};

void expect_row(const ModelConfig& m, const Row& r) {
  SCOPED_TRACE(std::string("step ") + r.step);
  EXPECT_EQ(m.mla.enabled, r.mla);
  EXPECT_EQ(m.ra.enabled, r.ra_alpha != 0.0);
  if (m.ra.enabled) {
    EXPECT_DOUBLE_EQ(m.ra.alpha, r.ra_alpha);
  }
  EXPECT_EQ(m.mlp_hidden(), r.hidden);
  EXPECT_EQ(m.mlp_gate.enabled, r.m1);
  EXPECT_EQ(m.mlp_cross.enabled, r.m2);
  EXPECT_EQ(m.ra_ct.enabled, std::string(r.ra_ct) != "");
  if (m.ra_ct.enabled) {
    EXPECT_EQ(m.ra_ct.mode + "/" + m.ra_ct.apply, r.ra_ct);
  }
  EXPECT_FALSE(m.mlp_latent.enabled);  // mechanism 3 is its own preset
  EXPECT_FALSE(m.learned_ratio.enabled);
  EXPECT_FALSE(m.force_gates_open);
}

// Mechanism defaults of the study, whether or not the step switches the mechanism on.
void expect_study_defaults(const ModelConfig& m) {
  EXPECT_EQ(m.mla.latent_dim, 128);
  EXPECT_DOUBLE_EQ(m.ra.alpha, 0.3);
  EXPECT_EQ(m.ra.window, 64);
  EXPECT_TRUE(m.ra.learnable);
  EXPECT_DOUBLE_EQ(m.mlp_gate.alpha, 0.1);
  EXPECT_EQ(m.mlp_gate.gate_dim, 64);
  EXPECT_DOUBLE_EQ(m.mlp_cross.alpha, 0.3);
  EXPECT_EQ(m.mlp_cross.sparsify, "topk");
  EXPECT_EQ(m.mlp_cross.k, 8);
  EXPECT_DOUBLE_EQ(m.mlp_latent.alpha_mlp, 0.2);
  EXPECT_DOUBLE_EQ(m.mlp_latent.alpha_attn, 0.2);
  EXPECT_EQ(m.mlp_latent.latent_dim, 128);
  EXPECT_DOUBLE_EQ(m.ra_ct.alpha, 0.2);
  EXPECT_EQ(m.ra_ct.k, 8);
}

void expect_study_training(const JobSpec& s) {
  SCOPED_TRACE(s.matrix + " step " + s.step);
  const ModelConfig& m = s.model;
  EXPECT_EQ(m.n_layer, 12);
  EXPECT_EQ(m.n_head, 12);
  EXPECT_EQ(m.n_embd, 768);
  EXPECT_EQ(m.vocab_size, 50257);
  EXPECT_EQ(m.block_size, 1024);
  EXPECT_DOUBLE_EQ(m.dropout, 0.1);
  const TrainConfig& t = s.train;
  EXPECT_EQ(t.max_iters, 10400);
  EXPECT_EQ(t.batch_size, 8);
  EXPECT_EQ(t.grad_accum, 8);
  EXPECT_DOUBLE_EQ(t.lr, 6e-4);
  EXPECT_DOUBLE_EQ(t.min_lr, 6e-5);
  EXPECT_EQ(t.warmup_iters, 2000);
  EXPECT_DOUBLE_EQ(t.weight_decay, 0.1);
  EXPECT_EQ(t.eval_interval, 500);
  EXPECT_EQ(t.eval_batches * t.batch_size, 200);  // the study's 200 validation samples
  EXPECT_EQ(t.checkpoint_interval, 1000);
  EXPECT_TRUE(t.spam.enabled);
  EXPECT_DOUBLE_EQ(t.spam.theta, 50.0);
  EXPECT_DOUBLE_EQ(t.spam.spike_z, 2.0);
  EXPECT_EQ(t.spam.reset_interval, 1000);
  EXPECT_EQ(t.spam.reset_warmup, 1000);
  EXPECT_EQ(s.data.tokenizer, "gpt2");
  EXPECT_EQ(s.data.dataset, "fineweb-edu");
  expect_study_defaults(m);
}

TEST(Presets, AblationMatchesTheStudyTable) {
  Expansion e = expand_preset("gpt2-ratio-ablation");
  ASSERT_EQ(e.jobs.size(), std::size(kStudyTable));
  for (size_t i = 0; i < e.jobs.size(); ++i) {
    EXPECT_EQ(e.jobs[i].spec.step, kStudyTable[i].step);
    expect_row(e.jobs[i].spec.model, kStudyTable[i]);
    expect_study_training(e.jobs[i].spec);
    // Only step 1 prunes, to 50 %.
    EXPECT_EQ(e.jobs[i].spec.train.prune.enabled, e.jobs[i].spec.step == "1");
  }
  EXPECT_DOUBLE_EQ(job(e, "1").spec.train.prune.target_sparsity, 0.5);
  EXPECT_EQ(job(e, "0").params.total, 124439808);  // GPT-2 124M
  EXPECT_TRUE(e.warnings.empty()) << to_json(e)["warnings"].dump(1);
}

// The study's defect 1: its step 2 trained the same model as step 8.
TEST(Presets, Step2IsNotStep8) {
  Expansion e = expand_preset("gpt2-ratio-ablation");
  const ExpandedJob& s2 = job(e, "2");
  const ExpandedJob& s8 = job(e, "8");
  EXPECT_NE(s2.config_hash, s8.config_hash);
  EXPECT_FALSE(s2.spec.model.mla.enabled);
  EXPECT_TRUE(s8.spec.model.mla.enabled);
  EXPECT_EQ(s2.spec.model.mlp_hidden(), 3840);
  EXPECT_EQ(s8.spec.model.mlp_hidden(), 3072);
  EXPECT_NE(s2.params.total, s8.params.total);
  EXPECT_EQ(s2.params.by_mechanism.at("mla"), 0);
  EXPECT_LT(s8.params.by_mechanism.at("mla"), 0);  // MLA is smaller than the attention it replaces
}

TEST(Presets, ReciprocalIsTheSixRerunSteps) {
  Expansion full = expand_preset("gpt2-ratio-ablation");
  Expansion six = expand_preset("gpt2-ratio-ablation-reciprocal");
  EXPECT_EQ(step_ids(six), (std::vector<std::string>{"3", "4", "7", "10", "12", "16"}));
  for (const auto& j : six.jobs) {
    EXPECT_EQ(j.config_hash, job(full, j.spec.step).config_hash) << "step " << j.spec.step;
  }
  EXPECT_TRUE(six.warnings.empty());
}

TEST(Presets, ForcedGateTwinsAre19To24) {
  Expansion full = expand_preset("gpt2-ratio-ablation");
  Expansion e = expand_preset("gpt2-ratio-forced-gates");
  EXPECT_EQ(step_ids(e),
            (std::vector<std::string>{"3", "4", "7", "10", "12", "16", "19", "20", "21", "22", "23", "24"}));
  const std::vector<std::pair<std::string, std::string>> twins = {
      {"19", "3"}, {"20", "4"}, {"21", "7"}, {"22", "10"}, {"23", "12"}, {"24", "16"}};
  for (const auto& [twin_id, of] : twins) {
    SCOPED_TRACE("twin " + twin_id);
    const JobSpec& twin = job(e, twin_id).spec;
    EXPECT_TRUE(twin.model.force_gates_open);
    EXPECT_NE(std::find(twin.tags.begin(), twin.tags.end(), "forced_gates_twin_of:" + of), twin.tags.end());
    // Otherwise the very step of the study.
    JobSpec unforced = twin;
    unforced.model.force_gates_open = false;
    EXPECT_EQ(config_hash(unforced), job(full, of).config_hash);
    EXPECT_FALSE(job(e, of).spec.model.force_gates_open);
    // Forced gates create no gate parameters.
    EXPECT_EQ(job(e, twin_id).params.by_mechanism.at("mlp_gate"), 0);
  }
}

bool has_warning(const Expansion& e, const std::string& rule, const std::vector<std::string>& steps,
                 const std::string& phrase) {
  for (const auto& w : e.warnings) {
    if (w.rule == rule && w.steps == steps && w.message.find(phrase) != std::string::npos) return true;
  }
  return false;
}

// docs/architecture.md: a forced-open mechanism 1 is the identity, and so is RA-CT; lint says so.
TEST(Presets, LintFlagsWhatForcedGatesDo) {
  Expansion e = expand_preset("gpt2-ratio-forced-gates");
  for (const std::string twin : {"19", "20", "21", "22", "23", "24"}) {
    EXPECT_TRUE(has_warning(e, "no_effect", {twin}, "mlp_gate with force_gates_open is the identity")) << twin;
  }
  EXPECT_TRUE(has_warning(e, "no_effect", {"24"}, "ra_ct with force_gates_open is the identity"));
  // Step 16 is step 12 plus RA-CT; with every gate open their twins are one model.
  EXPECT_TRUE(has_warning(e, "same_model", {"23", "24"}, "model.ra_ct.enabled"));
  for (const auto& w : e.warnings) {
    for (const auto& s : w.steps) EXPECT_GE(std::stoi(s), 19) << w.message;  // the original steps lint clean
  }
}

TEST(Presets, Mechanism3InEveryTyingAloneAndWithMla) {
  Expansion e = expand_preset("gpt2-ratio-mechanism3");
  std::set<std::pair<bool, std::string>> seen;
  for (const auto& j : e.jobs) {
    const ModelConfig& m = j.spec.model;
    expect_study_training(j.spec);
    if (!m.mlp_latent.enabled) continue;
    seen.insert({m.mla.enabled, m.mlp_latent.tying});
    EXPECT_EQ(m.attn_latent_dim(), 128);
    EXPECT_DOUBLE_EQ(m.mlp_latent.alpha_mlp, 0.2);
    EXPECT_GT(j.params.by_mechanism.at("mlp_latent"), 0);
  }
  EXPECT_EQ(seen.size(), 6u);
  for (bool mla : {false, true}) {
    for (const char* tying : {"untied", "tied_transpose", "per_head_scalar"}) EXPECT_TRUE(seen.count({mla, tying}));
  }
  EXPECT_FALSE(job(e, "0").spec.model.mla.enabled);  // the baseline to compare against
  EXPECT_TRUE(e.warnings.empty()) << to_json(e)["warnings"].dump(1);
}

TEST(Presets, SearchHasFixedAndLearnedRatios) {
  Expansion e = expand_preset("gpt2-ratio-search");
  std::vector<int> fixed_hidden;
  std::vector<double> learned_init;
  for (const auto& j : e.jobs) {
    const ModelConfig& m = j.spec.model;
    expect_study_training(j.spec);
    EXPECT_FALSE(m.mla.enabled);
    if (m.learned_ratio.enabled) {
      learned_init.push_back(m.learned_ratio.init);
      EXPECT_EQ(m.mlp_hidden(), 4608);  // allocated at max_ratio 6.0
      EXPECT_LT(j.params.effective, j.params.total);
    } else {
      fixed_hidden.push_back(m.mlp_hidden());
    }
  }
  EXPECT_EQ(fixed_hidden, (std::vector<int>{1536, 1920, 2304, 2688, 3072, 3456, 3840}));
  EXPECT_EQ(learned_init, (std::vector<double>{2.0, 3.0, 4.0, 5.0}));
}

TEST(Presets, DemoIsTheSameStructureAndTiny) {
  Expansion e = expand_preset("demo");
  EXPECT_EQ(step_ids(e), (std::vector<std::string>{"0", "2", "5", "8", "12", "16", "17", "18"}));
  Expansion full = expand_preset("gpt2-ratio-ablation");
  for (const auto& j : e.jobs) {
    SCOPED_TRACE("demo step " + j.spec.step);
    const ModelConfig& m = j.spec.model;
    EXPECT_LT(j.params.total, 2000000);
    EXPECT_EQ(m.vocab_size, 256);
    EXPECT_LE(m.block_size, 128);
    EXPECT_LE(j.spec.train.max_iters, 300);
    EXPECT_EQ(j.spec.train.eval_interval, 50);
    EXPECT_EQ(j.spec.data.dataset, "fortunes");
    EXPECT_EQ(j.spec.data.tokenizer, "byte");
    if (m.force_gates_open) continue;
    // Same switches as the study's step of that id.
    const ModelConfig& study = job(full, j.spec.step).spec.model;
    EXPECT_EQ(m.mla.enabled, study.mla.enabled);
    EXPECT_EQ(m.ra.enabled, study.ra.enabled);
    EXPECT_EQ(m.mlp_gate.enabled, study.mlp_gate.enabled);
    EXPECT_EQ(m.mlp_cross.enabled, study.mlp_cross.enabled);
    EXPECT_EQ(m.ra_ct.enabled, study.ra_ct.enabled);
    EXPECT_DOUBLE_EQ(m.mlp_ratio, study.mlp_ratio);
  }
  EXPECT_TRUE(job(e, "17").spec.model.force_gates_open);
  EXPECT_TRUE(job(e, "18").spec.model.force_gates_open);
}

TEST(Presets, EveryPresetExpandsIntoValidWorkerJobs) {
  const std::vector<std::string> names = {"gpt2-ratio-ablation", "gpt2-ratio-ablation-reciprocal",
                                          "gpt2-ratio-forced-gates", "gpt2-ratio-mechanism3",
                                          "gpt2-ratio-search", "demo"};
  std::vector<PresetInfo> listed = list_presets();
  ASSERT_EQ(listed.size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    SCOPED_TRACE(names[i]);
    EXPECT_EQ(listed[i].name, names[i]);
    EXPECT_TRUE(has_preset(names[i]));
    Expansion e = expand_preset(names[i]);
    EXPECT_EQ(e.name, names[i]);  // the file's `name` is its preset name
    EXPECT_EQ(e.source, "presets/" + names[i] + ".yaml");
    EXPECT_EQ(listed[i].description, e.description);
    EXPECT_FALSE(e.description.empty());
    EXPECT_EQ(listed[i].jobs, int(e.jobs.size()));
    EXPECT_EQ(listed[i].steps, e.steps);
    json out = to_json(e);
    std::set<std::string> ids;
    for (size_t k = 0; k < e.jobs.size(); ++k) {
      const ExpandedJob& j = e.jobs[k];
      EXPECT_TRUE(ids.insert(j.spec.step).second) << "step id repeated: " << j.spec.step;
      EXPECT_EQ(j.spec.matrix, names[i]);
      // `config` is what ratio-worker reads: strict parsing gives the same spec back.
      JobSpec back = job_spec_from_json(out["jobs"][k]["config"]);
      EXPECT_EQ(to_json(back), to_json(j.spec));
      EXPECT_EQ(out["jobs"][k]["config_hash"], config_hash(back));
      // The counts are the formula's.
      ParamCounts p = param_formula(j.spec.model);
      EXPECT_EQ(out["jobs"][k]["params"], param_counts_to_json(p));
      EXPECT_EQ(j.params.total, p.total);
      EXPECT_EQ(j.params.added, p.total - p.baseline);
    }
  }
  EXPECT_FALSE(has_preset("gpt2-ratio"));
  EXPECT_THROW(preset_text("gpt2-ratio"), std::invalid_argument);
}

TEST(Presets, TextIsTheYamlTheyExpandFrom) {
  const std::string& text = preset_text("demo");
  EXPECT_NE(text.find("name: demo"), std::string::npos);
  Expansion a = expand_matrix(text, "presets/demo.yaml");
  Expansion b = expand_preset("demo");
  EXPECT_EQ(to_json(a), to_json(b));
}

}  // namespace

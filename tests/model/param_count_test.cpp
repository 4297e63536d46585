// Every step of the study (shared/spec/ablation-steps.md), its forced-open twins and mechanism 3 in
// each tying mode, built at full GPT-2 size: the built model matches its config, and the parameter
// report from real tensors equals matrix/params.cpp's formula, in total and per category.

#include <gtest/gtest.h>

#include <map>
#include <optional>

#include "matrix/params.h"
#include "tests/model/support.h"

namespace ratio::model::testing {
namespace {

struct Step {
  std::string id;
  ModelConfig config;
};
void PrintTo(const Step& v, std::ostream* os) { *os << v.id; }


// The step table as configs (full GPT-2: 12 layers, 12 heads, 768 wide, vocab 50257, block 1024).
ModelConfig step_config(bool mla, bool ra, double ratio, bool m1, bool m2, std::optional<std::string> ct_mode,
                        const std::string& ct_apply = "output") {
  ModelConfig c;  // defaults are GPT-2 124M and the study's mechanism defaults
  c.dropout = 0.1;
  c.mla.enabled = mla;
  c.ra.enabled = ra;
  c.mlp_ratio = ratio;
  c.mlp_gate.enabled = m1;
  c.mlp_cross.enabled = m2;
  if (ct_mode) {
    c.ra_ct.enabled = true;
    c.ra_ct.mode = *ct_mode;
    c.ra_ct.apply = ct_apply;
  }
  return c;
}

std::vector<Step> study_steps() {
  const double golden = 5.0, mla_golden = 10.0 / 3.0, mla_mech = 8.0 / 3.0;
  const std::optional<std::string> none;
  std::vector<Step> s = {
      {"0", step_config(false, false, 4.0, false, false, none)},
      {"1", step_config(false, false, 4.0, false, false, none)},  // pruning is training, not architecture
      {"2", step_config(false, false, golden, false, false, none)},
      {"3", step_config(false, false, 4.25, true, false, none)},
      {"4", step_config(false, false, 4.0, true, true, none)},
      {"5", step_config(false, true, 4.0, false, false, none)},
      {"6", step_config(false, true, golden, false, false, none)},
      {"7", step_config(false, true, 4.0, true, true, none)},
      {"8", step_config(true, false, 4.0, false, false, none)},
      {"9", step_config(true, false, mla_golden, false, false, none)},
      {"10", step_config(true, false, mla_mech, true, true, none)},
      {"11", step_config(true, true, mla_golden, false, false, none)},
      {"12", step_config(true, true, mla_mech, true, true, none)},
      {"13", step_config(false, false, 4.0, false, false, "topk")},
      {"14", step_config(true, false, mla_golden, false, false, "topk")},
      {"15", step_config(true, true, mla_golden, false, false, "topk")},
      {"16", step_config(true, true, mla_mech, true, true, "topk")},
      {"17", step_config(false, false, 4.0, false, false, "topk", "weights")},
      {"18", step_config(false, false, 4.0, false, false, "entropy")},
  };
  // Forced-open twins of the gated steps (19-24).
  for (const std::string id : {"3", "4", "7", "10", "12", "16"}) {
    for (const auto& step : std::vector<Step>(s)) {
      if (step.id != id) continue;
      Step twin = step;
      twin.id = id + "-forced";
      twin.config.force_gates_open = true;
      s.push_back(twin);
    }
  }
  // Mechanism 3 alone and with MLA, each tying mode (and per_head_scalar forced open).
  for (bool mla : {false, true}) {
    for (const std::string tying : {"untied", "tied_transpose", "per_head_scalar"}) {
      Step m3{std::string("m3-") + tying + (mla ? "-mla" : ""), step_config(mla, false, 4.0, false, false, none)};
      m3.config.mlp_latent.enabled = true;
      m3.config.mlp_latent.tying = tying;
      s.push_back(m3);
    }
    Step forced{std::string("m3-per_head_scalar-forced") + (mla ? "-mla" : ""),
                step_config(mla, false, 4.0, false, false, none)};
    forced.config.mlp_latent.enabled = true;
    forced.config.mlp_latent.tying = "per_head_scalar";
    forced.config.force_gates_open = true;
    s.push_back(forced);
  }
  // A learned ratio (the search preset) and a frozen RA alpha.
  Step learned{"learned-ratio-3", step_config(false, false, 4.0, false, false, none)};
  learned.config.learned_ratio.enabled = true;
  learned.config.learned_ratio.init = 3.0;
  s.push_back(learned);
  Step frozen{"ra-frozen", step_config(false, true, 4.0, false, false, none)};
  frozen.config.ra.learnable = false;
  s.push_back(frozen);
  return s;
}

std::map<std::string, std::vector<int64_t>> shapes(const GPT& model) {
  std::map<std::string, std::vector<int64_t>> out;
  for (const auto& p : model->named_parameters()) out[p.key()] = p.value().sizes().vec();
  return out;
}

// The built architecture is the configured one (the study's defect 1).
void expect_matches_config(const std::string& id, const ModelConfig& c, const GPT& model) {
  const auto s = shapes(model);
  const int64_t C = c.n_embd, M = c.mlp_hidden(), N = c.n_layer;
  const bool gates = !c.force_gates_open;
  for (int64_t i = 0; i < N; ++i) {
    const std::string p = "h." + std::to_string(i) + ".";
    const bool producer = i < N - 1, consumer = i > 0;
    EXPECT_EQ(s.count(p + "attn.c_attn.weight"), c.mla.enabled ? 0u : 1u) << id << " layer " << i;
    EXPECT_EQ(s.count(p + "attn.k_down.weight"), c.mla.enabled ? 1u : 0u) << id;
    EXPECT_EQ(s.count(p + "attn.ra_alpha"), c.ra.enabled && c.ra.learnable ? 1u : 0u) << id;
    EXPECT_EQ(s.count(p + "attn.ct_scale"), c.ra_ct.enabled && gates ? 1u : 0u) << id;
    EXPECT_EQ(s.count(p + "attn.gate_alpha"), c.mlp_gate.enabled && gates && consumer ? 1u : 0u) << id;
    EXPECT_EQ(s.count(p + "mlp.gate_proj.weight"), c.mlp_gate.enabled && gates && producer ? 1u : 0u) << id;
    EXPECT_EQ(s.count(p + "mlp.cross_proj.weight"), c.mlp_cross.enabled ? 1u : 0u) << id;
    EXPECT_EQ(s.count(p + "coupler.alpha_mlp"), c.mlp_latent.enabled ? 1u : 0u) << id;
    EXPECT_EQ(s.count(p + "coupler.head_gate"),
              c.mlp_latent.enabled && c.mlp_latent.tying == "per_head_scalar" && gates && producer ? 1u : 0u)
        << id;
    ASSERT_EQ(s.count(p + "mlp.c_fc.weight"), 1u);
    EXPECT_EQ(s.at(p + "mlp.c_fc.weight"), (std::vector<int64_t>{M, C})) << id << ": MLP width";
  }
}

class StepParamCount : public ::testing::TestWithParam<Step> {};

TEST_P(StepParamCount, BuiltModelMatchesConfigAndFormula) {
  const auto& step = GetParam();
  torch::NoGradGuard no_grad;
  GPT model(step.config);  // one at a time: built, counted, destroyed
  expect_matches_config(step.id, step.config, model);
  const auto real = model->param_report();
  const auto formula = param_formula(step.config);
  EXPECT_EQ(real.total, formula.total) << step.id;
  EXPECT_EQ(real.baseline, formula.baseline) << step.id;
  EXPECT_EQ(real.added, formula.added) << step.id;
  EXPECT_EQ(real.effective, formula.effective) << step.id;
  EXPECT_EQ(real.by_mechanism, formula.by_mechanism) << step.id;
  int64_t numel = 0;
  for (const auto& p : model->parameters()) numel += p.numel();
  EXPECT_EQ(real.total, numel) << step.id;
}

INSTANTIATE_TEST_SUITE_P(FullSize, StepParamCount, ::testing::ValuesIn(study_steps()),
                         [](const ::testing::TestParamInfo<Step>& info) {
                           std::string name = "step_" + info.param.id;
                           for (auto& ch : name) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

// The study's own figures, where they are stated.
TEST(StudyFigures, BaselineAndMechanismSizes) {
  torch::NoGradGuard no_grad;
  {
    GPT baseline(ModelConfig{});
    EXPECT_EQ(baseline->param_report().total, 124'439'808);
    EXPECT_EQ(baseline->param_report().added, 0);
  }
  auto mla = ModelConfig{};
  mla.mla.enabled = true;
  GPT model(mla);
  const auto params = model->named_parameters();
  // "k_down 98K, v_down 98K, v_up 98K, q_to_latent 98K per layer" (weights).
  EXPECT_EQ(params["h.0.attn.k_down.weight"].numel(), 98'304);
  EXPECT_EQ(params["h.0.attn.v_down.weight"].numel(), 98'304);
  EXPECT_EQ(params["h.0.attn.v_up.weight"].numel(), 98'304);
  EXPECT_EQ(params["h.0.attn.q_to_latent"].numel(), 98'304);
  // Mechanism 2's cross_proj: 9.4M per layer at M = 3072.
  EXPECT_EQ(param_formula([] {
              ModelConfig c;
              c.mlp_cross.enabled = true;
              return c;
            }())
                    .by_mechanism.at("mlp_cross") /
                12,
            3072 * 3072 + 3072 + 1);
}

TEST(ParamReport, PrunedAndLearnedWidthLowerEffective) {
  auto c = tiny();
  c.learned_ratio.enabled = true;
  c.learned_ratio.init = 2.0;  // 32 of the 96 allocated units (max_ratio 6 x 16)
  auto model = make_model(c);
  auto mlp = [](int64_t C, int64_t m) { return C * m + m + m * C + C; };
  const auto r = model->param_report(/*pruned=*/100);
  EXPECT_EQ(model->effective_mlp_widths(), (std::vector<int64_t>{32, 32, 32}));
  EXPECT_EQ(r.effective, r.total - 100 - 3 * (mlp(16, 96) - mlp(16, 32)));
  {
    torch::NoGradGuard no_grad;
    model->named_parameters()["h.1.mlp.ratio"].fill_(2.5);  // 40 units
  }
  EXPECT_EQ(model->effective_mlp_widths(), (std::vector<int64_t>{32, 40, 32}));
  EXPECT_EQ(model->param_report().effective,
            r.total - 2 * (mlp(16, 96) - mlp(16, 32)) - (mlp(16, 96) - mlp(16, 40)));
}

TEST(ParamReport, InvalidConfigIsAClearError) {
  auto c = tiny();
  c.n_head = 5;  // does not divide 16
  try {
    GPT model(c);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("n_head"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ratio::model::testing

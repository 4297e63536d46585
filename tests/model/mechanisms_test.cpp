// Behaviour of the mechanisms as a whole model: causality, batch independence, forced-open gates,
// mechanism 3's per-head-scalar coupler, gradient health, and that every combination trains.

#include <gtest/gtest.h>

#include "model/layers.h"
#include "tests/model/support.h"

namespace ratio::model::testing {
namespace {

// One config per mechanism and mode, plus combinations.
std::vector<Named> mechanism_configs() {
  std::vector<Named> out;
  auto add = [&](const std::string& name, auto edit) {
    auto c = tiny();
    edit(c);
    out.push_back({name, c});
  };
  add("baseline", [](ModelConfig&) {});
  add("mla", [](ModelConfig& c) { c.mla.enabled = true; });
  add("ra_band", [](ModelConfig& c) { c.ra.enabled = true; });
  add("ra_full", [](ModelConfig& c) { c.ra.enabled = true, c.ra.window = 0; });
  add("ra_mla", [](ModelConfig& c) { c.ra.enabled = true, c.mla.enabled = true; });
  add("ra_full_mla", [](ModelConfig& c) { c.ra.enabled = true, c.ra.window = 0, c.mla.enabled = true; });
  for (const std::string mode : {"topk", "max", "entropy", "rms"}) {
    for (const std::string apply : {"output", "weights"}) {
      add("ra_ct_" + mode + "_" + apply, [&](ModelConfig& c) {
        c.ra_ct.enabled = true, c.ra_ct.mode = mode, c.ra_ct.apply = apply;
      });
    }
  }
  add("m1", [](ModelConfig& c) { c.mlp_gate.enabled = true; });
  for (const std::string sparsify : {"topk", "rms", "none"}) {
    add("m2_" + sparsify, [&](ModelConfig& c) { c.mlp_cross.enabled = true, c.mlp_cross.sparsify = sparsify; });
  }
  for (bool mla : {false, true}) {
    for (const std::string tying : {"untied", "tied_transpose", "per_head_scalar"}) {
      add("m3_" + tying + (mla ? "_mla" : ""), [&](ModelConfig& c) {
        c.mlp_latent.enabled = true, c.mlp_latent.tying = tying, c.mla.enabled = mla;
      });
    }
  }
  add("learned_ratio", [](ModelConfig& c) { c.learned_ratio.enabled = true; });
  add("wide_mlp", [](ModelConfig& c) { c.mlp_ratio = 5.0; });
  for (const std::string tying : {"untied", "tied_transpose", "per_head_scalar"}) {
    out.push_back({"all_on_" + tying, all_on(tying)});
    auto forced = all_on(tying);
    forced.force_gates_open = true;
    out.push_back({"all_on_forced_" + tying, forced});
  }
  auto no_mla = all_on();
  no_mla.mla.enabled = false;
  no_mla.ra.window = 0;
  out.push_back({"all_on_no_mla_full_ra", no_mla});
  return out;
}

std::string param_name(const ::testing::TestParamInfo<Named>& info) { return info.param.name; }

class EveryMechanism : public ::testing::TestWithParam<Named> {};

// Changing tokens after t never changes logits at positions <= t (a full-sequence mean in
// mechanism 1, or a non-causal mechanism 2 / RA term, would).
TEST_P(EveryMechanism, IsCausal) {
  for (const auto& t : targets()) {
    auto model = make_model(GetParam().config, 1, t.device);
    AutocastGuard autocast(t);
    torch::NoGradGuard no_grad;
    const int64_t T = 12, cut = 5;
    auto idx = random_tokens(GetParam().config, 2, T, 7, t.device);
    auto changed = idx.clone();
    changed.slice(1, cut + 1, T).copy_(random_tokens(GetParam().config, 2, T - cut - 1, 8, t.device));
    auto a = model->forward(idx).logits, b = model->forward(changed).logits;
    EXPECT_LT(max_abs_diff(a.slice(1, 0, cut + 1), b.slice(1, 0, cut + 1)), t.tol) << t.name();
    EXPECT_GT(max_abs_diff(a.slice(1, cut + 1, T), b.slice(1, cut + 1, T)), 1e-4) << t.name();
  }
}

// One training step: finite loss, finite gradient for every parameter, non-zero gradient for every
// mixing/key parameter and every tensor a mechanism adds (the study's defect 5: dead parameters).
TEST_P(EveryMechanism, EveryParameterGetsGradient) {
  const auto& c = GetParam().config;
  torch::manual_seed(1);
  GPT model(c);
  model->train();
  auto idx = random_tokens(c, 2, 12, 3);
  auto out = model->forward(idx, random_tokens(c, 2, 12, 4));
  ASSERT_TRUE(std::isfinite(out.loss.item<double>()));
  out.loss.backward();
  std::set<std::string> must_move;
  for (const auto& [name, t] : model->key_parameters()) must_move.insert(name);
  for (const auto& [name, t] : model->mixing_parameters()) {
    if (t.requires_grad()) must_move.insert(name);
  }
  for (const auto& p : model->named_parameters()) {
    const auto& name = p.key();
    ASSERT_TRUE(p.value().grad().defined()) << name << " got no gradient";
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << name;
    const bool mechanism = name.find(".coupler.") != std::string::npos || name.find("cross_") != std::string::npos ||
                           name.find("gate") != std::string::npos || name.find(".ct_") != std::string::npos;
    if (must_move.count(name) || mechanism) {
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << name << " has a zero gradient";
    }
  }
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-2));
  opt.step();  // and the step leaves the model usable
  EXPECT_TRUE(std::isfinite(model->forward(idx, random_tokens(c, 2, 12, 4)).loss.item<double>()));
}

INSTANTIATE_TEST_SUITE_P(Model, EveryMechanism, ::testing::ValuesIn(mechanism_configs()), param_name);

// A batch's output does not depend on the batch processed before (the study's defect 3).
TEST(CrossLayerContext, OutputIndependentOfPreviousBatch) {
  for (const auto& tying : {"untied", "tied_transpose", "per_head_scalar"}) {
    for (bool training : {false, true}) {
      auto c = all_on(tying);
      auto model = make_model(c);
      model->train(training);  // dropout is 0: training mode must not change the answer either
      auto first = random_tokens(c, 2, 10, 1), second = random_tokens(c, 2, 10, 2);
      auto fresh = model->forward(second).logits.detach();
      model->forward(first);
      auto after = model->forward(second).logits.detach();
      EXPECT_EQ(max_abs_diff(fresh, after), 0.0) << tying;
      // A batch of one row equals the same row inside a batch of two.
      auto alone = model->forward(second.slice(0, 1, 2)).logits.detach();
      EXPECT_LT(max_abs_diff(alone, fresh.slice(0, 1, 2)), 1e-5) << tying;
    }
  }
}

// force_gates_open equals the gated model with every gate logit at +inf.
TEST(ForcedGates, EqualGatedModelWithInfiniteLogits) {
  for (const auto& apply : {"output", "weights"}) {
    for (const auto& t : targets()) {
      auto gated_config = all_on("per_head_scalar");
      gated_config.ra_ct.apply = apply;
      auto forced_config = gated_config;
      forced_config.force_gates_open = true;
      auto gated = make_model(gated_config, 1, t.device);
      auto forced = make_model(forced_config, 2, t.device);
      {
        torch::NoGradGuard no_grad;
        auto gated_params = gated->named_parameters();
        for (const auto& p : forced->named_parameters()) gated_params[p.key()].copy_(p.value());
        for (const auto& p : gated->named_parameters()) {
          const auto& n = p.key();
          if (!forced->named_parameters().contains(n) &&
              (n.find("ct_bias") != std::string::npos || n.find("gate_to_heads.bias") != std::string::npos ||
               n.find("head_gate") != std::string::npos)) {
            p.value().fill_(1e4);  // sigmoid(1e4) == 1 exactly in fp32
          }
        }
      }
      AutocastGuard autocast(t);
      torch::NoGradGuard no_grad;
      auto idx = random_tokens(gated_config, 2, 12, 5, t.device);
      EXPECT_LT(max_abs_diff(gated->forward(idx).logits, forced->forward(idx).logits), t.tol) << apply << t.name();
      // And the gates do something when they are not saturated.
      auto plain = make_model(gated_config, 1, t.device);
      EXPECT_GT(max_abs_diff(plain->forward(idx).logits, gated->forward(idx).logits), 1e-4);
    }
  }
}

// Mechanism 3's per_head_scalar coupler returns non-zero context that carries gradient into both
// its projection and its head gates (the study's version returned zeros).
TEST(Coupler, PerHeadScalarOutputNonZeroWithGradient) {
  auto c = tiny();
  c.mlp_latent.enabled = true;
  c.mlp_latent.tying = "per_head_scalar";
  torch::manual_seed(1);
  Coupler coupler(c, 0);
  auto hidden = torch::randn({2, 5, c.mlp_hidden()}, torch::requires_grad());
  auto ctx = coupler->to_attn(hidden);  // [B, T, L]
  ASSERT_EQ(ctx.sizes(), (std::vector<int64_t>{2, 5, c.mlp_latent.latent_dim}));
  EXPECT_GT(ctx.abs().min().item<double>(), 0.0);
  ctx.square().sum().backward();
  auto params = coupler->named_parameters();
  EXPECT_GT(params["mlp_to_attn.weight"].grad().abs().sum().item<double>(), 0.0);
  EXPECT_GT(params["head_gate"].grad().abs().min().item<double>(), 0.0);  // every head group
  EXPECT_GT(hidden.grad().abs().sum().item<double>(), 0.0);
  // The group of latent unit l is floor(l·H/L): closing head 0's gate zeroes the first half.
  {
    torch::NoGradGuard no_grad;
    params["head_gate"][0].fill_(-1e4);
  }
  auto closed = coupler->to_attn(hidden).detach();
  const int64_t half = c.mlp_latent.latent_dim / 2;
  EXPECT_EQ(closed.slice(2, 0, half).abs().max().item<double>(), 0.0);
  EXPECT_GT(closed.slice(2, half, 2 * half).abs().min().item<double>(), 0.0);
}

TEST(Dropout, ActiveInTrainingOnlyAndEvalDeterministic) {
  auto c = all_on();
  c.dropout = 0.2;
  auto model = make_model(c);
  auto idx = random_tokens(c, 2, 10, 1);
  auto e1 = model->forward(idx).logits.detach(), e2 = model->forward(idx).logits.detach();
  EXPECT_EQ(max_abs_diff(e1, e2), 0.0);
  model->train();
  auto t1 = model->forward(idx).logits.detach();
  EXPECT_GT(max_abs_diff(t1, e1), 1e-4);
}

TEST(Init, Gpt2InitialisationAndMechanismStartValues) {
  ModelConfig c;  // full size: the init statistics need many samples
  c.n_layer = 2;
  c.vocab_size = 1000;
  c.ra.enabled = true;
  c.mlp_gate.enabled = true;
  c.mlp_latent.enabled = true;
  c.mlp_latent.tying = "per_head_scalar";
  torch::manual_seed(0);
  GPT model(c);
  auto p = model->named_parameters();
  EXPECT_NEAR(p["wte.weight"].std().item<double>(), 0.02, 1e-3);
  EXPECT_NEAR(p["h.0.attn.c_attn.weight"].std().item<double>(), 0.02, 1e-3);
  EXPECT_NEAR(p["h.0.mlp.c_proj.weight"].std().item<double>(), 0.02 / std::sqrt(4.0), 1e-3);
  EXPECT_EQ(p["h.0.attn.c_attn.bias"].abs().max().item<double>(), 0.0);
  EXPECT_NEAR(p["h.1.attn.ra_alpha"].item<double>(), 0.3, 1e-7);
  EXPECT_NEAR(p["h.1.attn.gate_alpha"].item<double>(), 0.1, 1e-7);
  EXPECT_EQ(p["h.0.mlp.gate_to_heads.bias"].min().item<double>(), 2.0);
  EXPECT_EQ(p["h.0.coupler.head_gate"].min().item<double>(), 2.0);
  EXPECT_NEAR(p["h.1.coupler.alpha_attn"].item<double>(), 0.2, 1e-7);
  // The output head is the token embedding.
  auto idx = torch::zeros({1, 1}, torch::kLong);
  EXPECT_EQ(model->forward(idx).logits.size(-1), 1000);
  EXPECT_EQ(model->named_parameters().size(), p.size());
  EXPECT_FALSE(p.contains("lm_head.weight"));
}

TEST(Introspection, MixingAndKeyParameterNames) {
  auto model = make_model(all_on("per_head_scalar"));
  std::set<std::string> mixing, key;
  for (const auto& [n, t] : model->mixing_parameters()) mixing.insert(n);
  for (const auto& [n, t] : model->key_parameters()) key.insert(n);
  for (const auto* n : {"h.0.attn.ra_alpha", "h.0.attn.ct_scale", "h.0.attn.ct_bias", "h.1.attn.gate_alpha",
                        "h.0.mlp.gate_to_heads.bias", "h.2.mlp.cross_alpha", "h.0.coupler.head_gate",
                        "h.2.coupler.alpha_mlp", "h.2.coupler.alpha_attn", "h.1.mlp.ratio"}) {
    EXPECT_TRUE(mixing.count(n)) << n;
  }
  for (const auto* n : {"h.0.attn.ra_alpha", "h.0.mlp.gate_proj.weight", "h.0.mlp.gate_to_heads.weight",
                        "h.0.attn.q_to_latent", "h.0.coupler.attn_to_mlp.weight", "h.0.coupler.mlp_to_attn.weight",
                        "h.2.mlp.ratio"}) {
    EXPECT_TRUE(key.count(n)) << n;
  }
  EXPECT_FALSE(mixing.count("h.2.coupler.head_gate"));  // the last layer produces nothing
  // Per layer ra_alpha, ct_scale, ct_bias, cross_alpha, alpha_mlp, ratio; two layers each of
  // gate_alpha, gate_to_heads.bias, head_gate, alpha_attn.
  EXPECT_EQ(mixing.size(), 3u * 6 + 4 * 2);
}

// Mechanism 2's Ā as (key, weight) pairs, as the fused statistics hand it to the MLP: the dense rows
// the pairs name, an empty entry (key −1, weight 0) adding nothing; a dense Ā passes through.
TEST(MixingWeights, PairsBecomeTheDenseRowsTheyName) {
  MixingWeights pairs;
  pairs.keys = torch::tensor({0, -1, 1, 0, 2, 1}, torch::kInt).view({1, 3, 2});
  pairs.values = torch::tensor({1.0f, 0.0f, 0.6f, 0.4f, 0.7f, 0.3f}).view({1, 3, 2});
  const auto want = torch::tensor({1.0f, 0.0f, 0.0f, 0.4f, 0.6f, 0.0f, 0.0f, 0.3f, 0.7f}).view({1, 3, 3});
  EXPECT_TRUE(torch::equal(pairs.to_dense(3), want));
  MixingWeights dense;
  dense.dense = want;
  EXPECT_TRUE(dense.to_dense(3).is_same(want));
}

}  // namespace
}  // namespace ratio::model::testing

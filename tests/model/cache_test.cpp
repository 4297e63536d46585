// Incremental decoding: the standard and the MLA (latent) KV caches give the full forward's logits,
// and hold the bytes the formula says.

#include <gtest/gtest.h>

#include "tests/model/support.h"

namespace ratio::model::testing {
namespace {

std::vector<Named> cacheable_configs() {
  std::vector<Named> out;
  auto c = tiny();
  out.push_back({"standard", c});
  c.mla.enabled = true;
  out.push_back({"mla", c});
  for (const std::string tying : {"untied", "tied_transpose", "per_head_scalar"}) {
    auto m3 = c;
    m3.mlp_latent.enabled = true;
    m3.mlp_latent.tying = tying;
    out.push_back({"mla_m3_" + tying, m3});
    m3.mla.enabled = false;
    out.push_back({"m3_" + tying, m3});
  }
  auto ct = tiny();
  ct.ra_ct.enabled = true;
  ct.ra_ct.mode = "entropy";
  ct.ra_ct.apply = "weights";
  out.push_back({"ra_ct", ct});
  ct.mla.enabled = true;
  ct.learned_ratio.enabled = true;
  out.push_back({"mla_ra_ct_learned_ratio", ct});
  // Mechanisms that read earlier positions: RA (earlier queries), 1 (prefix sums), 2 (hidden states).
  for (bool mla : {false, true}) {
    for (int window : {0, 3}) {
      auto ra = tiny();
      ra.mla.enabled = mla;
      ra.ra.enabled = true;
      ra.ra.window = window;
      out.push_back({std::string("ra_window") + std::to_string(window) + (mla ? "_mla" : ""), ra});
    }
  }
  auto m1 = tiny();
  m1.mlp_gate.enabled = true;
  out.push_back({"m1", m1});
  for (const std::string sparsify : {"topk", "rms", "none"}) {
    auto m2 = tiny();
    m2.mlp_cross.enabled = true;
    m2.mlp_cross.sparsify = sparsify;
    out.push_back({"m2_" + sparsify, m2});
  }
  for (const std::string tying : {"untied", "tied_transpose", "per_head_scalar"}) {
    out.push_back({"all_on_" + tying, all_on(tying)});
    auto forced = all_on(tying);
    forced.force_gates_open = true;
    out.push_back({"all_on_forced_" + tying, forced});
  }
  return out;
}

class CachedDecoding : public ::testing::TestWithParam<Named> {};

TEST_P(CachedDecoding, EqualsFullForward) {
  const auto& c = GetParam().config;
  for (const auto& t : targets()) {
    auto model = make_model(c, 1, t.device);
    AutocastGuard autocast(t);
    torch::NoGradGuard no_grad;
    const int64_t B = 2, T = 11, prefill = 4;
    auto idx = random_tokens(c, B, T, 9, t.device);
    auto full = model->forward(idx).logits;
    KVCache cache;
    std::vector<torch::Tensor> pieces{model->forward_cached(idx.slice(1, 0, prefill), cache)};
    for (int64_t i = prefill; i < T; i += 3) {  // uneven chunks: 3, 3, 1
      pieces.push_back(model->forward_cached(idx.slice(1, i, std::min(T, i + 3)), cache));
    }
    auto cached = torch::cat(pieces, 1);
    EXPECT_LT(max_abs_diff(full, cached), t.bf16 ? t.tol : 1e-5) << t.name();
    EXPECT_EQ(cache.length(), T);
    // Bytes per position and layer: k and v (latents under MLA), RA's queries, mechanism 2's hidden state;
    // plus mechanism 1's running sum [B, 1, G] in fp32 per producer layer.
    const int64_t Dk = c.mla.enabled ? c.mla.latent_dim : c.head_dim();
    int64_t per_token = c.mla.enabled ? 2 * c.mla.latent_dim : 2 * c.n_embd;
    if (c.ra.enabled) per_token += c.n_head * Dk;
    if (c.mlp_cross.enabled) per_token += c.mlp_hidden();
    const int64_t element = cache.layers[0].k.element_size();  // 4 in fp32, 2 under bf16 autocast
    int64_t expected = c.n_layer * B * T * per_token * element;
    if (c.mlp_gate.enabled && !c.force_gates_open) expected += (c.n_layer - 1) * B * c.mlp_gate.gate_dim * 4;
    EXPECT_EQ(cache.bytes(), expected) << t.name();
  }
}

INSTANTIATE_TEST_SUITE_P(Model, CachedDecoding, ::testing::ValuesIn(cacheable_configs()),
                         [](const ::testing::TestParamInfo<Named>& info) { return info.param.name; });

// A bf16 cache under an fp32 model halves the bytes and stays close to the full forward.
TEST(CachedDecoding, LowPrecisionStorage) {
  for (bool mla : {false, true}) {
    auto c = tiny();
    c.mla.enabled = mla;
    auto model = make_model(c);
    torch::NoGradGuard no_grad;
    auto idx = random_tokens(c, 1, 9, 2);
    KVCache cache;
    cache.dtype = torch::kBFloat16;
    auto cached = model->forward_cached(idx, cache);
    EXPECT_EQ(cache.layers[0].k.scalar_type(), torch::kBFloat16);
    EXPECT_EQ(cache.bytes(), c.n_layer * 9 * (mla ? 2 * c.mla.latent_dim : 2 * c.n_embd) * 2);
    EXPECT_LT(max_abs_diff(cached, model->forward(idx).logits), 5e-2);
  }
}

TEST(CachedDecoding, PastBlockSizeIsAClearError) {
  auto c = tiny();
  auto model = make_model(c);
  KVCache cache;
  torch::NoGradGuard no_grad;
  model->forward_cached(random_tokens(c, 1, c.block_size, 1), cache);
  EXPECT_THROW(model->forward_cached(random_tokens(c, 1, 1, 2), cache), std::invalid_argument);
}

}  // namespace
}  // namespace ratio::model::testing

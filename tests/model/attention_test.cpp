// Reciprocal attention against a brute-force double loop (the study's defect 2: its reciprocal term
// was neither transposed nor a per-pair product), with and without MLA, on every attention path.

#include <gtest/gtest.h>

#include <cmath>

#include "model/layers.h"
#include "tests/model/support.h"

namespace ratio::model::testing {
namespace {

using Matrix = std::vector<std::vector<double>>;  // [T][dim]

Matrix rows(const torch::Tensor& t) {  // [T, dim] -> nested vectors in double
  auto c = t.to(torch::kFloat64).cpu().contiguous();
  Matrix m(c.size(0), std::vector<double>(c.size(1)));
  auto a = c.accessor<double, 2>();
  for (int64_t i = 0; i < c.size(0); ++i)
    for (int64_t j = 0; j < c.size(1); ++j) m[i][j] = a[i][j];
  return m;
}

double dot(const std::vector<double>& x, const std::vector<double>& y) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
  return s;
}

// Per head h: queries Q[h] [T][dk], keys K[h] [T][dk], values V[h] [T][D]. Returns the attention
// output before c_proj, [T][H·D], from S'[i,j] = S[i,j] + alpha·S[j,i] for j <= i, i - j <= window.
Matrix brute_force_ra(const std::vector<Matrix>& Q, const std::vector<Matrix>& K, const std::vector<Matrix>& V,
                      double scale, double alpha, int window) {
  const size_t H = Q.size(), T = Q[0].size(), D = V[0][0].size();
  Matrix out(T, std::vector<double>(H * D, 0.0));
  for (size_t h = 0; h < H; ++h) {
    for (size_t i = 0; i < T; ++i) {
      std::vector<double> s(i + 1);
      double mx = -1e300;
      for (size_t j = 0; j <= i; ++j) {
        s[j] = dot(Q[h][i], K[h][j]) * scale;  // S[i, j]
        const bool in_band = window == 0 || i - j <= size_t(window);
        if (in_band) s[j] += alpha * dot(Q[h][j], K[h][i]) * scale;  // alpha·S[j, i]
        mx = std::max(mx, s[j]);
      }
      double z = 0;
      for (size_t j = 0; j <= i; ++j) z += std::exp(s[j] - mx);
      for (size_t j = 0; j <= i; ++j) {
        const double a = std::exp(s[j] - mx) / z;
        for (size_t d = 0; d < D; ++d) out[i][h * D + d] += a * V[h][j][d];
      }
    }
  }
  return out;
}

struct RaCase {
  bool mla;
  int window;         // 3 = band, 0 = whole context (the SDPA concatenation path)
  bool keep_weights;  // forces the materialised path
};

class RaBruteForce : public ::testing::TestWithParam<RaCase> {};

TEST_P(RaBruteForce, EqualsDoubleLoop) {
  const auto tc = GetParam();
  auto c = tiny();
  c.mla.enabled = tc.mla;
  c.ra.enabled = true;
  c.ra.window = tc.window;
  c.ra.alpha = 0.7;  // large enough that a wrong orientation shows
  torch::manual_seed(3);
  Attention attn(c, 0);
  {
    torch::NoGradGuard no_grad;  // make q, k large enough that the softmax is far from uniform
    for (auto& p : attn->parameters()) p.normal_(0.0, 0.5);
    attn->named_parameters()["ra_alpha"].fill_(0.7);
  }
  const int64_t T = 10, H = c.n_head, D = c.head_dim(), C = c.n_embd;
  auto a = torch::randn({1, T, C});
  auto out = attn->forward(a, torch::Tensor(), torch::Tensor(), tc.keep_weights);

  auto params = attn->named_parameters();
  auto lin = [&](const std::string& name, const torch::Tensor& x) {
    return torch::nn::functional::linear(x, params[name + ".weight"], params[name + ".bias"]);
  };
  std::vector<Matrix> Q(H), K(H), V(H);
  const auto x = a[0];  // [T, C]
  double scale;
  if (!tc.mla) {
    auto qkv = lin("c_attn", x);  // [T, 3C]
    for (int64_t h = 0; h < H; ++h) {
      Q[h] = rows(qkv.slice(1, h * D, (h + 1) * D));
      K[h] = rows(qkv.slice(1, C + h * D, C + (h + 1) * D));
      V[h] = rows(qkv.slice(1, 2 * C + h * D, 2 * C + (h + 1) * D));
    }
    scale = 1.0 / std::sqrt(double(D));
  } else {
    auto q = lin("q_proj", x), k_lat = lin("k_down", x), v = lin("v_up", lin("v_down", x));
    auto q_to_latent = params["q_to_latent"];  // [H, D, L]
    for (int64_t h = 0; h < H; ++h) {
      Q[h] = rows(torch::matmul(q.slice(1, h * D, (h + 1) * D), q_to_latent[h]));  // [T, L]
      K[h] = rows(k_lat);
      V[h] = rows(v.slice(1, h * D, (h + 1) * D));
    }
    scale = 1.0 / std::sqrt(double(c.mla.latent_dim));
  }
  auto expected = brute_force_ra(Q, K, V, scale, 0.7, tc.window);
  torch::Tensor y = torch::empty({T, C}, torch::kFloat64);
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < C; ++j) y[i][j] = expected[i][j];
  auto expected_out = lin("c_proj", y.to(torch::kFloat32));
  EXPECT_LT(max_abs_diff(out.y[0], expected_out), 1e-5);

  // The same without the reciprocal term differs clearly: the test has teeth.
  auto plain = brute_force_ra(Q, K, V, scale, 0.0, tc.window);
  double diff = 0;
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < C; ++j) diff = std::max(diff, std::abs(plain[i][j] - expected[i][j]));
  EXPECT_GT(diff, 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Paths, RaBruteForce,
                         ::testing::Values(RaCase{false, 3, false}, RaCase{false, 0, false}, RaCase{false, 0, true},
                                           RaCase{true, 3, false}, RaCase{true, 0, false}, RaCase{true, 0, true}),
                         [](const ::testing::TestParamInfo<RaCase>& info) {
                           return std::string(info.param.mla ? "mla" : "standard") + "_window" +
                                  std::to_string(info.param.window) + (info.param.keep_weights ? "_materialised" : "");
                         });

// MLA's per-head query product against the plain composite (a batched matmul per head, as autograd
// differentiates it): the values, both gradients, and the layout the output is meant to have,
// [B, T, H, L] in memory. fp64, so agreement is to rounding; on CUDA also under bf16 autocast.
TEST(QueriesToLatent, MatchesPerHeadMatmulAndIsLaidOutLikeStandardQueries) {
  std::vector<torch::Device> devices = {torch::kCPU};
  if (torch::cuda::is_available()) devices.push_back(torch::kCUDA);
  for (const auto& device : devices) {
    const int64_t B = 2, T = 5, H = 3, D = 4, L = 6;
    const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device);
    torch::manual_seed(29);
    const auto q0 = torch::randn({B, T, H * D}, f64), w0 = torch::randn({H, D, L}, f64);
    const auto dout = torch::randn({B, H, T, L}, f64);
    auto q = q0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    auto out = ratio::model::queries_to_latent(q, w);
    (out * dout).sum().backward();
    auto q_ref = q0.clone().requires_grad_(true), w_ref = w0.clone().requires_grad_(true);
    auto ref = torch::matmul(q_ref.view({B, T, H, D}).transpose(1, 2), w_ref.unsqueeze(0));  // [B, H, T, L]
    (ref * dout).sum().backward();
    EXPECT_EQ(out.sizes(), ref.sizes());
    EXPECT_EQ(out.stride(1), L) << "heads adjacent in memory";
    EXPECT_EQ(out.stride(2), H * L) << "positions H·L apart";
    EXPECT_LT(max_abs_diff(out, ref), 1e-12);
    EXPECT_LT(max_abs_diff(q.grad(), q_ref.grad()), 1e-12);
    EXPECT_LT(max_abs_diff(w.grad(), w_ref.grad()), 1e-12);
  }
}

// On CUDA (bf16 autocast) the fused SDPA paths agree with the fp32 materialised one.
TEST(RaBruteForce, CudaBf16MatchesFp32) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA";
  for (bool mla : {false, true}) {
    for (int window : {0, 3}) {
      auto c = tiny();
      c.mla.enabled = mla;
      c.ra.enabled = true;
      c.ra.window = window;
      torch::manual_seed(5);
      Attention attn(c, 0);
      auto a = torch::randn({2, 12, c.n_embd});
      auto reference = attn->forward(a, torch::Tensor(), torch::Tensor(), true).y;
      attn->to(torch::kCUDA);
      Target t{torch::kCUDA, true, 3e-2};
      AutocastGuard autocast(t);
      auto y = attn->forward(a.to(torch::kCUDA), torch::Tensor(), torch::Tensor(), false).y;
      EXPECT_LT(max_abs_diff(y, reference), t.tol) << "mla " << mla << " window " << window;
    }
  }
}

// attention_stats: entropy of uniform causal rows, and reciprocity of a symmetric score matrix.
TEST(AttentionStats, EntropyAndReciprocity) {
  auto c = tiny();
  c.n_layer = 1;
  auto model = make_model(c);
  {
    torch::NoGradGuard no_grad;
    // c_attn weights 0: every score 0, so row i is uniform over i+1 keys and S is symmetric.
    model->named_parameters()["h.0.attn.c_attn.weight"].zero_();
  }
  const int64_t T = 8;
  auto stats = model->attention_stats(random_tokens(c, 2, T, 1));
  ASSERT_EQ(stats.size(), 1u);
  double expected = 0;
  for (int64_t i = 1; i <= T; ++i) expected += std::log(double(i));
  EXPECT_NEAR(stats[0].entropy, expected / T, 1e-5);

  // Queries equal to keys (shared weights) make S symmetric: reciprocity 1.
  {
    torch::NoGradGuard no_grad;
    auto w = model->named_parameters()["h.0.attn.c_attn.weight"];  // [3C, C]
    w.normal_(0.0, 0.3);
    w.slice(0, c.n_embd, 2 * c.n_embd).copy_(w.slice(0, 0, c.n_embd));
    auto b = model->named_parameters()["h.0.attn.c_attn.bias"];
    b.slice(0, c.n_embd, 2 * c.n_embd).copy_(b.slice(0, 0, c.n_embd));
  }
  stats = model->attention_stats(random_tokens(c, 2, T, 1));
  EXPECT_NEAR(stats[0].reciprocity, 1.0, 1e-9);
  EXPECT_GT(stats[0].entropy, 0.0);
}

}  // namespace
}  // namespace ratio::model::testing

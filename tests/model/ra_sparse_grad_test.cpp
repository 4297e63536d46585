// The gradient decomposition that step 16's attention kernels are to compute (issue 11), checked on the
// CPU in fp64 against autograd through the materialised path. Full RATIO's attention layer has
//   S' = S + α·band∘Sᵀ (S = q·kᵀ·scale), P = causal softmax(S'), O = P·V,
//   RA-CT (topk, apply output): y = O·g, g = σ(ct_scale_h·Σ_{top K of P_h,i} P + ct_bias_h),
//   mechanism 2 (topk): Ā = the top K of P's head mean per row, renormalised; mixed = Ā·Hid.
// The kernels keep no T×T tensor: the forward keeps O, the log-sum-exp and the two top-K key sets, and
// the backward is
//   1. the dense flash backward with dO = dy·g and each row's D = rowsum(dO∘O) shifted by
//      Σ_j P_ij·sparse_ij (cuDNN for the far keys, given O' = O + shift/|dO|²·dO; the band kernel
//      given the shift), plus
//   2. sparse corrections dS'_ij += P_ij·sparse_ij at ≤ 2K keys per row: RA-CT's c_h,i at its head's
//      top K, and mechanism 2's dm_ij / H at the mean's top K, pushed through S' into dq, dk and dα.
// This test pins that decomposition, and the gate's and the renormalisation's own gradients, before
// the kernels exist; the kernels are then checked against the materialised path directly.
#include <gtest/gtest.h>

#include <torch/torch.h>

namespace {

namespace F = torch::nn::functional;

constexpr int64_t B = 2, H = 3, T = 13, D = 4, M = 5, K = 3, kWindow = 3;
constexpr double kAlpha = 0.7;

struct Inputs {
  torch::Tensor q, k, v, alpha, ct_scale, ct_bias, hidden;  // leaves
  torch::Tensor dy, dmixed;                                 // upstream gradients of y and mixed
  double scale;
};

Inputs make_inputs() {
  torch::manual_seed(41);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  Inputs in;
  in.q = (torch::randn({B, H, T, D}, f64) * 1.3).requires_grad_(true);
  in.k = (torch::randn({B, H, T, D}, f64) * 1.3).requires_grad_(true);
  in.v = torch::randn({B, H, T, D}, f64).requires_grad_(true);
  in.alpha = torch::full({1}, kAlpha, f64).requires_grad_(true);
  in.ct_scale = torch::randn({H}, f64).requires_grad_(true);
  in.ct_bias = torch::randn({H}, f64).requires_grad_(true);
  in.hidden = torch::randn({B, T, M}, f64).requires_grad_(true);
  in.dy = torch::randn({B, H, T, D}, f64);
  in.dmixed = torch::randn({B, T, M}, f64);
  in.scale = 1.0 / std::sqrt(double(D));
  return in;
}

// band[i, j]: the reciprocal term applies (j ≤ i, i − j ≤ window); causal[i, j]: j ≤ i. [T, T] bool
torch::Tensor band_mask() {
  auto i = torch::arange(T).unsqueeze(1), j = torch::arange(T).unsqueeze(0);
  return (j <= i).logical_and(i - j <= kWindow);
}
torch::Tensor causal_mask() { return torch::arange(T).unsqueeze(0) <= torch::arange(T).unsqueeze(1); }

// S' [B, H, T, T], from q, k and α as given (leaves or detached copies).
torch::Tensor reciprocal_scores(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& alpha,
                                double scale) {
  auto s = torch::matmul(q, k.transpose(-2, -1)) * scale;
  return s + (alpha * s.transpose(-2, -1)).masked_fill(band_mask().logical_not(), 0.0);
}

// Row-wise top-K keys of x [.., T, T] among the visible ones, as a 0/1 mask.
torch::Tensor top_keys(const torch::Tensor& x) {
  auto idx = std::get<1>(x.masked_fill(causal_mask().logical_not(), -1.0).topk(K, -1));
  return torch::zeros_like(x).scatter_(-1, idx, 1.0);
}

struct Materialised {
  torch::Tensor y, mixed;           // outputs
  torch::Tensor p, o, g, stat;      // for the decomposition (detached)
  torch::Tensor head_top, mean_top;  // [B, H, T, T], [B, T, T] 0/1
  torch::Tensor a_bar, z;           // renormalised Ā [B, T, T], its normaliser Z [B, T, 1]
};

// The model's math (AttentionImpl::attend_materialised with RA-CT output/topk and sparsify topk, then
// MlpImpl's Ā·hidden), differentiable in every input.
Materialised forward(const Inputs& in) {
  Materialised m;
  auto s = reciprocal_scores(in.q, in.k, in.alpha, in.scale).masked_fill(causal_mask().logical_not(),
                                                                          -std::numeric_limits<double>::infinity());
  auto p = torch::softmax(s, -1);
  auto o = torch::matmul(p, in.v);
  m.head_top = top_keys(p.detach());
  auto stat = (p * m.head_top).sum(-1);  // [B, H, T]
  auto g = torch::sigmoid(in.ct_scale.view({1, H, 1}) * stat + in.ct_bias.view({1, H, 1}));
  m.y = o * g.unsqueeze(-1);
  auto mean = p.mean(1);  // [B, T, T]
  m.mean_top = top_keys(mean.detach());
  auto kept = mean * m.mean_top;
  auto z = kept.sum(-1, true);
  auto a_bar = kept / z;
  m.mixed = torch::matmul(a_bar, in.hidden);
  m.p = p.detach();
  m.o = o.detach();
  m.g = g.detach();
  m.stat = stat.detach();
  m.a_bar = a_bar.detach();
  m.z = z.detach();
  return m;
}

struct Grads {
  torch::Tensor q, k, v, alpha, ct_scale, ct_bias, hidden;
};

// Which parts of the decomposition to apply (all of them, or one left out to show it matters).
struct Parts {
  bool shift = true;   // D shifted by Σ_j P·sparse
  bool sparse = true;  // dS' += P∘sparse at the key sets
};

// The decomposition: only P where the kernels recompute it from q, k and the log-sum-exp (here the
// saved P stands in), O, the gate, the two key sets and Ā.
Grads decomposed(const Inputs& in, const Materialised& m, Parts parts = {}) {
  torch::NoGradGuard no_grad;
  const auto q = in.q.detach(), k = in.k.detach(), v = in.v.detach();
  const auto cs = in.ct_scale.detach().view({1, H, 1}), alpha = in.alpha.detach();
  Grads out;
  // RA-CT: y = O·g.
  const auto d_o = in.dy * m.g.unsqueeze(-1);                   // [B, H, T, D]
  const auto dg = (in.dy * m.o).sum(-1);                        // [B, H, T]
  const auto dpre = dg * m.g * (1 - m.g);                       // through σ
  out.ct_scale = (dpre * m.stat).sum(std::vector<int64_t>{0, 2});
  out.ct_bias = dpre.sum(std::vector<int64_t>{0, 2});
  const auto c = dpre * cs;                                     // d stat: on each of the head's top K
  // Mechanism 2: mixed = Ā·hidden, Ā = kept / Z over the mean's top K.
  out.hidden = torch::matmul(m.a_bar.transpose(-2, -1), in.dmixed);
  const auto da_bar = torch::matmul(in.dmixed, in.hidden.detach().transpose(-2, -1)) * m.mean_top;  // [B, T, T]
  const auto dm = (da_bar - (da_bar * m.a_bar).sum(-1, true)) / m.z * m.mean_top;                  // d mean
  // The sparse part of dP: at most 2K entries per row.
  const auto sparse = c.unsqueeze(-1) * m.head_top + (dm / double(H)).unsqueeze(1);  // [B, H, T, T]
  // 1. Dense: dS' = P∘(dO·vᵀ − D), D shifted by Σ_j P·sparse.
  const auto shift = parts.shift ? (m.p * sparse).sum(-1, true) : torch::zeros({B, H, T, 1}, m.p.options());
  // cuDNN computes D = rowsum(dO∘O) itself: handed O' = O + shift/|dO|²·dO instead of O, it gets the
  // shifted D. (A row with dO = 0 has no dense gradient at all; its shift goes unused.)
  const auto d_o_sq = (d_o * d_o).sum(-1, true);
  const auto o_prime = m.o + shift / d_o_sq.clamp_min(1e-300) * d_o;
  const auto d_rows = (d_o * o_prime).sum(-1, true);
  auto ds = m.p * (torch::matmul(d_o, v.transpose(-2, -1)) - d_rows);
  out.v = torch::matmul(m.p.transpose(-2, -1), d_o);
  // 2. Sparse: dS' += P∘sparse, nonzero only on the key sets.
  if (parts.sparse) ds = ds + m.p * sparse;
  // Through S' = S + α·band∘Sᵀ: dS = dS' + α·band∘dS'ᵀ, dα = Σ band∘dS'∘Sᵀ.
  const auto band = band_mask().to(ds.scalar_type());
  const auto s = torch::matmul(q, k.transpose(-2, -1)) * in.scale;
  out.alpha = (ds * band * s.transpose(-2, -1)).sum().view({1});
  const auto ds_plain = ds + alpha * (ds * band).transpose(-2, -1);
  out.q = torch::matmul(ds_plain, k) * in.scale;
  out.k = torch::matmul(ds_plain.transpose(-2, -1), q) * in.scale;
  return out;
}

TEST(RaSparseGradientSpec, DenseBackwardWithShiftedRowsPlusSparseCorrectionsIsTheGradient) {
  const Inputs in = make_inputs();
  const Materialised m = forward(in);
  ((m.y * in.dy).sum() + (m.mixed * in.dmixed).sum()).backward();
  const Grads want{in.q.grad(), in.k.grad(), in.v.grad(), in.alpha.grad(), in.ct_scale.grad(), in.ct_bias.grad(),
                   in.hidden.grad()};
  const Grads got = decomposed(in, m);
  auto expect_equal = [](const torch::Tensor& a, const torch::Tensor& b, const char* what) {
    ASSERT_EQ(a.sizes(), b.sizes()) << what;
    EXPECT_LT((a - b).abs().max().item<double>(), 1e-10 * std::max(1.0, b.abs().max().item<double>())) << what;
  };
  expect_equal(got.q, want.q, "dq");
  expect_equal(got.k, want.k, "dk");
  expect_equal(got.v, want.v, "dv");
  expect_equal(got.alpha, want.alpha, "dalpha");
  expect_equal(got.ct_scale, want.ct_scale, "dct_scale");
  expect_equal(got.ct_bias, want.ct_bias, "dct_bias");
  expect_equal(got.hidden, want.hidden, "dhidden");
  // Teeth: leaving out either part moves dq well past rounding.
  for (const Parts partial : {Parts{false, true}, Parts{true, false}}) {
    const Grads wrong = decomposed(in, m, partial);
    EXPECT_GT((wrong.q - want.q).abs().max().item<double>(), 1e-3) << "shift " << partial.shift << " sparse " << partial.sparse;
  }
}

}  // namespace

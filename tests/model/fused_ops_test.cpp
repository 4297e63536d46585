// The fused CUDA kernels (model/fused.h, model/kernels/) against the composite ATen ops they replace:
// forward and every gradient, on widths that are and are not multiples of the kernels' 8-wide
// vectors, in fp32 (tight) and under bf16 autocast (bf16 tolerances). CUDA only; on a CPU build
// the model must ignore the fused switch, which the last test checks here too.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "model/fused.h"
#include "model/layers.h"
#include "tests/model/fused_support.h"

namespace ratio::model {
namespace {

namespace F = torch::nn::functional;
using testing::all_on;
using testing::AutocastGuard;
using testing::expect_model_paths_agree;
using testing::have_kernels;
using testing::rel_err;
using testing::tiny;

// ---- residual add + layer norm ---------------------------------------------------------------------

struct NormCase {
  int64_t C;
  bool with_addend;
  bool bf16;  // autocast on, addend bf16
};

void PrintTo(const NormCase& c, std::ostream* os) {
  *os << "C" << c.C << (c.with_addend ? "_add" : "_noadd") << (c.bf16 ? "_bf16" : "_fp32");
}

class FusedAddLayerNorm : public ::testing::TestWithParam<NormCase> {};

TEST_P(FusedAddLayerNorm, MatchesComposite) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const NormCase p = GetParam();
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(7);
  torch::nn::LayerNorm ln(torch::nn::LayerNormOptions({p.C}));
  ln->to(torch::kCUDA);
  {
    torch::NoGradGuard no_grad;
    ln->weight.normal_(1.0, 0.3);
    ln->bias.normal_(0.0, 0.3);
  }
  // 3·37 rows: not a multiple of the 8 rows of a forward block or of the backward's grid.
  const auto x0 = torch::randn({3, 37, p.C}, dev) * 2 + 0.5;
  const auto a0 = torch::randn({3, 37, p.C}, dev).to(p.bf16 ? torch::kBFloat16 : torch::kFloat32);
  const auto g_sum = torch::randn({3, 37, p.C}, dev), g_y = torch::randn({3, 37, p.C}, dev);

  struct Result {
    torch::Tensor sum, y, dx, da, dw, db;
  };
  auto run = [&](bool fused) {
    auto x = x0.clone().requires_grad_(true);
    auto a = a0.clone().requires_grad_(true);
    ln->zero_grad();
    AutocastGuard autocast(p.bf16);
    torch::Tensor sum, y;
    const torch::Tensor addend = p.with_addend ? a : torch::Tensor();
    if (fused) {
      std::tie(sum, y) = fused::add_layer_norm(x, addend, ln);
    } else {
      sum = p.with_addend ? x + a : x;
      y = F::layer_norm(sum, F::LayerNormFuncOptions({p.C}).weight(ln->weight).bias(ln->bias).eps(1e-5));
    }
    auto loss = (y.to(torch::kFloat32) * g_y).sum();
    if (p.with_addend) loss = loss + (sum * g_sum).sum();
    loss.backward();
    return Result{sum.detach(), y.detach().to(torch::kFloat32), x.grad(),
                  p.with_addend ? a.grad().to(torch::kFloat32) : torch::Tensor(), ln->weight.grad().clone(),
                  ln->bias.grad().clone()};
  };
  const Result ref = run(false), got = run(true);
  // fp32: rounding only. bf16: y is stored in bf16 (2^-8 relative), and its gradient arrives in bf16.
  const double tol = p.bf16 ? 1e-2 : 1e-5;
  EXPECT_EQ(fused::add_layer_norm(x0, {}, ln).second.scalar_type(), torch::kFloat32) << "autocast is off here";
  EXPECT_LT(rel_err(got.sum, ref.sum), 1e-6);
  EXPECT_LT(rel_err(got.y, ref.y), tol);
  EXPECT_LT(rel_err(got.dx, ref.dx), tol);
  if (p.with_addend) {
    EXPECT_LT(rel_err(got.da, ref.da), tol);
  }
  EXPECT_LT(rel_err(got.dw, ref.dw), tol);
  EXPECT_LT(rel_err(got.db, ref.db), tol);
}

INSTANTIATE_TEST_SUITE_P(Widths, FusedAddLayerNorm,
                         ::testing::Values(NormCase{768, true, false}, NormCase{768, true, true},
                                           NormCase{768, false, false}, NormCase{768, false, true},
                                           NormCase{100, true, false}, NormCase{100, true, true},
                                           NormCase{20, false, false}, NormCase{1600, true, true}));

TEST(FusedAddLayerNorm, OutputIsBf16UnderAutocastAndWrittenEverywhere) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  torch::nn::LayerNorm ln(torch::nn::LayerNormOptions({64}));
  ln->to(torch::kCUDA);
  auto x = torch::randn({5, 64}, torch::TensorOptions().device(torch::kCUDA));
  AutocastGuard autocast(true);
  auto [sum, y] = fused::add_layer_norm(x, x.to(torch::kBFloat16), ln);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(sum.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(y.isfinite().all().item<bool>());
  // Each row of y has mean 0 and variance 1 (weight 1, bias 0).
  auto y32 = y.to(torch::kFloat32);
  EXPECT_LT(y32.mean(-1).abs().max().item<double>(), 2e-2);
  EXPECT_NEAR(y32.var(-1, /*unbiased=*/false).mean().item<double>(), 1.0, 2e-2);
}

// ---- c_fc + gelu, and the linears ---------------------------------------------------------------------

struct LinearCase {
  int64_t M, C;  // output and input widths
};

void PrintTo(const LinearCase& c, std::ostream* os) { *os << "M" << c.M << "_C" << c.C; }

// 3·37 rows: not a multiple of 8, 16 or 64 (the matmuls' tiles, the bias-gradient kernels' row groups).
constexpr int64_t kBatch = 3, kSeq = 37;

class FusedLinearGelu : public ::testing::TestWithParam<LinearCase> {};

TEST_P(FusedLinearGelu, MatchesLinearThenGeluUnderAutocast) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const LinearCase p = GetParam();
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(13);
  const auto x0 = torch::randn({kBatch, kSeq, p.C}, dev).to(torch::kBFloat16);  // what the fused layer norm hands over
  const auto w0 = torch::randn({p.M, p.C}, dev) * (1.0 / std::sqrt(double(p.C))), b0 = torch::randn({p.M}, dev) * 0.5;
  const auto g = torch::randn({kBatch, kSeq, p.M}, dev);
  auto run = [&](bool fused) {
    auto x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true), b = b0.clone().requires_grad_(true);
    AutocastGuard autocast(true);
    auto h = fused ? fused::linear_gelu(x, w, b) : torch::gelu(F::linear(x, w, b), "tanh");
    (h.to(torch::kFloat32) * g).sum().backward();
    return std::make_tuple(h.detach(), x.grad(), w.grad(), b.grad());
  };
  auto [h_ref, dx_ref, dw_ref, db_ref] = run(false);
  auto [h, dx, dw, db] = run(true);
  EXPECT_EQ(h.scalar_type(), h_ref.scalar_type());
  EXPECT_EQ(dx.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(dw.scalar_type(), torch::kFloat32);
  EXPECT_EQ(db.scalar_type(), torch::kFloat32);
  EXPECT_LT(rel_err(h, h_ref), 1e-2);
  EXPECT_LT(rel_err(dx, dx_ref), 1e-2);
  EXPECT_LT(rel_err(dw, dw_ref), 1e-2);
  EXPECT_LT(rel_err(db, db_ref), 1e-2);
}

TEST_P(FusedLinearGelu, ForwardWritesGeluAndItsPreActivation) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const LinearCase p = GetParam();
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(19);
  const auto x = torch::randn({kBatch, kSeq, p.C}, dev).to(torch::kBFloat16);
  const auto w = torch::randn({p.M, p.C}, dev) * (1.0 / std::sqrt(double(p.C))), b = torch::randn({p.M}, dev) * 0.5;
  torch::NoGradGuard no_grad;
  const fused::LinearGeluOutput out = fused::linear_gelu_forward(x, w, b);
  // ATen's composite: the linear (its bias in cuBLASLt's epilogue), then gelu of the bf16 result.
  const auto pre_ref = at::linear(x, w.to(torch::kBFloat16), b.to(torch::kBFloat16));
  const auto h_ref = torch::gelu(pre_ref, "tanh");
  // cuBLASLt takes the aux output's leading dimension (M) only in multiples of 8.
  EXPECT_EQ(out.epilogue, p.M % 8 == 0);
  ASSERT_EQ(out.h.sizes(), h_ref.sizes());
  ASSERT_EQ(out.pre.sizes(), pre_ref.sizes());
  EXPECT_EQ(out.h.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(out.pre.scalar_type(), torch::kBFloat16);
  if (out.epilogue) {
    // The same fp32 sums rounded to bf16, in another order: a few values one bf16 step apart.
    EXPECT_LT(rel_err(out.pre, pre_ref), 1e-2);
    // The epilogue takes gelu of the fp32 sum, ATen of the bf16 pre: both within bf16 rounding.
    EXPECT_LT(rel_err(out.h, h_ref), 1e-2);
    // h is gelu_tanh of the very pre that the backward reads.
    EXPECT_LT(rel_err(out.h, torch::gelu(out.pre.to(torch::kFloat32), "tanh")), 1e-2);
  } else {
    // The fallback is ATen's composite itself, bit for bit.
    EXPECT_TRUE(torch::equal(out.pre, pre_ref));
    EXPECT_TRUE(torch::equal(out.h, h_ref));
  }
}

// 3072: GPT-2's MLP; 2048: the golden-ratio width; 104: a multiple of 8 but not of 16 or 64 (the
// epilogue, on a small input width); 100: not a multiple of 8 (ATen's linear and gelu forward, the
// backward kernel's scalar path).
INSTANTIATE_TEST_SUITE_P(Widths, FusedLinearGelu,
                         ::testing::Values(LinearCase{3072, 768}, LinearCase{2048, 768}, LinearCase{104, 96},
                                           LinearCase{100, 768}));

// With weight = [I | 0] (M ≤ C), dx = dpre·weight is dpre itself, exactly (one product per sum), so
// the weight gradient must be dpreᵀ·x of those bf16 operands: fp32 accumulation and output stay within
// 1e-4 of it in fp64, where a bf16 product copied to fp32 (the path this replaced) is about 2^-9 off.
TEST(FusedLinearGelu, WeightGradientIsTheFp32Product) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  const int64_t C = 768, N = kBatch * kSeq;
  for (int64_t M : {256, 100}) {  // the epilogue's forward, and ATen's
    torch::manual_seed(23);
    auto x = torch::randn({kBatch, kSeq, C}, dev).to(torch::kBFloat16).requires_grad_(true);
    auto w = torch::eye(M, C, dev).requires_grad_(true);
    auto b = (torch::randn({M}, dev) * 0.5).requires_grad_(true);
    const auto g = torch::randn({kBatch, kSeq, M}, dev);
    {
      AutocastGuard autocast(true);
      (fused::linear_gelu(x, w, b).to(torch::kFloat32) * g).sum().backward();
    }
    const auto dpre64 = x.grad().narrow(-1, 0, M).to(torch::kFloat64).reshape({N, M});
    EXPECT_GT(dpre64.abs().max().item<double>(), 0.0) << "M " << M;
    EXPECT_EQ(w.grad().scalar_type(), torch::kFloat32);
    EXPECT_LT(rel_err(w.grad(), dpre64.t().mm(x.detach().to(torch::kFloat64).reshape({N, C}))), 1e-4)
        << "M " << M << ": the weight gradient went through bf16";
  }
}

class FusedLinear : public ::testing::TestWithParam<LinearCase> {};

TEST_P(FusedLinear, MatchesAtenLinearUnderAutocast) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const LinearCase p = GetParam();
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(17);
  const auto x0 = torch::randn({kBatch, kSeq, p.C}, dev).to(torch::kBFloat16);
  const auto w0 = torch::randn({p.M, p.C}, dev) * (1.0 / std::sqrt(double(p.C))), b0 = torch::randn({p.M}, dev) * 0.5;
  const auto g = torch::randn({kBatch, kSeq, p.M}, dev);
  auto run = [&](bool fused) {
    auto x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true), b = b0.clone().requires_grad_(true);
    AutocastGuard autocast(true);
    auto y = fused ? fused::linear(x, w, b) : F::linear(x, w, b);
    (y.to(torch::kFloat32) * g).sum().backward();
    return std::make_tuple(y.detach(), x.grad(), w.grad(), b.grad());
  };
  auto [y_ref, dx_ref, dw_ref, db_ref] = run(false);
  auto [y, dx, dw, db] = run(true);
  EXPECT_EQ(y.scalar_type(), y_ref.scalar_type());
  EXPECT_EQ(dx.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(dw.scalar_type(), torch::kFloat32);
  EXPECT_EQ(db.scalar_type(), torch::kFloat32);
  EXPECT_LT(rel_err(y, y_ref), 1e-2);
  EXPECT_LT(rel_err(dx, dx_ref), 1e-2);
  EXPECT_LT(rel_err(dw, dw_ref), 1e-2);
  EXPECT_LT(rel_err(db, db_ref), 1e-3);  // both sum bf16 rows in fp32

  // The gradient reaching y is g in bf16 (the backward of y.to(fp32)), so the weight gradient is
  // exactly dyᵀ·x of bf16 operands: fp32 accumulation and output stay within 1e-4 of it in fp64,
  // where a bf16 product copied to fp32 (the path this replaced) is about 2^-9 off.
  const int64_t N = kBatch * kSeq;
  const auto dy64 = g.to(torch::kBFloat16).to(torch::kFloat64).reshape({N, p.M});
  const auto x64 = x0.to(torch::kFloat64).reshape({N, p.C});
  EXPECT_LT(rel_err(dw, dy64.t().mm(x64)), 1e-4) << "the weight gradient went through bf16";
}

// 2304: c_attn; 768: the attention's c_proj; 768 from 3072: the MLP's c_proj; 100: not a multiple of 8
// (dy's rows 200 bytes apart in the weight gradient's matmul, the bias kernel's scalar path).
INSTANTIATE_TEST_SUITE_P(Widths, FusedLinear,
                         ::testing::Values(LinearCase{2304, 768}, LinearCase{768, 768}, LinearCase{768, 3072},
                                           LinearCase{100, 768}));

// ---- several linears of one input ---------------------------------------------------------------------

struct SharedInputCase {
  std::vector<int64_t> widths;  // rows of each weight
  int64_t C;
  int64_t unused_output;  // an output no loss reads (its gradient arrives undefined), or -1
};

void PrintTo(const SharedInputCase& c, std::ostream* os) {
  for (int64_t w : c.widths) *os << w << "_";
  *os << "C" << c.C << (c.unused_output >= 0 ? "_unused" + std::to_string(c.unused_output) : "");
}

class FusedSharedInputLinears : public ::testing::TestWithParam<SharedInputCase> {};

// The composite is one F::linear per weight, each of x (autograd adds their input gradients).
TEST_P(FusedSharedInputLinears, MatchSeparateLinearsUnderAutocast) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const SharedInputCase p = GetParam();
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(23);
  const auto x0 = torch::randn({kBatch, kSeq, p.C}, dev).to(torch::kBFloat16);
  std::vector<torch::Tensor> w0, b0, g;
  for (int64_t width : p.widths) {
    w0.push_back(torch::randn({width, p.C}, dev) * (1.0 / std::sqrt(double(p.C))));
    b0.push_back(torch::randn({width}, dev) * 0.5);
    g.push_back(torch::randn({kBatch, kSeq, width}, dev));
  }
  const size_t n = w0.size();
  auto run = [&](bool fused) {
    auto x = x0.clone().requires_grad_(true);
    std::vector<torch::Tensor> w, b;
    for (size_t i = 0; i < n; ++i) {
      w.push_back(w0[i].clone().requires_grad_(true));
      b.push_back(b0[i].clone().requires_grad_(true));
    }
    AutocastGuard autocast(true);
    std::vector<torch::Tensor> ys;
    if (fused) {
      ys = fused::shared_input_linears(x, w, b);
    } else {
      for (size_t i = 0; i < n; ++i) ys.push_back(F::linear(x, w[i], b[i]));
    }
    auto loss = torch::zeros({}, dev);
    for (size_t i = 0; i < n; ++i)
      if (int64_t(i) != p.unused_output) loss = loss + (ys[i].to(torch::kFloat32) * g[i]).sum();
    loss.backward();
    std::vector<torch::Tensor> grads{x.grad()};
    for (auto& t : w) grads.push_back(t.grad());
    for (auto& t : b) grads.push_back(t.grad());
    for (auto& y : ys) grads.push_back(y.detach());
    return grads;
  };
  const auto ref = run(false), got = run(true);
  ASSERT_EQ(got.size(), ref.size());
  EXPECT_EQ(got[0].scalar_type(), torch::kBFloat16);
  EXPECT_LT(rel_err(got[0], ref[0]), 1e-2) << "dx";
  for (size_t i = 0; i < n; ++i) {
    EXPECT_LT(rel_err(got[1 + 2 * n + i], ref[1 + 2 * n + i]), 1e-2) << "output " << i;
    if (int64_t(i) == p.unused_output) {  // no gradient at all for what nothing read, as autograd's
      EXPECT_FALSE(got[1 + i].defined());
      EXPECT_FALSE(got[1 + n + i].defined());
      continue;
    }
    EXPECT_EQ(got[1 + i].scalar_type(), torch::kFloat32);
    EXPECT_LT(rel_err(got[1 + i], ref[1 + i]), 1e-2) << "dweight " << i;
    EXPECT_LT(rel_err(got[1 + n + i], ref[1 + n + i]), 1e-3) << "dbias " << i;  // both sum bf16 rows in fp32
  }

  // The first weight's gradient is dyᵀ·x of bf16 operands, in fp32 (see FusedLinear).
  const int64_t N = kBatch * kSeq;
  const auto dy64 = g[0].to(torch::kBFloat16).to(torch::kFloat64).reshape({N, p.widths[0]});
  const auto x64 = x0.to(torch::kFloat64).reshape({N, p.C});
  EXPECT_LT(rel_err(got[1], dy64.t().mm(x64)), 1e-4) << "the weight gradient went through bf16";
}

// MLA's q_proj, k_down and v_down at latent 128; widths not a multiple of 8; an output nothing reads.
INSTANTIATE_TEST_SUITE_P(Shapes, FusedSharedInputLinears,
                         ::testing::Values(SharedInputCase{{768, 128, 128}, 768, -1},
                                           SharedInputCase{{100, 36, 36}, 96, -1},
                                           SharedInputCase{{64, 48, 24}, 64, 2}));

// ---- classifier -----------------------------------------------------------------------------------

struct ClassifierCase {
  int64_t V, C, chunk_rows;
};

void PrintTo(const ClassifierCase& c, std::ostream* os) { *os << "V" << c.V << "_C" << c.C << "_chunk" << c.chunk_rows; }

class FusedClassifier : public ::testing::TestWithParam<ClassifierCase> {};

TEST_P(FusedClassifier, MatchesCrossEntropyOnFp32Logits) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const ClassifierCase p = GetParam();
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(11);
  const int64_t B = 3, T = 45;
  const auto x0 = torch::randn({B, T, p.C}, dev);
  const auto w0 = torch::randn({p.V, p.C}, dev) * 0.2;
  auto targets = torch::randint(p.V, {B, T}, dev.dtype(torch::kLong));
  targets.index_put_({0, torch::indexing::Slice(0, 7)}, -1);  // ignored positions

  auto run = [&](bool fused, double scale) {
    auto x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    AutocastGuard autocast(true);
    torch::Tensor loss;
    if (fused) {
      loss = fused::classifier_loss(x, w, targets, p.chunk_rows);
    } else {
      auto logits = F::linear(x, w).to(torch::kFloat32);  // what GPT::forward computes without the kernels
      loss = F::cross_entropy(logits.view({-1, p.V}), targets.view({-1}), F::CrossEntropyFuncOptions().ignore_index(-1));
    }
    (loss * scale).backward();  // a grad_accum-style scale reaches both gradients
    return std::make_tuple(loss.detach(), x.grad(), w.grad());
  };
  for (double scale : {1.0, 0.25}) {
    auto [loss_ref, dx_ref, dw_ref] = run(false, scale);
    auto [loss, dx, dw] = run(true, scale);
    EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
    EXPECT_LT(rel_err(loss, loss_ref), 1e-4) << "loss " << loss.item<double>() << " vs " << loss_ref.item<double>();
    EXPECT_LT(rel_err(dx, dx_ref), 1e-2);
    EXPECT_LT(rel_err(dw, dw_ref), 1e-2);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, FusedClassifier,
                         ::testing::Values(ClassifierCase{512, 64, 0}, ClassifierCase{1003, 72, 0},
                                           ClassifierCase{1003, 72, 40}, ClassifierCase{50304, 96, 64}));

TEST(FusedClassifier, EvaluationWithoutGradientGivesTheSameLoss) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  auto x = torch::randn({4, 33, 48}, dev).requires_grad_(true);
  auto w = (torch::randn({260, 48}, dev) * 0.2).requires_grad_(true);
  auto targets = torch::randint(260, {4, 33}, dev.dtype(torch::kLong));
  AutocastGuard autocast(true);
  const double with_grad = fused::classifier_loss(x, w, targets).item<double>();
  torch::NoGradGuard no_grad;
  EXPECT_DOUBLE_EQ(fused::classifier_loss(x, w, targets).item<double>(), with_grad);
}

TEST(FusedClassifier, TargetOutsideTheVocabularyGivesNaN) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  auto x = torch::randn({2, 5, 16}, dev);
  auto w = torch::randn({40, 16}, dev);
  auto targets = torch::randint(40, {2, 5}, dev.dtype(torch::kLong));
  targets.index_put_({1, 3}, 40);
  AutocastGuard autocast(true);
  EXPECT_TRUE(std::isnan(fused::classifier_loss(x, w, targets).item<double>()));
}

// The multi-tensor cast: 61 parameters (two launches of 48 and 13), sizes that are and are not
// multiples of 8, each copy bit-identical to Tensor::to(kBFloat16); a non-contiguous one, a bf16
// one and a CPU one are left alone. The fused ops read the copies while the scope lives: a linear
// gives the same bits inside it and out, and reads the copy (a copy overwritten shows in the output).
TEST(FusedBf16Weights, CopiesEqualCastsAndTheOpsReadThem) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(23);
  std::vector<torch::Tensor> params;
  for (int64_t i = 0; i < 61; ++i) params.push_back(torch::randn({i % 5 + 1, 97 * (i % 3) + 8 * i + 3}, dev));
  params.push_back(torch::randn({1000, 1000}, dev));  // several blocks of one tensor
  const auto strided = torch::randn({16, 32}, dev).t(), half = torch::randn({8}, dev.dtype(torch::kBFloat16));
  const auto host = torch::randn({8});
  auto all = params;
  all.insert(all.end(), {strided, half, host});
  auto x = torch::randn({5, 7, 48}, dev), w = torch::randn({24, 48}, dev), b = torch::randn({24}, dev);
  all.insert(all.end(), {w, b});
  AutocastGuard autocast(true);
  const auto outside = fused::linear(x, w, b);
  fused::Bf16Weights copies(all);
  for (const auto& p : params) {
    const auto copy = copies.copy_of(p);
    ASSERT_TRUE(copy.defined());
    EXPECT_TRUE(torch::equal(copy, p.to(torch::kBFloat16))) << p.sizes();
  }
  EXPECT_FALSE(copies.copy_of(strided).defined());
  EXPECT_FALSE(copies.copy_of(half).defined());
  EXPECT_FALSE(copies.copy_of(host).defined());
  EXPECT_TRUE(torch::equal(fused::linear(x, w, b), outside));
  copies.copy_of(w).zero_();
  copies.copy_of(b).zero_();
  EXPECT_EQ(fused::linear(x, w, b).abs().max().item<double>(), 0.0) << "the op should read the scope's copy";
}

// The tied embedding and classifier with one gradient buffer against the same two ops with autograd
// adding their gradients (ATen's embedding backward), and against the composite on fp32 logits.
// Skewed ids: one token takes about 40 % of the positions, so its run of sorted rows crosses several
// of the embedding kernel's 32-row segments; C = 50 takes the kernel's scalar path. The loss is
// scaled as grad_accum does, and a second backward accumulates onto .grad.
struct TiedCase {
  int64_t V, C, B, T;
};
class FusedTiedEmbedding : public ::testing::TestWithParam<TiedCase> {};

TEST_P(FusedTiedEmbedding, GradientEqualsEmbeddingPlusClassifier) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const TiedCase p = GetParam();
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(17);
  const auto w0 = torch::randn({p.V, p.C}, dev) * 0.2;
  auto idx = torch::randint(p.V, {p.B, p.T}, dev.dtype(torch::kLong));
  idx.masked_fill_(torch::rand({p.B, p.T}, dev) < 0.4, 5 % p.V);
  auto targets = torch::randint(p.V, {p.B, p.T}, dev.dtype(torch::kLong));
  targets.index_put_({0, torch::indexing::Slice(0, 3)}, -1);

  enum Path { kTied, kUntied, kComposite };
  auto grad_of = [&](Path path, int backwards) {
    auto w = w0.clone().requires_grad_(true);
    AutocastGuard autocast(true);
    for (int k = 0; k < backwards; ++k) {
      const torch::Tensor tied = path == kTied ? fused::tied_gradient(w) : torch::Tensor();
      auto h = path == kTied ? fused::tied_embedding(idx, w, tied) : F::embedding(idx, w);
      auto x = torch::tanh(h) * 1.5;  // [B, T, C] fp32: the embedding's rows reach the classifier
      torch::Tensor loss;
      if (path == kComposite) {
        auto logits = F::linear(x, w).to(torch::kFloat32);
        loss = F::cross_entropy(logits.view({-1, p.V}), targets.view({-1}), F::CrossEntropyFuncOptions().ignore_index(-1));
      } else {
        loss = fused::classifier_loss(x, w, targets, /*chunk_rows=*/0, tied);
      }
      (loss * 0.25).backward();
    }
    return w.grad().clone();
  };
  const auto tied = grad_of(kTied, 1), untied = grad_of(kUntied, 1), composite = grad_of(kComposite, 1);
  EXPECT_EQ(tied.scalar_type(), torch::kFloat32);
  EXPECT_LT(rel_err(tied, untied), 1e-5);
  EXPECT_LT(rel_err(tied, composite), 1e-2);
  EXPECT_TRUE(torch::equal(tied, grad_of(kTied, 1))) << "the tied gradient should be deterministic";
  EXPECT_LT(rel_err(grad_of(kTied, 2), grad_of(kUntied, 2)), 1e-5) << "two backwards accumulate";
}

INSTANTIATE_TEST_SUITE_P(Shapes, FusedTiedEmbedding,
                         ::testing::Values(TiedCase{1003, 72, 4, 67}, TiedCase{257, 50, 3, 45}, TiedCase{64, 16, 1, 9},
                                           TiedCase{50304, 96, 2, 300}));

// ---- mechanism 1's prefix mean ----------------------------------------------------------------------

struct PrefixMeanCase {
  int64_t B, T, G;
  bool bf16;  // z bf16 (as under autocast), else fp32
};

void PrintTo(const PrefixMeanCase& c, std::ostream* os) {
  *os << "B" << c.B << "_T" << c.T << "_G" << c.G << (c.bf16 ? "_bf16" : "_fp32");
}

// MlpImpl::head_gate's formula without the kernel: fp32 sums over time over the count, in z's dtype.
torch::Tensor reference_prefix_mean(const torch::Tensor& z) {
  const int64_t T = z.size(1);
  auto counts = torch::arange(1, T + 1, z.options().dtype(torch::kFloat32));
  return (z.to(torch::kFloat32).cumsum(1) / counts.view({1, T, 1})).to(z.scalar_type());
}

// The op against the formula it replaces and against the exact sums in fp64, forward and backward:
// out[t] = Σ_{s ≤ t} z[s] / (t + 1) and dz[s] = Σ_{t ≥ s} dout[t] / (t + 1).
void expect_prefix_mean_matches(const torch::Tensor& z0, const torch::Tensor& g) {
  const int64_t T = z0.size(1);
  auto run = [&](bool fused) {
    auto z = z0.detach().requires_grad_(true);  // z0's own strides and offset, which the op must take
    auto out = fused ? fused::prefix_mean(z) : reference_prefix_mean(z);
    (out.to(torch::kFloat32) * g).sum().backward();
    return std::make_pair(out.detach(), z.grad().clone());
  };
  auto [out_ref, dz_ref] = run(false);
  auto [out, dz] = run(true);
  const bool bf16 = z0.scalar_type() == torch::kBFloat16;
  EXPECT_EQ(out.scalar_type(), z0.scalar_type());
  EXPECT_EQ(dz.scalar_type(), z0.scalar_type());
  ASSERT_EQ(out.sizes(), z0.sizes());
  ASSERT_EQ(dz.sizes(), z0.sizes());
  // The gradient reaching out is g in z's dtype (the backward of out.to(fp32)).
  const auto dev64 = torch::TensorOptions().dtype(torch::kFloat64).device(z0.device());
  const auto counts = torch::arange(1, T + 1, dev64).view({1, T, 1});
  const auto out64 = z0.to(torch::kFloat64).cumsum(1) / counts;
  const auto dz64 = (g.to(z0.scalar_type()).to(torch::kFloat64) / counts).flip({1}).cumsum(1).flip({1});
  // fp32: the fp32 sums' rounding only. bf16: the results rounded to bf16 (2^-9 relative at most).
  const double tol = bf16 ? 5e-3 : 1e-5;
  EXPECT_LT(rel_err(out, out64), tol);
  EXPECT_LT(rel_err(dz, dz64), tol);
  EXPECT_LT(rel_err(out, out_ref), tol);
  EXPECT_LT(rel_err(dz, dz_ref), tol);
}

class FusedPrefixMean : public ::testing::TestWithParam<PrefixMeanCase> {};

TEST_P(FusedPrefixMean, MatchesTheCumsumFormula) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const PrefixMeanCase p = GetParam();
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(29);
  // A nonzero mean, as a projection's outputs have: the prefix sums grow with t, and their rounding.
  const auto z0 = (torch::randn({p.B, p.T, p.G}, dev) + 0.5).to(p.bf16 ? torch::kBFloat16 : torch::kFloat32);
  expect_prefix_mean_matches(z0, torch::randn({p.B, p.T, p.G}, dev));
}

// T: one row; 37, not a multiple of any block's rows; 1024, one whole tile (GPT-2); 1500 and 2100, two
// and three tiles with a carry. G: 64, the study's (8-wide vectors); 16 and 8, the demo's and one
// vector a row; 5, odd (scalar columns); 4, the tiny models'.
INSTANTIATE_TEST_SUITE_P(
    Shapes, FusedPrefixMean,
    ::testing::Values(PrefixMeanCase{3, 1, 64, true}, PrefixMeanCase{3, 37, 64, true}, PrefixMeanCase{3, 37, 64, false},
                      PrefixMeanCase{16, 1024, 64, true}, PrefixMeanCase{3, 1024, 64, false},
                      PrefixMeanCase{3, 1500, 64, true}, PrefixMeanCase{3, 1500, 64, false},
                      PrefixMeanCase{2, 2100, 16, true}, PrefixMeanCase{2, 300, 8, false},
                      PrefixMeanCase{3, 1, 5, false}, PrefixMeanCase{3, 37, 5, true},
                      PrefixMeanCase{2, 1500, 5, true}, PrefixMeanCase{2, 2100, 5, false},
                      PrefixMeanCase{4, 37, 4, false}));

// A transposed z (made contiguous inside) and a contiguous one whose data is not 16-byte aligned
// (the scalar path at G = 64).
TEST(FusedPrefixMean, TakesStridedAndUnalignedInputs) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(37);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const auto transposed = torch::randn({2, 64, 45}, dev).to(dtype).transpose(1, 2);  // [2, 45, 64]
    ASSERT_FALSE(transposed.is_contiguous());
    expect_prefix_mean_matches(transposed, torch::randn({2, 45, 64}, dev));
    const auto unaligned = torch::randn({2 * 45 * 64 + 1}, dev).to(dtype).narrow(0, 1, 2 * 45 * 64).view({2, 45, 64});
    ASSERT_TRUE(unaligned.is_contiguous());
    expect_prefix_mean_matches(unaligned, torch::randn({2, 45, 64}, dev));
  }
}

// MlpImpl::head_gate with the kernel (no cache) against its cumsum path: the gates and the gradients
// of the hidden state and of gate_proj and gate_to_heads, at the study's G and an odd one. gate_proj
// is ATen's linear either way (the Mlp alone is not switched by GPT::set_fused_kernels), so only the
// prefix mean differs.
TEST(FusedPrefixMean, HeadGateMatchesTheReferencePath) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  for (int64_t G : {64, 5}) {
    for (bool bf16 : {false, true}) {
      auto config = tiny();
      config.n_embd = 64;
      config.n_head = 4;
      config.mlp_gate.enabled = true;
      config.mlp_gate.gate_dim = G;
      torch::manual_seed(31);
      Mlp mlp(config, /*layer=*/0);
      mlp->to(torch::kCUDA);
      ASSERT_TRUE(mlp->produces_head_gate());
      const int64_t B = 3, T = 45;
      const auto hidden0 = torch::randn({B, T, int64_t(config.mlp_hidden())}, dev);
      const auto g = torch::randn({B, config.n_head, T, 1}, dev);
      auto run = [&](bool fused) {
        mlp->set_fused_kernels(fused);
        mlp->zero_grad();
        auto hidden = hidden0.clone().requires_grad_(true);
        AutocastGuard autocast(bf16);
        auto gate = mlp->head_gate(hidden);  // [B, H, T, 1]
        (gate.to(torch::kFloat32) * g).sum().backward();
        std::vector<torch::Tensor> got{gate.detach(), hidden.grad()};
        for (const auto& param : mlp->parameters())
          if (param.grad().defined()) got.push_back(param.grad().clone());
        return got;
      };
      const auto ref = run(false), got = run(true);
      ASSERT_EQ(got.size(), ref.size());
      ASSERT_EQ(got.size(), 6u) << "the gate, dhidden and gate_proj's and gate_to_heads' weight and bias";
      EXPECT_EQ(got[0].scalar_type(), ref[0].scalar_type());
      const double tol = bf16 ? 1e-2 : 1e-5;
      for (size_t i = 0; i < got.size(); ++i) EXPECT_LT(rel_err(got[i], ref[i]), tol) << "G " << G << " tensor " << i;
    }
  }
}

// ---- mechanism 2's Ā·H with K entries a row ---------------------------------------------------------

struct MixCase {
  int64_t B, T, K, M;
};

// Keys as the statistics op gives them: per row i, K distinct positions ≤ i, largest first by some
// score, and −1 for the entries a short row cannot fill. [B, T, K] int32
torch::Tensor causal_keys(int64_t B, int64_t T, int64_t K, const torch::TensorOptions& dev) {
  auto scores = torch::rand({B, T, T}, dev);
  auto i = torch::arange(T, dev.dtype(torch::kLong)).unsqueeze(1), j = torch::arange(T, dev.dtype(torch::kLong));
  scores = scores.masked_fill(j.unsqueeze(0) > i, -1.0);
  auto [best, keys] = scores.topk(std::min(K, T), -1);
  keys = keys.masked_fill(best < 0, -1);
  if (K > T) keys = torch::cat({keys, torch::full({B, T, K - T}, -1, keys.options())}, -1);
  return keys.to(torch::kInt);
}

// The op against the dense product it replaces (the pairs scattered into an fp32 Ā, then Ā·H), forward
// and the gradients of the values and of H, and two runs bit for bit. M: 64, GPT-2's 2048, 24 (three
// vectors a row); K past T (empty entries).
TEST(FusedMixRows, MatchesTheDenseProduct) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  for (const MixCase c : {MixCase{2, 45, 8, 64}, MixCase{3, 130, 5, 2048}, MixCase{1, 7, 16, 24}}) {
    SCOPED_TRACE("B " + std::to_string(c.B) + " T " + std::to_string(c.T) + " K " + std::to_string(c.K) + " M " +
                 std::to_string(c.M));
    torch::manual_seed(17);
    const auto keys = causal_keys(c.B, c.T, c.K, dev);
    const auto values0 = torch::rand({c.B, c.T, c.K}, dev) * keys.ge(0);  // 0 at the empty entries
    const auto h0 = torch::randn({c.B, c.T, c.M}, dev).to(torch::kBFloat16);
    const auto g = torch::randn({c.B, c.T, c.M}, dev);
    ASSERT_TRUE(fused::supports_mix_rows(h0, keys));
    auto run = [&](bool fused) {
      auto values = values0.clone().requires_grad_(true);
      auto h = h0.clone().requires_grad_(true);
      torch::Tensor out;
      if (fused) {
        out = fused::mix_rows(values, keys, h);
      } else {
        auto dense = torch::zeros({c.B, c.T, c.T}, dev).scatter_add(-1, keys.clamp_min(0).to(torch::kLong), values);
        out = torch::matmul(dense, h.to(torch::kFloat32));
      }
      (out.to(torch::kFloat32) * g).sum().backward();
      return std::vector<torch::Tensor>{out.detach(), values.grad(), h.grad()};
    };
    const auto got = run(true), again = run(true);
    auto want = run(false);
    // The dense reference scatters an empty entry to key 0 with weight 0: its "gradient" there is
    // dout_i·h_0, which belongs to no entry. The op gives 0 (checked below).
    want[1] = want[1] * keys.ge(0);
    EXPECT_EQ(got[0].scalar_type(), torch::kBFloat16);
    // bf16 output, bf16 dout and a bf16 Ā for H's gradient: a few 2⁻⁹ roundings.
    EXPECT_LT(rel_err(got[0], want[0]), 5e-3) << "out";
    EXPECT_LT(rel_err(got[1], want[1]), 1e-2) << "values' gradient";
    EXPECT_LT(rel_err(got[2], want[2]), 1e-2) << "h's gradient";
    EXPECT_TRUE(got[1].masked_select(keys.lt(0)).eq(0).all().item<bool>()) << "an empty entry's gradient";
    for (size_t n = 0; n < got.size(); ++n) EXPECT_TRUE(torch::equal(got[n], again[n])) << n;
  }
}

// ---- the model --------------------------------------------------------------------------------------

TEST(FusedModel, CudaGptBaselineAndEveryMechanismMatchTheReferencePath) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  auto baseline = tiny();
  baseline.n_embd = 64;
  baseline.n_head = 4;
  expect_model_paths_agree(baseline, torch::kCUDA, /*bf16=*/false, 1e-5);
  expect_model_paths_agree(baseline, torch::kCUDA, /*bf16=*/true, 2e-3);
  auto every = all_on();
  every.n_embd = 64;
  every.n_head = 4;
  every.mla.latent_dim = 16;
  every.mlp_latent.latent_dim = 16;
  expect_model_paths_agree(every, torch::kCUDA, /*bf16=*/false, 1e-5);
  // Under bf16 the two paths round differently (c_fc's GELU in cuBLASLt's epilogue from the fp32
  // accumulator, ATen's from the bf16 pre-activation), and a different rounding can flip a top-k
  // choice of mechanism 2 or RA-CT, which moves gradients discontinuously. Compare the smooth modes
  // there; fp32 above checks the top-k ones exactly.
  every.mlp_cross.sparsify = "none";
  every.ra_ct.mode = "entropy";
  expect_model_paths_agree(every, torch::kCUDA, /*bf16=*/true, 2e-3);
}

// Mechanism 1 alone at the study's gate width and a T that is not a multiple of 8 or 16: the prefix
// mean on its 8-wide kernel (the test above, every mechanism at G = 4, takes its scalar one).
TEST(FusedModel, CudaGptMechanism1MatchesTheReferencePath) {
  if (!have_kernels()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU";
  auto config = tiny();
  config.n_embd = 64;
  config.n_head = 4;
  config.block_size = 45;
  config.mlp_gate.enabled = true;
  config.mlp_gate.gate_dim = 64;
  expect_model_paths_agree(config, torch::kCUDA, /*bf16=*/false, 1e-5);
  expect_model_paths_agree(config, torch::kCUDA, /*bf16=*/true, 2e-3);
}

TEST(FusedModel, CpuIgnoresTheSwitchBitForBit) {
  // The CPU build has no kernels, and a CUDA build on CPU tensors must not take them either.
  torch::manual_seed(5);
  GPT model(all_on());
  auto idx = torch::randint(37, {2, 16}, torch::kLong), targets = torch::randint(37, {2, 16}, torch::kLong);
  const double off = model->forward(idx, targets).loss.item<double>();
  model->set_fused_kernels(true);
  auto out = model->forward(idx, targets);
  EXPECT_EQ(out.loss.item<double>(), off);
  EXPECT_TRUE(out.logits.defined());
}

}  // namespace
}  // namespace ratio::model

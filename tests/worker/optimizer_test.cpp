// AdamW + SPAM, magnitude pruning and the checkpoint file, on small CPU tensors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include <unistd.h>

#include "worker/checkpoint.h"
#include "worker/optimizer.h"

namespace fs = std::filesystem;
using namespace ratio;
using namespace ratio::worker;

namespace {

TrainConfig plain_adamw() {
  TrainConfig t;
  t.spam.enabled = false;
  t.grad_clip = 0;
  t.weight_decay = 0.1;
  return t;
}

// A weight matrix (decayed) and a bias (not decayed) with a fixed quadratic loss.
struct Problem {
  torch::Tensor w = torch::randn({4, 3}, torch::kFloat64).set_requires_grad(true);
  torch::Tensor b = torch::randn({4}, torch::kFloat64).set_requires_grad(true);
  void backward(int step) const {
    auto x = torch::linspace(-1, 1, 3, torch::kFloat64) * (1 + step);
    ((torch::matmul(w, x) + b).pow(2).sum()).backward();
  }
};

}  // namespace

TEST(SpamAdamW, WithoutSpamEqualsTorchAdamW) {
  torch::manual_seed(0);
  Problem ours, ref;
  ref.w = ours.w.detach().clone().set_requires_grad(true);
  ref.b = ours.b.detach().clone().set_requires_grad(true);
  SpamAdamW opt({{"w", ours.w}, {"b", ours.b}}, plain_adamw());
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{ref.w},
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).weight_decay(0.1)));
  groups.emplace_back(std::vector<torch::Tensor>{ref.b},
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).weight_decay(0.0)));
  torch::optim::AdamW torch_opt(groups);
  for (int step = 0; step < 20; ++step) {
    ours.backward(step);
    opt.step(1e-2);
    opt.zero_grad();
    ref.backward(step);
    torch_opt.step();
    torch_opt.zero_grad();
  }
  EXPECT_TRUE(torch::allclose(ours.w, ref.w, 1e-10, 1e-12));
  EXPECT_TRUE(torch::allclose(ours.b, ref.b, 1e-10, 1e-12));
}

TEST(SpamAdamW, ReturnsPreClipNormAndClipsGlobally) {
  auto p = torch::zeros({2}, torch::kFloat64).set_requires_grad(true);
  TrainConfig t = plain_adamw();
  t.grad_clip = 1.0;
  SpamAdamW opt({{"p", p}}, t);
  p.mutable_grad() = torch::tensor({3.0, 4.0}, torch::kFloat64);
  EXPECT_NEAR(opt.step(1e-3).item<double>(), 5.0, 1e-6);
  // After clipping to norm 1 the first moment holds (1 - b1) * g / 5.
  auto m = opt.state()[0].second;
  EXPECT_NEAR(m[0].item<double>(), 0.1 * 0.6, 1e-6);
  EXPECT_NEAR(m[1].item<double>(), 0.1 * 0.8, 1e-6);
}

TEST(SpamAdamW, ClipsEntriesAboveSqrtThetaV) {
  auto p = torch::zeros({3}, torch::kFloat64).set_requires_grad(true);
  TrainConfig t = plain_adamw();
  t.spam.enabled = true;
  t.spam.theta = 4.0;
  t.spam.reset_interval = 0;
  SpamAdamW opt({{"p", p}}, t);
  p.mutable_grad() = torch::tensor({1.0, 1.0, 0.0}, torch::kFloat64);
  opt.step(0.0);  // v = 0.05 * g^2 = {0.05, 0.05, 0}
  p.mutable_grad() = torch::tensor({-100.0, 0.1, 7.0}, torch::kFloat64);
  opt.step(0.0);
  // Entry 0 clipped to -sqrt(4 * 0.05); entry 1 below the bound; entry 2 had v = 0 and is left alone.
  auto v = opt.state()[1].second;
  const double bound = std::sqrt(4 * 0.05);
  EXPECT_NEAR(v[0].item<double>(), 0.95 * 0.05 + 0.05 * bound * bound, 1e-9);
  EXPECT_NEAR(v[1].item<double>(), 0.95 * 0.05 + 0.05 * 0.01, 1e-9);
  EXPECT_NEAR(v[2].item<double>(), 0.05 * 49.0, 1e-9);
}

TEST(SpamAdamW, SpikeSoftlyResetsMoments) {
  auto p = torch::zeros({1}, torch::kFloat64).set_requires_grad(true);
  TrainConfig t = plain_adamw();
  t.spam.enabled = true;
  t.spam.theta = 1e12;  // no element clipping in this test
  t.spam.spike_z = 2.0;
  SpamAdamW opt({{"p", p}}, t);
  for (int i = 0; i < 12; ++i) {  // steady norms 1.0 / 1.1 build the history
    p.mutable_grad() = torch::full({1}, i % 2 ? 1.1 : 1.0, torch::kFloat64);
    opt.step(0.0);
  }
  EXPECT_EQ(opt.spikes().item<double>(), 0.0);
  const double m_before = opt.state()[0].second.item<double>(), v_before = opt.state()[1].second.item<double>();
  p.mutable_grad() = torch::full({1}, 10.0, torch::kFloat64);  // z far above 2
  opt.step(0.0);
  EXPECT_EQ(opt.spikes().item<double>(), 1.0);
  // The spike factors are fp32 device scalars (like the norm history): compare to fp32 precision.
  EXPECT_NEAR(opt.state()[0].second.item<double>(), 0.9 * (0.5 * m_before) + 0.1 * 10.0, 1e-6);
  EXPECT_NEAR(opt.state()[1].second.item<double>(), 0.95 * (0.9 * v_before) + 0.05 * 100.0, 1e-6);
}

TEST(SpamAdamW, ResetZeroesMomentsAndRestartsBiasCorrection) {
  auto p = torch::zeros({1}, torch::kFloat64).set_requires_grad(true);
  TrainConfig t = plain_adamw();
  t.weight_decay = 0;
  SpamAdamW opt({{"p", p}}, t);
  for (int i = 0; i < 5; ++i) {
    p.mutable_grad() = torch::ones({1}, torch::kFloat64);
    opt.step(0.1);
  }
  opt.reset();
  EXPECT_EQ(opt.steps_since_reset(), 0);
  EXPECT_EQ(opt.state()[0].second.item<double>(), 0.0);
  const double before = p.item<double>();
  p.mutable_grad() = torch::ones({1}, torch::kFloat64);
  opt.step(0.1);
  // First step after a reset: bias-corrected m/sqrt(v) = 1, so the parameter moves by exactly lr.
  EXPECT_NEAR(before - p.item<double>(), 0.1, 1e-6);
}

// On CUDA with LibTorch 2.x the AdamW update runs in PyTorch's fused kernel, elsewhere in _foreach
// ops: both must give the same parameters (to fp32 rounding of the norm statistics, which both keep in fp32), with global clipping, SPAM's element clipping, a spike
// and a periodic reset all exercised. (Skipped without a GPU; CI has none, the device run has one.)
TEST(SpamAdamW, CudaUpdateEqualsCpuUpdate) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs a CUDA device";
  TrainConfig t = plain_adamw();
  t.grad_clip = 1.0;
  t.spam.enabled = true;
  t.spam.theta = 5.0;
  t.spam.spike_z = 2.0;
  torch::manual_seed(0);
  auto w_cpu = torch::randn({64, 48}, torch::kFloat64).set_requires_grad(true);
  auto b_cpu = torch::randn({64}, torch::kFloat64).set_requires_grad(true);
  auto w_gpu = w_cpu.detach().to(torch::kCUDA).set_requires_grad(true);
  auto b_gpu = b_cpu.detach().to(torch::kCUDA).set_requires_grad(true);
  SpamAdamW on_cpu({{"w", w_cpu}, {"b", b_cpu}}, t), on_gpu({{"w", w_gpu}, {"b", b_gpu}}, t);
  for (int step = 0; step < 40; ++step) {
    const double scale = step == 25 ? 40.0 : 1.0;  // one spike in the gradient norm
    auto gw = torch::randn({64, 48}, torch::kFloat64) * scale, gb = torch::randn({64}, torch::kFloat64) * scale;
    w_cpu.mutable_grad() = gw.clone();
    b_cpu.mutable_grad() = gb.clone();
    w_gpu.mutable_grad() = gw.to(torch::kCUDA);
    b_gpu.mutable_grad() = gb.to(torch::kCUDA);
    if (step == 30) {
      on_cpu.reset();
      on_gpu.reset();
    }
    const double norm_cpu = on_cpu.step(1e-2).item<double>(), norm_gpu = on_gpu.step(1e-2).item<double>();
    ASSERT_NEAR(norm_cpu, norm_gpu, 1e-6 * norm_cpu) << "step " << step;
    // Stop at the first step that differs, naming the tensor and by how much.
    const auto state_cpu = on_cpu.state(), state_gpu = on_gpu.state();
    ASSERT_TRUE(torch::allclose(w_gpu.cpu(), w_cpu, 1e-6, 1e-9))
        << "step " << step << ": w differs by " << (w_gpu.cpu() - w_cpu).abs().max().item<double>();
    for (size_t i = 0; i < state_cpu.size(); ++i)
      ASSERT_TRUE(torch::allclose(state_gpu[i].second.cpu(), state_cpu[i].second, 1e-6, 1e-12))
          << "step " << step << ": " << state_cpu[i].first << " differs by "
          << (state_gpu[i].second.cpu() - state_cpu[i].second).abs().max().item<double>() << " (max |value| "
          << state_cpu[i].second.abs().max().item<double>() << ")";
  }
  EXPECT_EQ(on_cpu.spikes().item<double>(), 1.0);
  EXPECT_EQ(on_gpu.spikes().item<double>(), 1.0);
  EXPECT_TRUE(torch::allclose(b_gpu.cpu(), b_cpu, 1e-6, 1e-9));
}

// model/kernels/adamw.cu (the whole SPAM-AdamW step in one pass, scalars on the device) against the
// _foreach path it replaces, on fp32 CUDA tensors the way the worker holds GPT-2's parameters: many
// tensors (more than one launch's list), sizes that are not multiples of 4, a misaligned view, global
// clipping, SPAM's element clipping, spikes and a periodic reset. (Skipped without the kernels.)
TEST(SpamAdamW, KernelEqualsForeachOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs a CUDA device";
  TrainConfig t;
  t.grad_clip = 1.0;
  t.spam.theta = 5.0;
  t.spam.spike_z = 1.5;
  t.weight_decay = 0.1;
  torch::manual_seed(0);
  const auto cuda = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kFloat32);
  std::vector<std::vector<int64_t>> shapes;
  for (int i = 0; i < 40; ++i) shapes.push_back(i % 3 == 0 ? std::vector<int64_t>{37, 5 + i} : std::vector<int64_t>{96 + i});
  NamedTensors reference, fused;
  std::vector<torch::Tensor> grads;
  for (size_t i = 0; i < shapes.size(); ++i) {
    auto p = torch::randn(shapes[i], cuda);
    reference.emplace_back("p" + std::to_string(i), p.clone().set_requires_grad(true));
    fused.emplace_back("p" + std::to_string(i), p.clone().set_requires_grad(true));
  }
  // A view one float into a buffer: 4-byte but not 16-byte aligned.
  auto backing = torch::randn({1 + 64 * 3}, cuda);
  reference.emplace_back("view", backing.narrow(0, 1, 64 * 3).view({64, 3}).clone().set_requires_grad(true));
  fused.emplace_back("view", backing.narrow(0, 1, 64 * 3).view({64, 3}).detach().requires_grad_(true));
  SpamAdamW on_foreach(reference, t, /*kernel=*/false), on_kernel(fused, t, /*kernel=*/true);
  if (!on_kernel.uses_kernel()) GTEST_SKIP() << "this build has no CUDA kernels";
  ASSERT_FALSE(on_foreach.uses_kernel());
  for (int step = 0; step < 40; ++step) {
    const double scale = step == 20 || step == 33 ? 30.0 : 1.0 + 0.05 * step;  // two spikes
    for (size_t i = 0; i < reference.size(); ++i) {
      auto g = torch::randn(reference[i].second.sizes(), cuda) * scale;
      reference[i].second.mutable_grad() = g.clone();
      fused[i].second.mutable_grad() = g.clone();
    }
    if (step == 28) {
      on_foreach.reset();
      on_kernel.reset();
    }
    const double lr = 1e-2 * (1 + step % 3);
    const double norm_ref = on_foreach.step(lr).item<double>(), norm_kernel = on_kernel.step(lr).item<double>();
    ASSERT_NEAR(norm_kernel, norm_ref, 1e-5 * norm_ref) << "step " << step;
    const auto state_ref = on_foreach.state(), state_kernel = on_kernel.state();
    for (size_t i = 0; i < reference.size(); ++i)
      ASSERT_TRUE(torch::allclose(fused[i].second, reference[i].second, 1e-5, 1e-6))
          << "step " << step << ": " << reference[i].first << " differs by "
          << (fused[i].second - reference[i].second).abs().max().item<double>();
    for (size_t i = 0; i < state_ref.size(); ++i)
      ASSERT_TRUE(torch::allclose(state_kernel[i].second, state_ref[i].second, 1e-4, 1e-7))
          << "step " << step << ": " << state_ref[i].first << " differs by "
          << (state_kernel[i].second - state_ref[i].second).abs().max().item<double>();
  }
  EXPECT_EQ(on_kernel.spikes().item<double>(), on_foreach.spikes().item<double>());
  EXPECT_GE(on_kernel.spikes().item<double>(), 2.0);
  EXPECT_EQ(on_kernel.steps_since_reset(), on_foreach.steps_since_reset());
  EXPECT_EQ(on_kernel.norms_seen(), on_foreach.norms_seen());
}

TEST(MagnitudePruner, KeepsLargestLinearWeightsOnly) {
  auto w = torch::arange(1, 9, torch::kFloat32).reshape({2, 4}).set_requires_grad(true);  // |w| = 1..8
  auto emb = torch::ones({3, 2}).set_requires_grad(true);
  auto bias = torch::ones({4}).set_requires_grad(true);
  MagnitudePruner pruner({{"h.0.mlp.c_fc.weight", w}, {"wte.weight", emb}, {"h.0.mlp.c_fc.bias", bias}});
  pruner.update_masks(0.5);
  EXPECT_TRUE(torch::equal(w, torch::tensor({0.f, 0.f, 0.f, 0.f, 5.f, 6.f, 7.f, 8.f}).reshape({2, 4})));
  EXPECT_EQ(pruner.pruned(), 4);
  EXPECT_EQ(emb.sum().item<float>(), 6.f);  // embeddings and biases are not pruned
  {
    torch::NoGradGuard no_grad;
    w.fill_(1.0);  // an optimizer step revives pruned weights...
  }
  pruner.apply();  // ...and the masks zero them again
  EXPECT_EQ(w.sum().item<float>(), 4.f);
  ASSERT_EQ(pruner.state().size(), 1u);
  EXPECT_EQ(pruner.state()[0].first, "prune_mask/h.0.mlp.c_fc.weight");
}

TEST(Checkpoint, RoundTripAndMismatches) {
  const std::string path = (fs::temp_directory_path() / ("ratio_ckpt_test_" + std::to_string(::getpid()) + ".bin")).string();
  auto a = torch::randn({3, 5});
  auto b = torch::randint(0, 100, {7}, torch::kInt64);
  auto c = torch::rand({4}) > 0.5;
  auto d = torch::randn({2, 2}).to(torch::kBFloat16);
  save_checkpoint(path, {{"iter", 42}}, {{"a", a}, {"b", b}, {"c", c}, {"d", d}});
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  auto a2 = torch::zeros({3, 5}), b2 = torch::zeros({7}, torch::kInt64), c2 = torch::zeros({4}, torch::kBool),
       d2 = torch::zeros({2, 2}, torch::kBFloat16);
  nlohmann::json meta = load_checkpoint(path, {{"a", a2}, {"b", b2}, {"c", c2}, {"d", d2}});
  EXPECT_EQ(meta["iter"], 42);
  EXPECT_TRUE(torch::equal(a, a2));
  EXPECT_TRUE(torch::equal(b, b2));
  EXPECT_TRUE(torch::equal(c, c2));
  EXPECT_TRUE(torch::equal(d, d2));

  auto wrong_shape = torch::zeros({5, 3});
  EXPECT_THROW(load_checkpoint(path, {{"a", wrong_shape}}), CheckpointError);
  auto missing = torch::zeros({1});
  EXPECT_THROW(load_checkpoint(path, {{"zzz", missing}}), CheckpointError);
  fs::resize_file(path, fs::file_size(path) - 4);
  EXPECT_THROW(load_checkpoint(path, {{"d", d2}}), CheckpointError);
  fs::remove(path);
}

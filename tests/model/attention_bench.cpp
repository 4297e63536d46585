// Attention variants at GPT-2 size on CUDA: one layer's forward + backward in bf16 autocast.
// Not a test (nothing is asserted); built on demand: cmake --build BUILD --target model_attention_bench.

#include <chrono>
#include <iostream>

#include "model/layers.h"
#include "model/torch_compat.h"

using namespace ratio;
using namespace ratio::model;

namespace {

struct Variant {
  const char* name;
  bool mla;
  bool ra;
  int window;
  bool materialised;  // force the T×T path (what RA-CT, mechanism 2 and attention_stats use)
};

double ms_per_step(const Variant& variant, int64_t B, int64_t T) {
  ModelConfig c;  // GPT-2 124M: 12 heads, 768 wide, latent 128
  c.block_size = int(T);
  c.mla.enabled = variant.mla;
  c.ra.enabled = variant.ra;
  c.ra.window = variant.window;
  Attention attn(c, 0);
  attn->to(torch::kCUDA);
  auto a = torch::randn({B, T, c.n_embd}, torch::TensorOptions().device(torch::kCUDA).requires_grad(true));
  auto step = [&] {
    auto out = attn->forward(a, torch::Tensor(), torch::Tensor(), variant.materialised);
    out.y.to(torch::kFloat32).square().mean().backward();
  };
  for (int i = 0; i < 10; ++i) step();  // warm-up (kernel selection)
  torch::cuda::synchronize();
  const int steps = 20;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  torch::cuda::synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / steps;
}

}  // namespace

int main() {
  if (!torch::cuda::is_available()) {
    std::cerr << "model_attention_bench: needs a CUDA device\n";
    return 2;
  }
  compat::set_cuda_autocast(true, torch::kBFloat16);
  const int64_t B = 16, T = 1024;
  const Variant variants[] = {
      {"baseline (SDPA)", false, false, 0, false},
      {"MLA latent 128 (SDPA)", true, false, 0, false},
      {"RA full range (SDPA, [q, a*k].[k, q])", false, true, 0, false},
      {"RA band 64 (SDPA over 2T keys)", false, true, 64, false},
      {"RA band 64 (materialised T x T)", false, true, 64, true},
      {"MLA + RA band 64 (SDPA over 2T keys)", true, true, 64, false},
  };
  std::cout << "one attention layer, forward + backward, B " << B << ", T " << T << ", bf16 autocast\n";
  for (const auto& v : variants) std::cout << "  " << v.name << ": " << ms_per_step(v, B, T) << " ms\n";
  return 0;
}

#pragma once
// Shared pieces of the model tests: tiny configurations and the devices to run on.

#include <ostream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "matrix/job_spec.h"
#include "model/gpt.h"
#include "model/torch_compat.h"

namespace ratio::model::testing {

// 3 layers so a layer is producer only (0), both (1) and consumer only (2).
inline ModelConfig tiny() {
  ModelConfig c;
  c.n_layer = 3;
  c.n_head = 2;
  c.n_embd = 16;
  c.vocab_size = 37;
  c.block_size = 16;
  c.dropout = 0.0;
  c.mla.latent_dim = 8;
  c.ra.window = 3;
  c.ra_ct.k = 3;
  c.mlp_gate.gate_dim = 4;
  c.mlp_cross.k = 3;
  c.mlp_latent.latent_dim = 8;
  return c;
}

// Every mechanism at once (MLA, band RA, RA-CT, mechanisms 1-3, learned ratio).
inline ModelConfig all_on(const std::string& tying = "per_head_scalar") {
  auto c = tiny();
  c.mla.enabled = true;
  c.ra.enabled = true;
  c.ra_ct.enabled = true;
  c.mlp_gate.enabled = true;
  c.mlp_cross.enabled = true;
  c.mlp_latent.enabled = true;
  c.mlp_latent.tying = tying;
  c.learned_ratio.enabled = true;
  return c;
}

// A configuration with the name its parameterised test instance is shown under.
struct Named {
  std::string name;
  ModelConfig config;
};
inline void PrintTo(const Named& v, std::ostream* os) { *os << v.name; }

// Where to run: CPU fp32 always; CUDA with bf16 autocast when a GPU is present.
struct Target {
  torch::Device device;
  bool bf16;
  double tol;  // tolerance for comparisons that are exact in exact arithmetic
  std::string name() const { return bf16 ? "cuda-bf16" : "cpu-fp32"; }
};

inline std::vector<Target> targets() {
  std::vector<Target> t{{torch::kCPU, false, 1e-5}};
  if (torch::cuda::is_available()) t.push_back({torch::kCUDA, true, 3e-2});
  return t;
}

// Turns CUDA autocast on (for a bf16 target) for the lifetime of the guard.
class AutocastGuard {
 public:
  explicit AutocastGuard(bool bf16) : on_(bf16) {
    if (on_) compat::set_cuda_autocast(true, torch::kBFloat16);
  }
  explicit AutocastGuard(const Target& t) : AutocastGuard(t.bf16) {}
  ~AutocastGuard() {
    if (on_) {
      compat::set_cuda_autocast(false);
      compat::clear_autocast_cache();
    }
  }

 private:
  bool on_;
};

inline GPT make_model(const ModelConfig& c, uint64_t seed = 1, torch::Device device = torch::kCPU) {
  torch::manual_seed(seed);
  GPT model(c);
  model->to(device);
  model->eval();
  return model;
}

inline torch::Tensor random_tokens(const ModelConfig& c, int64_t B, int64_t T, uint64_t seed,
                                   torch::Device device = torch::kCPU) {
  torch::manual_seed(seed);
  return torch::randint(c.vocab_size, {B, T}, torch::kLong).to(device);
}

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64).cpu() - b.to(torch::kFloat64).cpu()).abs().max().item<double>();
}

}  // namespace ratio::model::testing

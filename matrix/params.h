#pragma once
// Parameter accounting without LibTorch: the formula of docs/architecture.md. The daemon and
// `ratio expand` use it; model/ reports the same struct from real tensors, and a test pins them equal.

#include <cstdint>
#include <map>
#include <string>

#include "matrix/job_spec.h"

namespace ratio {

struct ParamCounts {
  int64_t total = 0;      // allocated parameters (numel of every trainable tensor)
  int64_t baseline = 0;   // GPT-2 of the same n_layer, n_embd, vocab, block with standard attention and M = 4C
  int64_t added = 0;      // total - baseline (negative when a step removes parameters)
  int64_t effective = 0;  // total at the learned effective width, before pruning (formula: = total unless learned ratio at init)
  // Per category (docs/architecture.md): baseline, mla, ra, ra_ct, mlp_gate, mlp_cross, mlp_latent, ratio.
  // Categories sum to total.
  std::map<std::string, int64_t> by_mechanism;
};

// Counts from the config alone. For a learned ratio, `effective` uses the initial ratio.
ParamCounts param_formula(const ModelConfig& model);

}  // namespace ratio

#pragma once
// KV-cache size of standard attention vs MLA, measured by filling real caches through
// forward_cached and compared with the formula (2 tensors × layers × batch × context × width × bytes).
// The worker exposes it as `ratio-worker kv-report`.

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "matrix/job_spec.h"

namespace ratio::model {

struct KvReportRow {
  int64_t context = 0;
  int64_t standard_bytes_measured = 0;
  int64_t mla_bytes_measured = 0;
  int64_t standard_bytes_formula = 0;
  int64_t mla_bytes_formula = 0;
};

struct KvReportOptions {
  std::vector<int64_t> contexts{1024, 2048, 4096};  // ascending; one fill up to the largest
  torch::ScalarType cache_dtype = torch::kBFloat16;  // fp16 or bf16 (or fp32)
  torch::Device device = torch::kCPU;
  int64_t batch = 1;
  int64_t prefill_chunk = 256;  // tokens per forward_cached call (bounds the [chunk, context] scores)
};

// Formula: standard caches k and v [B, H, t, D] per layer; MLA caches k_lat and v_lat [B, t, L].
int64_t standard_cache_bytes(const ModelConfig& shape, int64_t context, int64_t batch, int64_t element_size);
int64_t mla_cache_bytes(const ModelConfig& shape, int64_t context, int64_t batch, int64_t element_size);

// Builds `shape` (n_layer, n_head, n_embd, vocab; mla.latent_dim for the MLA twin) once with standard
// attention and once with MLA, no other mechanism, block_size = the largest context, and fills each
// cache with random tokens, recording cache.bytes() at every requested context. The model computes in
// fp32 on the CPU (in cache_dtype on CUDA); the cache is stored in cache_dtype either way.
std::vector<KvReportRow> kv_report(const ModelConfig& shape, const KvReportOptions& options = {});

}  // namespace ratio::model

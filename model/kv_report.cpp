#include "model/kv_report.h"

#include <algorithm>
#include <stdexcept>

#include "model/gpt.h"

namespace ratio::model {

int64_t standard_cache_bytes(const ModelConfig& shape, int64_t context, int64_t batch, int64_t element_size) {
  return int64_t(shape.n_layer) * 2 * batch * context * shape.n_head * shape.head_dim() * element_size;
}

int64_t mla_cache_bytes(const ModelConfig& shape, int64_t context, int64_t batch, int64_t element_size) {
  return int64_t(shape.n_layer) * 2 * batch * context * shape.mla.latent_dim * element_size;
}

namespace {

// Cache bytes after each requested context, filling one model's cache in chunks.
std::vector<int64_t> measure(const ModelConfig& config, const KvReportOptions& options) {
  torch::NoGradGuard no_grad;
  GPT model(config);
  model->eval();
  const bool cuda = options.device.is_cuda();
  model->to(options.device, cuda ? options.cache_dtype : torch::kFloat32);
  KVCache cache;
  cache.dtype = options.cache_dtype;
  std::vector<int64_t> bytes;
  int64_t filled = 0;
  for (int64_t target : options.contexts) {
    while (filled < target) {
      const int64_t n = std::min(options.prefill_chunk, target - filled);
      auto idx = torch::randint(config.vocab_size, {options.batch, n},
                                torch::TensorOptions().dtype(torch::kLong).device(options.device));
      model->forward_cached(idx, cache);
      filled += n;
    }
    bytes.push_back(cache.bytes());
  }
  return bytes;
}

}  // namespace

std::vector<KvReportRow> kv_report(const ModelConfig& shape, const KvReportOptions& options) {
  if (options.contexts.empty() || !std::is_sorted(options.contexts.begin(), options.contexts.end()) ||
      options.contexts.front() < 1) {
    throw std::invalid_argument("kv_report: contexts must be positive and ascending");
  }
  if (options.prefill_chunk < 1 || options.batch < 1) {
    throw std::invalid_argument("kv_report: batch and prefill_chunk must be at least 1");
  }
  // Only the attention shape matters: every mechanism off, the block as long as the longest context.
  ModelConfig standard;
  standard.n_layer = shape.n_layer;
  standard.n_head = shape.n_head;
  standard.n_embd = shape.n_embd;
  standard.vocab_size = shape.vocab_size;
  standard.mlp_ratio = shape.mlp_ratio;
  standard.block_size = int(options.contexts.back());
  standard.dropout = 0.0;
  standard.mla.latent_dim = shape.mla.latent_dim;
  ModelConfig mla = standard;
  mla.mla.enabled = true;

  const int64_t element = torch::elementSize(options.cache_dtype);
  const auto standard_bytes = measure(standard, options);
  const auto mla_bytes = measure(mla, options);
  std::vector<KvReportRow> rows;
  for (size_t i = 0; i < options.contexts.size(); ++i) {
    const int64_t t = options.contexts[i];
    rows.push_back({t, standard_bytes[i], mla_bytes[i], standard_cache_bytes(standard, t, options.batch, element),
                    mla_cache_bytes(mla, t, options.batch, element)});
  }
  return rows;
}

}  // namespace ratio::model

#pragma once
// GPT-2 with every RATIO mechanism (docs/architecture.md). Batch-first; shapes in comments.
// This header is the API the worker and the tests use.

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "matrix/job_spec.h"
#include "matrix/params.h"

namespace ratio::model {

class BlockImpl;

// Whether this build has the fused CUDA kernels of model/kernels/ (GPTImpl::set_fused_kernels).
bool fused_kernels_built();

struct ForwardOutput {
  torch::Tensor logits;  // [B, T, V_padded]; undefined where the fused classifier computed the loss
  torch::Tensor loss;    // scalar mean cross-entropy over targets (undefined when no targets)
};

struct LayerAttentionStats {
  double entropy = 0;      // mean over batch, heads, positions of -sum_j A[i,j] log A[i,j]
  // Pearson correlation of S[i,j] with S[j,i] over pairs j < i, S = q·kᵀ·scale before RA and the
  // mask (the causal A[j,i] is 0 for j < i, so the weights themselves cannot be compared).
  double reciprocity = 0;
};

// One layer's cache for incremental decoding. MLA keeps only k_lat/v_lat [B, t, L];
// standard attention keeps k/v [B, H, t, D]. Mechanisms that look at earlier positions add theirs.
struct LayerCache {
  torch::Tensor k;         // standard k, or MLA k_lat
  torch::Tensor v;         // standard v, or MLA v_lat
  torch::Tensor q;         // RA: queries [B, H, t, Dk] (the reciprocal term q_j·k_i needs earlier queries)
  torch::Tensor gate_sum;  // mechanism 1 producer: fp32 Σ_{s<t} gate_proj(h_s) [B, 1, G] (the prefix mean)
  torch::Tensor hidden;    // mechanism 2: MLP hidden before the cross term [B, t, M] (Ā mixes earlier ones)
};
struct KVCache {
  std::vector<LayerCache> layers;
  // Storage dtype of the cache tensors (e.g. bf16 for an fp32 model); unset = the compute dtype.
  std::optional<torch::ScalarType> dtype;
  int64_t bytes() const;   // measured bytes held by the cache tensors
  int64_t length() const;  // cached positions (0 when empty)
};

class GPTImpl : public torch::nn::Module {
 public:
  explicit GPTImpl(const ModelConfig& config);

  // idx: [B, T] int64 token ids, T <= block_size. targets: [B, T] or undefined.
  ForwardOutput forward(const torch::Tensor& idx, const torch::Tensor& targets = {});

  // Incremental decoding: feeds idx [B, t_new] after the cached positions; returns logits
  // [B, t_new, V_padded] and extends `cache`. Equals the full forward at those positions, for
  // every mechanism (RA, mechanisms 1 and 2 keep their extra state in LayerCache).
  torch::Tensor forward_cached(const torch::Tensor& idx, KVCache& cache);

  const ModelConfig& config() const { return config_; }

  // The fused CUDA kernels (model/fused.h) for residual add + layer norm, the MLP's c_fc + GELU (its
  // backward with the bias gradient) and, with targets under bf16 autocast, the classifier's loss
  // (forward then returns no logits). Off by default; where the
  // kernels do not support the inputs (CPU, a build without them) ATen's ops run as before.
  void set_fused_kernels(bool on);
  bool fused_kernels() const { return fused_kernels_; }

  // Parameter counts from the real tensors, in the same categories as matrix/params.h's formula.
  // `pruned` is the number of weights currently masked to zero by pruning (worker-owned).
  ParamCounts param_report(int64_t pruned = 0) const;

  // Every mixing alpha, gate bias/scale and learned ratio by full name ("h.3.attn.ra_alpha").
  std::vector<std::pair<std::string, torch::Tensor>> mixing_parameters() const;
  // Parameters whose gradient norms the worker logs: alphas, gate_proj, gate_to_heads,
  // q_to_latent, coupler weights, learned ratios.
  std::vector<std::pair<std::string, torch::Tensor>> key_parameters() const;
  // Per-layer attention entropy and reciprocity, computed under no_grad on idx [B, T].
  std::vector<LayerAttentionStats> attention_stats(const torch::Tensor& idx);

  // Learned ratio: each layer's effective MLP width round(ratio·C), clamped to [0, M]. Empty otherwise.
  std::vector<int64_t> effective_mlp_widths() const;

 private:
  std::vector<torch::Tensor> fused_linear_params();  // what fused::Bf16Weights casts in a forward
  // [B, T, C]; with tied_grad, the token lookup is fused::tied_embedding's (training, fused head).
  torch::Tensor embed(const torch::Tensor& idx, int64_t start_pos, const torch::Tensor& tied_grad = {});
  torch::Tensor logits_from(const torch::Tensor& x);                  // [B, T, V_padded]
  void init_weights();

  ModelConfig config_;
  bool fused_kernels_ = false;
  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  torch::nn::Dropout drop{nullptr};
  torch::nn::ModuleList h{nullptr};
  std::vector<std::shared_ptr<BlockImpl>> blocks_;
  torch::nn::LayerNorm ln_f{nullptr};
};
TORCH_MODULE(GPT);

}  // namespace ratio::model

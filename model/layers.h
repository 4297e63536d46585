#pragma once
// The modules one GPT block is made of (docs/architecture.md). Private to model/: the worker and
// the tests use model/gpt.h. Module and parameter names are the contract's paths.

#include <optional>
#include <utility>

#include <torch/torch.h>

#include "matrix/job_spec.h"

namespace ratio::model {

struct LayerCache;

// torch::nn::Linear whose forward is ATen's linear. The C++ frontend's own forward computes a 3-D
// input as matmul followed by `+= bias`, which autocast does not see: on the H100 the bias add ran as
// a separate fp32 broadcast kernel (6 ms of a 61 ms GPT-2 step) instead of cuBLASLt's fused bias
// epilogue. With `fused` (GPT::set_fused_kernels), model/fused.h's linear where it can run: the same
// forward, and the bias gradient summed by our kernel. Parameters, names and initialisation are
// torch::nn::Linear's.
class LinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  torch::Tensor forward(const torch::Tensor& input);
  void set_fused(bool on) { fused_ = on; }

 private:
  bool fused_ = false;
};
TORCH_MODULE(Linear);

// {x + addend, ln(x + addend)} (addend may be undefined: {x, ln(x)}). With `fused`, one CUDA kernel
// where model/fused.h supports the inputs (its normalised output is then bf16 under autocast, which
// the next linear would cast to anyway); otherwise ATen's add and layer_norm.
std::pair<torch::Tensor, torch::Tensor> add_and_norm(bool fused, const torch::Tensor& x, const torch::Tensor& addend,
                                                     torch::nn::LayerNorm& ln);

// Appends `fresh` to a cache tensor along `time_dim`, stored in `storage` when set.
torch::Tensor append_cached(const torch::Tensor& cached, const torch::Tensor& fresh, int64_t time_dim,
                            std::optional<torch::ScalarType> storage);

// What block i hands to block i+1 inside ONE forward call. Never stored on a module: a context
// kept between calls would leak one batch into the next (the study's defect 3).
struct CrossLayerContext {
  torch::Tensor head_gate;  // mechanism 1: [B, H, T, 1] per-head gates from the previous MLP
  torch::Tensor latent;     // mechanism 3: [B, T, L] ctx3 from the previous MLP
};

// Mechanism 2's Ā (the head-averaged, sparsified, renormalised attention weights): dense, or on the fused
// statistics path as K (key, weight) pairs a row, which the MLP gathers instead of multiplying a matrix
// that is zero but for K entries a row.
struct MixingWeights {
  torch::Tensor dense;   // [B, T, Tk] fp32, or undefined
  torch::Tensor keys;    // [B, T, K] int32, −1 where a row has fewer than K visible keys; or undefined
  torch::Tensor values;  // [B, T, K] fp32, 0 at the empty entries
  bool defined() const { return dense.defined() || keys.defined(); }
  torch::Tensor to_dense(int64_t Tk) const;  // `dense`, or the pairs scattered into a [B, T, Tk] fp32
};

struct AttentionOutput {
  torch::Tensor y;             // [B, T, C] after c_proj
  MixingWeights mean_weights;  // mechanism 2's Ā
  torch::Tensor v_lat;         // [B, T, L] MLA value latent with ctx3 added (mechanism 3 under MLA)
  torch::Tensor weights;       // [B, H, T, T] fp32 A, only when asked for (attention_stats)
  torch::Tensor raw_scores;    // [B, H, T, T] fp32 q·kᵀ·scale before RA and mask, only when asked for
};

// MLA's queries into the latent space, q_h·weight[h] for each head h: q [B, T, H·D], weight [H, D, L]
// (fp32; cast to q's dtype) -> [B, H, T, L], laid out [B, T, H, L] like the standard path's queries
// (attention.cpp says why). Differentiable in q and weight.
torch::Tensor queries_to_latent(const torch::Tensor& q, const torch::Tensor& weight);

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const ModelConfig& config, int layer);

  // a = ln_1(x) [B, T, C]. head_gate: mechanism 1's [B, H, T, 1] (undefined in layer 0 or without it).
  // latent_ctx: alpha_attn·ctx3 [B, T, L] added to MLA's k_lat and v_lat (undefined when absent).
  AttentionOutput forward(const torch::Tensor& a, const torch::Tensor& head_gate,
                          const torch::Tensor& latent_ctx, bool keep_weights);

  // Incremental decoding: a [B, t_new, C] after the positions held in `cache`, which it extends
  // (stored in `storage`, or the compute dtype when unset).
  AttentionOutput forward_cached(const torch::Tensor& a, const torch::Tensor& head_gate,
                                 const torch::Tensor& latent_ctx, LayerCache& cache,
                                 std::optional<torch::ScalarType> storage);

  // Band RA on the CUDA kernels of model/fused_ra.h where they can run (GPT::set_fused_kernels).
  void set_fused(bool on) { fused_ = on; }

 private:
  // Queries, keys and values in the shapes the score product needs.
  struct Projected {
    torch::Tensor q;      // [B, H, T, Dk]  (Dk = D, or L under MLA)
    torch::Tensor k;      // [B, H, T, Dk] standard, [B, 1, T, L] MLA (broadcast over heads)
    torch::Tensor v;      // [B, H, T, D]
    torch::Tensor k_lat;  // [B, T, L] MLA only
    torch::Tensor v_lat;  // [B, T, L] MLA only
  };
  Projected project(const torch::Tensor& a, const torch::Tensor& latent_ctx);
  torch::Tensor heads_from_latent_values(const torch::Tensor& v_lat);  // [B, t, L] -> [B, H, t, D]
  double score_scale() const;
  bool ra_band_limited(int64_t T) const;

  // An attention path's result: y [B, H, T, D] and RA-CT's `output` gate [B, H, T] fp32 (undefined
  // without it), which merge_heads_and_project applies together with mechanism 1's gate.
  struct Attended {
    torch::Tensor y, output_gate;
  };
  // softmax path with the T×T weights: RA, RA-CT, weights for mechanism 2 / stats.
  // q [B, H, Tq, Dk], k [B, H|1, Tk, Dk], v [B, H, Tk, D]; query i sits at position Tk - Tq + i.
  // all_q [B, H, Tk, Dk]: the queries of every visible position (RA's S[j, i] = q_j·k_i).
  Attended attend_materialised(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& all_q, AttentionOutput* out, bool keep_weights);
  // No T×T tensor on GPU: band RA in model/fused_ra.h's kernels where they apply (fused_), else SDPA
  // (plain, full-range RA, or band RA over 2T keys). k [B, H|1, T, Dk]. Returns [B, H, T, D].
  torch::Tensor attend_fused(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);
  // RA-CT (`topk` or `max`; `output`, or `weights` without mechanism 2) and mechanism 2 (`topk`) from the
  // kernels' top-K statistics, with band RA or without RA, and RA-CT's `entropy` and `rms` (`output`,
  // without RA or mechanism 2) from cuDNN's attention: no T×T tensor (model/fused_ra.h), the same math as
  // attend_materialised, where fused_stats_apply says so.
  bool fused_stats_apply(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) const;
  Attended attend_fused_stats(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              AttentionOutput* out);
  torch::Tensor ct_gate(const torch::Tensor& weights) const;  // [B, H, Tq]
  torch::Tensor ct_gate_from_statistic(const torch::Tensor& stat) const;  // sigmoid(scale·stat + bias), [B, H, Tq]
  // RA-CT's output gate and mechanism 1's head gate [B, H, T, 1] (either undefined) as one multiplier of
  // y, [B, H, T, 1] fp32, or undefined when neither is there.
  torch::Tensor row_scale(const torch::Tensor& output_gate, const torch::Tensor& head_gate) const;
  torch::Tensor merge_heads_and_project(const Attended& att, const torch::Tensor& head_gate);

  ModelConfig config_;
  bool mla_;
  bool ct_;          // RA-CT active (enabled and gates not forced open)
  bool head_gate_;   // mechanism 1 consumer (layer >= 1, gates not forced open)
  bool fused_ = false;
  Linear c_attn{nullptr}, q_proj{nullptr}, k_down{nullptr}, v_down{nullptr}, v_up{nullptr};
  Linear c_proj{nullptr};
  torch::Tensor q_to_latent;  // [H, D, L]
  torch::Tensor ra_alpha, ct_scale, ct_bias, ct_alpha, gate_alpha;
  torch::nn::Dropout attn_drop{nullptr}, resid_drop{nullptr};
};
TORCH_MODULE(Attention);

struct MlpOutput {
  torch::Tensor out;     // [B, T, C] after c_proj (and dropout)
  torch::Tensor hidden;  // [B, T, M] the hidden state the producers read (after every mechanism and the mask)
};

class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(const ModelConfig& config, int layer);

  // m = ln_2(x) [B, T, C]; extra [B, T, M] is mechanism 3's alpha_mlp·attn_to_mlp(lat) (or undefined);
  // mean_weights is mechanism 2's Ā over Tk positions. With a cache, Ā mixes the cached hidden states of
  // earlier positions too, and the new ones are appended.
  MlpOutput forward(const torch::Tensor& m, const torch::Tensor& extra, const MixingWeights& mean_weights,
                    LayerCache* cache = nullptr, std::optional<torch::ScalarType> storage = std::nullopt);

  // Mechanism 1 producer: per-head gates for the next layer from the causal prefix mean. [B, H, T, 1]
  // With a cache, the prefix continues from the positions already cached (start_pos of them).
  torch::Tensor head_gate(const torch::Tensor& hidden, LayerCache* cache = nullptr, int64_t start_pos = 0);
  bool produces_head_gate() const { return !gate_proj.is_empty(); }
  void set_fused_kernels(bool on) { fused_kernels_ = on; }

  // Learned ratio: the soft width mask [M] and the effective width round(ratio·C) clamped to [0, M].
  torch::Tensor width_mask() const;
  int64_t effective_width() const;

 private:
  ModelConfig config_;
  bool fused_kernels_ = false;
  Linear c_fc{nullptr}, c_proj{nullptr}, gate_proj{nullptr}, gate_to_heads{nullptr};
  Linear cross_proj{nullptr};
  torch::Tensor ratio, cross_alpha;
  torch::nn::Dropout drop{nullptr};
};
TORCH_MODULE(Mlp);

// Mechanism 3: couples the attention latent [B, T, L] and the MLP hidden [B, T, M].
class CouplerImpl : public torch::nn::Module {
 public:
  CouplerImpl(const ModelConfig& config, int layer);

  // Without MLA the coupler owns its latent: latent_down(a) [B, T, L].
  torch::Tensor own_latent(const torch::Tensor& a);
  // alpha_mlp·attn_to_mlp(lat): [B, T, L] -> [B, T, M]
  torch::Tensor to_mlp(const torch::Tensor& lat);
  // ctx3 for the next layer's attention (producers only): [B, T, M] -> [B, T, L]
  torch::Tensor to_attn(const torch::Tensor& hidden);
  // alpha_attn·ctx3 for this layer (consumers only).
  torch::Tensor scale_incoming(const torch::Tensor& ctx3) const;
  bool produces() const { return producer_; }

 private:
  ModelConfig config_;
  bool producer_;
  Linear latent_down{nullptr}, attn_to_mlp{nullptr}, mlp_to_attn{nullptr}, tied{nullptr};
  torch::Tensor head_gate, alpha_mlp, alpha_attn;
};
TORCH_MODULE(Coupler);

// Between blocks the residual stream travels as x plus `pending`, the last MLP output not yet added:
// the next layer norm (the next block's ln_1, or ln_f) adds it, in the same kernel on the fused path.
struct BlockOutput {
  torch::Tensor x;            // [B, T, C]
  torch::Tensor pending;      // [B, T, C] to add to x, or undefined (forward_cached adds it itself)
  CrossLayerContext context;  // for the next block
  torch::Tensor weights;      // [B, H, T, T] when asked for
  torch::Tensor raw_scores;   // [B, H, T, T] when asked for
};

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ModelConfig& config, int layer);
  // The stream arrives as x + pending (pending undefined before the first block).
  BlockOutput forward(const torch::Tensor& x, const torch::Tensor& pending, const CrossLayerContext& incoming,
                      bool keep_weights = false);
  // Incremental decoding (no mechanism that needs earlier positions' queries or hidden states).
  BlockOutput forward_cached(const torch::Tensor& x, const CrossLayerContext& incoming, LayerCache& cache,
                             std::optional<torch::ScalarType> storage);
  void set_fused_kernels(bool on) {
    fused_kernels_ = on;
    mlp->set_fused_kernels(on);
  }

 private:
  torch::Tensor coupler_extra(const torch::Tensor& a, const torch::Tensor& v_lat,
                              const torch::Tensor& latent_ctx);
  CrossLayerContext outgoing(const torch::Tensor& hidden, LayerCache* cache = nullptr, int64_t start_pos = 0);

  ModelConfig config_;
  bool fused_kernels_ = false;
  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  Attention attn{nullptr};
  Mlp mlp{nullptr};
  Coupler coupler{nullptr};
};
TORCH_MODULE(Block);

}  // namespace ratio::model

// Causal self-attention with MLA, RA, RA-CT and mechanism 1's head gates (docs/architecture.md).
// SDPA whenever nothing needs the attention weights (RA included, banded or not); the band kernels
// with their top-K statistics for RA-CT's and mechanism 2's `topk` under band RA on CUDA; the T×T path
// for the other modes and attention_stats.

#include <cmath>
#include <limits>
#include <stdexcept>

#include "model/fused.h"
#include "model/fused_ra.h"
#include "model/gpt.h"
#include "model/layers.h"
#include "model/torch_compat.h"

namespace ratio::model {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// allowed[i, j]: key j visible to query i, which sits at position Tk - Tq + i. [Tq, Tk]
torch::Tensor causal_mask(int64_t Tq, int64_t Tk, const torch::Device& device) {
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  auto qpos = torch::arange(Tk - Tq, Tk, opts).unsqueeze(1);  // [Tq, 1]
  auto kpos = torch::arange(0, Tk, opts).unsqueeze(0);        // [1, Tk]
  return kpos <= qpos;
}

// Where the reciprocal term applies: j <= i and i - j <= window (window 0: every j <= i), query i at
// position Tk - Tq + i. [Tq, Tk]
torch::Tensor ra_band(int64_t Tq, int64_t Tk, int window, const torch::Device& device) {
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  auto i = torch::arange(Tk - Tq, Tk, opts).unsqueeze(1);
  auto j = torch::arange(Tk, opts).unsqueeze(0);
  auto band = j <= i;
  return window > 0 ? band.logical_and(i - j <= window) : band;
}

// Number of visible keys per query row, as fp32 [Tq, 1] (for the rms statistic).
torch::Tensor visible_counts(int64_t Tq, int64_t Tk, const torch::Device& device) {
  return torch::arange(Tk - Tq + 1, Tk + 1, torch::TensorOptions().dtype(torch::kFloat32).device(device))
      .unsqueeze(1);
}

// RA-CT's `entropy` or `rms` as the fused op names it.
fused::RowStatistic row_statistic(const std::string& mode) {
  return mode == "entropy" ? fused::RowStatistic::entropy : fused::RowStatistic::rms;
}

// Rows of kept weights scaled to sum to 1 (an all-zero row stays zero). [..., n]
torch::Tensor renormalised_rows(const torch::Tensor& kept) { return kept / kept.sum(-1, true).clamp_min(1e-12); }

// Mechanism 2's Ā: head-averaged weights, sparsified per row and renormalised. [B, Tq, Tk] fp32
torch::Tensor sparsify_mean_weights(const torch::Tensor& weights, const MlpCrossConfig& cross) {
  auto mean = weights.mean(1);  // [B, Tq, Tk]
  torch::Tensor keep;
  if (cross.sparsify == "topk") {
    const int64_t k = std::min<int64_t>(cross.k, mean.size(-1));
    auto idx = std::get<1>(mean.topk(k, -1));
    keep = torch::zeros_like(mean).scatter_(-1, idx, 1.0);
  } else if (cross.sparsify == "rms") {
    const int64_t Tq = mean.size(1), Tk = mean.size(2);
    auto rms = (mean.square().sum(-1, true) / visible_counts(Tq, Tk, mean.device())).sqrt();  // [B, Tq, 1]
    keep = (mean >= rms).to(mean.scalar_type());
  } else if (cross.sparsify == "none") {
    return mean;
  } else {
    throw std::invalid_argument("model.mlp_cross.sparsify: unknown mode '" + cross.sparsify +
                                "'; use none, topk or rms");
  }
  return renormalised_rows(mean * keep);
}

// Each head's query into the latent space, q_h·q_to_latent[h], with the result laid out [B, T, H, L]:
// the layout the standard path's q has (a view of c_attn's output), so SDPA writes its output
// [B, T, H, D], which c_proj reads without a copy, and its gradient arrives in the layout SDPA's
// backward wants. (A plain bmm leaves [H, B, T, L], and each layer then paid two [B, T, C] copies.)
// Both products run per head over all B·T rows on strided views: nothing is copied, and the weight's
// gradient needs no sum over the batch. bmm's out= variant takes the strided output directly.
struct QueriesToLatentFunction : torch::autograd::Function<QueriesToLatentFunction> {
  // q [B, T, H·D]; weight [H, D, L] (cast to q's dtype, as autocast's bmm would). Returns [B, H, T, L].
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                                                const torch::Tensor& weight) {
    const int64_t B = q.size(0), T = q.size(1), H = weight.size(0), D = weight.size(1), L = weight.size(2);
    auto w = weight.to(q.scalar_type());
    auto per_head = q.reshape({B * T, H, D}).transpose(0, 1);      // [H, B·T, D]
    auto latent = at::empty({B * T, H, L}, q.options());           // [B·T, H, L]
    auto latent_per_head = latent.transpose(0, 1);                 // [H, B·T, L], a view
    at::bmm_out(latent_per_head, per_head, w);                     // [H, B·T, D]·[H, D, L]
    ctx->save_for_backward({q, w});
    ctx->saved_data["weight_dtype"] = weight.scalar_type();
    return {latent.view({B, T, H, L}).transpose(1, 2)};            // [B, H, T, L]
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &q = saved[0], &w = saved[1];
    const int64_t B = q.size(0), T = q.size(1), H = w.size(0), D = w.size(1), L = w.size(2);
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor()};
    // [B, H, T, L] -> [H, B·T, L]; a view where the gradient has the forward's layout.
    auto d_latent = grads[0].to(q.scalar_type()).transpose(1, 2).reshape({B * T, H, L}).transpose(0, 1);
    auto per_head = q.reshape({B * T, H, D}).transpose(0, 1);      // [H, B·T, D]
    auto dq = at::empty({B * T, H, D}, q.options());
    auto dq_per_head = dq.transpose(0, 1);                         // [H, B·T, D], a view
    at::bmm_out(dq_per_head, d_latent, w.transpose(1, 2));         // [H, B·T, L]·[H, L, D]
    auto dweight = at::bmm(per_head.transpose(1, 2), d_latent);    // [H, D, B·T]·[H, B·T, L]
    return {dq.view(q.sizes()), dweight.to(ctx->saved_data["weight_dtype"].toScalarType())};
  }
};

}  // namespace

AttentionImpl::AttentionImpl(const ModelConfig& config, int layer)
    : config_(config),
      mla_(config.mla.enabled),
      ct_(config.ra_ct.enabled && !config.force_gates_open),
      head_gate_(config.mlp_gate.enabled && !config.force_gates_open && layer >= 1) {
  const int64_t C = config.n_embd, H = config.n_head, D = config.head_dim();
  if (mla_) {
    const int64_t L = config.mla.latent_dim;
    q_proj = register_module("q_proj", Linear(C, C));
    k_down = register_module("k_down", Linear(C, L));
    v_down = register_module("v_down", Linear(C, L));
    v_up = register_module("v_up", Linear(L, C));
    q_to_latent = register_parameter("q_to_latent", torch::randn({H, D, L}) * 0.02);  // GPT-2 scale
  } else {
    c_attn = register_module("c_attn", Linear(C, 3 * C));
  }
  c_proj = register_module("c_proj", Linear(C, C));
  if (config.ra.enabled) {
    auto alpha = torch::full({1}, config.ra.alpha);
    ra_alpha = config.ra.learnable ? register_parameter("ra_alpha", alpha) : register_buffer("ra_alpha", alpha);
  }
  if (ct_) {
    ct_scale = register_parameter("ct_scale", torch::ones({H}));
    ct_bias = register_parameter("ct_bias", torch::full({H}, 2.0));
    if (config.ra_ct.apply == "weights") ct_alpha = register_parameter("ct_alpha", torch::full({1}, config.ra_ct.alpha));
  }
  if (head_gate_) gate_alpha = register_parameter("gate_alpha", torch::full({1}, config.mlp_gate.alpha));
  attn_drop = register_module("attn_drop", torch::nn::Dropout(config.dropout));
  resid_drop = register_module("resid_drop", torch::nn::Dropout(config.dropout));
}

double AttentionImpl::score_scale() const {
  return 1.0 / std::sqrt(double(mla_ ? config_.mla.latent_dim : config_.head_dim()));
}

bool AttentionImpl::ra_band_limited(int64_t T) const {
  return config_.ra.enabled && config_.ra.window > 0 && config_.ra.window < T - 1;
}

torch::Tensor AttentionImpl::heads_from_latent_values(const torch::Tensor& v_lat) {
  const int64_t B = v_lat.size(0), t = v_lat.size(1);
  return v_up(v_lat).view({B, t, config_.n_head, config_.head_dim()}).transpose(1, 2);  // [B, H, t, D]
}

torch::Tensor queries_to_latent(const torch::Tensor& q, const torch::Tensor& weight) {
  return QueriesToLatentFunction::apply(q, weight)[0];
}

AttentionImpl::Projected AttentionImpl::project(const torch::Tensor& a, const torch::Tensor& latent_ctx) {
  const int64_t B = a.size(0), T = a.size(1), C = config_.n_embd, H = config_.n_head, D = config_.head_dim();
  Projected p;
  if (!mla_) {
    auto qkv = c_attn(a).split(C, -1);  // 3 x [B, T, C]
    p.q = qkv[0].view({B, T, H, D}).transpose(1, 2);
    p.k = qkv[1].view({B, T, H, D}).transpose(1, 2);
    p.v = qkv[2].view({B, T, H, D}).transpose(1, 2);
    return p;
  }
  torch::Tensor q;  // [B, T, C]
  if (fused_ && fused::supports_linear_gelu(a)) {  // the three input gradients summed inside the matmuls
    auto projected = fused::shared_input_linears(a, {q_proj->weight, k_down->weight, v_down->weight},
                                                 {q_proj->bias, k_down->bias, v_down->bias});
    q = projected[0];
    p.k_lat = projected[1];  // [B, T, L]
    p.v_lat = projected[2];  // [B, T, L]
  } else {
    q = q_proj(a);
    p.k_lat = k_down(a);  // [B, T, L]
    p.v_lat = v_down(a);  // [B, T, L]
  }
  p.q = queries_to_latent(q, q_to_latent);  // [B, H, T, L]
  if (latent_ctx.defined()) {  // mechanism 3: the previous MLP's context enters the cached latents
    p.k_lat = p.k_lat + latent_ctx;
    p.v_lat = p.v_lat + latent_ctx;
  }
  p.k = p.k_lat.unsqueeze(1);  // [B, 1, T, L]
  p.v = heads_from_latent_values(p.v_lat);
  return p;
}

// RA-CT gate per head and query from the statistic of its weight row. weights [B, H, Tq, Tk] fp32.
torch::Tensor AttentionImpl::ct_gate(const torch::Tensor& weights) const {
  const auto& mode = config_.ra_ct.mode;
  const int64_t Tq = weights.size(2), Tk = weights.size(3);
  torch::Tensor stat;  // [B, H, Tq]
  if (mode == "topk") {
    stat = std::get<0>(weights.topk(std::min<int64_t>(config_.ra_ct.k, Tk), -1)).sum(-1);
  } else if (mode == "max") {
    stat = weights.amax(-1);
  } else if (mode == "entropy") {
    stat = -(weights * weights.clamp_min(1e-30).log()).sum(-1);  // masked zeros contribute 0
  } else if (mode == "rms") {
    stat = (weights.square().sum(-1) / visible_counts(Tq, Tk, weights.device()).squeeze(1)).sqrt();
  } else {
    throw std::invalid_argument("model.ra_ct.mode: unknown mode '" + mode + "'; use topk, max, entropy or rms");
  }
  return ct_gate_from_statistic(stat);
}

torch::Tensor AttentionImpl::ct_gate_from_statistic(const torch::Tensor& stat) const {
  auto scale = ct_scale.to(torch::kFloat32).view({1, -1, 1});
  auto bias = ct_bias.to(torch::kFloat32).view({1, -1, 1});
  return torch::sigmoid(scale * stat + bias);
}

AttentionImpl::Attended AttentionImpl::attend_materialised(const torch::Tensor& q, const torch::Tensor& k,
                                                           const torch::Tensor& v, const torch::Tensor& all_q,
                                                           AttentionOutput* out, bool keep_weights) {
  const int64_t Tq = q.size(2), Tk = k.size(2);
  // Scores and softmax in fp32: bf16 logits lose the small differences softmax (and RA-CT's and
  // mechanism 2's top-k, which reorders nearly equal weights) depends on.
  auto scores = compat::matmul_fp32(q, k.transpose(-2, -1)) * score_scale();  // [B, H, Tq, Tk]
  if (keep_weights) out->raw_scores = scores.detach();
  if (config_.ra.enabled) {
    // S'[i, j] = S[i, j] + alpha·S[j, i] inside the band, S[j, i] = q_j·k_i: the keys of the queried
    // positions against the queries of every visible position.
    auto k_at_queries = k.narrow(2, Tk - Tq, Tq);                                       // [B, H|1, Tq, Dk]
    auto transposed = compat::matmul_fp32(k_at_queries, all_q.transpose(-2, -1)) * score_scale();
    auto band = ra_band(Tq, Tk, config_.ra.window, q.device());
    scores = scores + (transposed * ra_alpha.to(torch::kFloat32)).masked_fill(band.logical_not(), 0.0);
  }
  scores = scores.masked_fill(causal_mask(Tq, Tk, q.device()).logical_not(), kNegInf);
  auto weights = torch::softmax(scores, -1);  // [B, H, Tq, Tk] fp32
  torch::Tensor gate;                         // RA-CT [B, H, Tq]
  if (ct_) {
    gate = ct_gate(weights);
    if (config_.ra_ct.apply == "weights") {
      auto a = ct_alpha.to(torch::kFloat32);
      weights = weights * ((1 - a) + a * gate).unsqueeze(-1);
    }
  }
  if (keep_weights) out->weights = weights.detach();
  if (config_.mlp_cross.enabled) out->mean_weights.dense = sparsify_mean_weights(weights, config_.mlp_cross);
  auto y = torch::matmul(attn_drop(weights).to(v.scalar_type()), v);  // [B, H, Tq, D]
  return {y, ct_ && config_.ra_ct.apply == "output" ? gate : torch::Tensor()};
}

torch::Tensor AttentionImpl::attend_fused(const torch::Tensor& q, const torch::Tensor& shared_k, const torch::Tensor& v) {
  const double dropout_p = is_training() ? config_.dropout : 0.0;
  const int64_t T = q.size(2);
  // supports_ra_band also asks for a band narrower than the sequence (1 ≤ window < T − 1).
  if (fused_ && config_.ra.enabled && dropout_p == 0.0 && fused::supports_ra_band(q, shared_k, v, config_.ra.window))
    return fused::ra_band_attention(q, shared_k, v, ra_alpha, config_.ra.window, score_scale());
  const auto k = shared_k.expand_as(q);  // MLA: one latent key for every head
  if (!config_.ra.enabled) return compat::sdpa(q, k, v, /*is_causal=*/true, score_scale(), {}, dropout_p);
  // [q, alpha·k]·[k, q]ᵀ = S + alpha·Sᵀ; the scale is given explicitly because the concatenated
  // width would otherwise change it.
  auto q_ra = torch::cat({q, k * ra_alpha.to(q.scalar_type())}, -1);  // [B, H, T, 2Dk]
  auto k_ra = torch::cat({k, q}, -1);
  if (!ra_band_limited(T)) return compat::sdpa(q_ra, k_ra, v, /*is_causal=*/true, score_scale(), {}, dropout_p);
  // Band-limited RA in one call over 2T keys: key j appears as [k_j, q_j] (S + alpha·Sᵀ, used inside
  // the band) and as [k_j, 0] (plain S, used outside it); the mask lets each query see exactly one of the pair.
  auto k_plain = torch::cat({k, torch::zeros_like(q)}, -1);
  auto keys = torch::cat({k_ra, k_plain}, 2);  // [B, H, 2T, 2Dk]
  auto values = torch::cat({v, v}, 2);         // [B, H, 2T, D]
  auto band = ra_band(T, T, config_.ra.window, q.device());
  auto mask = torch::cat({band, causal_mask(T, T, q.device()).logical_and(band.logical_not())}, 1);  // [T, 2T]
  return compat::sdpa(q_ra, keys, values, /*is_causal=*/false, score_scale(), mask, dropout_p);
}

bool AttentionImpl::fused_stats_apply(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) const {
  const bool dropout = is_training() && config_.dropout > 0.0;
  if (!fused_ || dropout) return false;
  const auto& cross = config_.mlp_cross;
  if (ct_ && (config_.ra_ct.mode == "entropy" || config_.ra_ct.mode == "rms")) {  // from cuDNN's attention alone
    return config_.ra_ct.apply == "output" && !cross.enabled && !config_.ra.enabled &&
           fused::supports_causal_statistic(q, k, v, row_statistic(config_.ra_ct.mode));
  }
  if (q.size(1) > fused::kMaxStatsHeads) return false;
  if (ct_) {
    const auto& ct = config_.ra_ct;
    // `weights` scales each weight row by (1 − a) + a·gate, which scales y's row alike, unless mechanism 2
    // averages the scaled weights.
    const bool applies = ct.apply == "output" || (ct.apply == "weights" && !cross.enabled);
    const bool from_lists = (ct.mode == "topk" && ct.k <= fused::kMaxStatsK) || ct.mode == "max";
    if (!applies || !from_lists) return false;
  }
  if (cross.enabled && (cross.sparsify != "topk" || cross.k > fused::kMaxStatsK)) return false;
  if (config_.ra.enabled) return fused::supports_ra_band(q, k, v, config_.ra.window);
  return fused::supports_causal_stats(q, k, v);  // without RA: cuDNN's causal attention and the same kernels
}

AttentionImpl::Attended AttentionImpl::attend_fused_stats(const torch::Tensor& q, const torch::Tensor& k,
                                                          const torch::Tensor& v, AttentionOutput* out) {
  if (ct_ && (config_.ra_ct.mode == "entropy" || config_.ra_ct.mode == "rms")) {  // no RA, no mechanism 2, `output`
    auto r = fused::causal_attention_statistic(q, k, v, score_scale(), row_statistic(config_.ra_ct.mode));
    return {r.out, ct_gate_from_statistic(r.stat)};
  }
  const int64_t T = q.size(2);
  // RA-CT's statistic from each head's list: the sum of its first k (`topk`) or its first (`max`).
  const int64_t ct_k = !ct_ ? 0 : config_.ra_ct.mode == "max" ? 1 : config_.ra_ct.k;
  const int64_t cross_k = config_.mlp_cross.enabled ? config_.mlp_cross.k : 0;
  // One list length serves both statistics; each reads its first k entries (sorted largest first).
  const int64_t K = std::min<int64_t>(std::max(ct_k, cross_k), T);
  auto r = config_.ra.enabled
               ? fused::ra_band_attention_stats(q, k, v, ra_alpha, config_.ra.window, score_scale(), K, /*heads=*/ct_)
               : fused::causal_attention_stats(q, k, v, score_scale(), K, /*heads=*/ct_);
  Attended att{r.out, torch::Tensor()};  // y [B, H, T, D]
  if (ct_) {
    auto gate = ct_gate_from_statistic(r.head_val.narrow(-1, 0, std::min(ct_k, K)).sum(-1));  // [B, H, T]
    if (config_.ra_ct.apply == "weights") {  // the rows' weights scaled, so their outputs
      auto a = ct_alpha.to(torch::kFloat32);
      gate = (1 - a) + a * gate;
    }
    att.output_gate = gate;
  }
  if (config_.mlp_cross.enabled) {  // sparsify_mean_weights' `topk` as (key, weight) pairs, renormalised
    const int64_t k_kept = std::min(cross_k, K);
    out->mean_weights.keys = r.mean_key.narrow(-1, 0, k_kept).contiguous();        // [B, T, k], −1: empty
    out->mean_weights.values = renormalised_rows(r.mean_val.narrow(-1, 0, k_kept));  // [B, T, k]
  }
  return att;
}

// Mechanism 1's (1 − a)·y + a·(y·g) is y·((1 − a) + a·g), so both gates fold into one multiplier and
// the [B, H, T, D] output is multiplied once (it was four elementwise passes over it, and their
// backward more).
torch::Tensor AttentionImpl::row_scale(const torch::Tensor& output_gate, const torch::Tensor& head_gate) const {
  torch::Tensor scale;
  if (output_gate.defined()) scale = output_gate.unsqueeze(-1);  // RA-CT, [B, H, T, 1]
  if (head_gate.defined()) {  // g [B, H, T, 1] from the previous MLP
    auto a = gate_alpha.to(torch::kFloat32);
    auto mix = (1 - a) + a * head_gate.to(torch::kFloat32);
    scale = scale.defined() ? scale * mix : mix;
  }
  return scale;
}

torch::Tensor AttentionImpl::merge_heads_and_project(const Attended& att, const torch::Tensor& head_gate) {
  auto y = att.y;
  const auto scale = row_scale(att.output_gate, head_gate);
  if (scale.defined()) y = y * scale.to(y.scalar_type());
  const int64_t B = y.size(0), T = y.size(2);
  y = y.transpose(1, 2).contiguous().view({B, T, config_.n_embd});  // [B, T, C]
  return resid_drop(c_proj(y));
}

AttentionOutput AttentionImpl::forward(const torch::Tensor& a, const torch::Tensor& head_gate,
                                       const torch::Tensor& latent_ctx, bool keep_weights) {
  auto p = project(a, latent_ctx);
  AttentionOutput out;
  out.v_lat = p.v_lat;
  const bool need_weights = keep_weights || ct_ || config_.mlp_cross.enabled;
  Attended att;
  if (need_weights && !keep_weights && fused_stats_apply(p.q, p.k, p.v)) {
    att = attend_fused_stats(p.q, p.k, p.v, &out);
  } else if (need_weights) {
    att = attend_materialised(p.q, p.k, p.v, p.q, &out, keep_weights);
  } else {
    att.y = attend_fused(p.q, p.k, p.v);
  }
  if (head_gate_ && !head_gate.defined()) throw std::logic_error("mechanism 1: layer expects a head gate");
  out.y = merge_heads_and_project(att, head_gate_ ? head_gate : torch::Tensor());
  return out;
}

torch::Tensor append_cached(const torch::Tensor& cached, const torch::Tensor& fresh, int64_t time_dim,
                            std::optional<torch::ScalarType> storage) {
  auto stored = storage ? fresh.to(*storage) : fresh;
  return cached.defined() ? torch::cat({cached, stored}, time_dim) : stored;
}

AttentionOutput AttentionImpl::forward_cached(const torch::Tensor& a, const torch::Tensor& head_gate,
                                              const torch::Tensor& latent_ctx, LayerCache& cache,
                                              std::optional<torch::ScalarType> storage) {
  auto p = project(a, latent_ctx);
  const auto compute = p.q.scalar_type();
  AttentionOutput out;
  torch::Tensor k, v, all_q;
  if (mla_) {  // the cache holds only the latents; values are expanded from all of them
    cache.k = append_cached(cache.k, p.k_lat, 1, storage);  // [B, t, L]
    cache.v = append_cached(cache.v, p.v_lat, 1, storage);
    k = cache.k.to(compute).unsqueeze(1);                // [B, 1, t, L]
    v = heads_from_latent_values(cache.v.to(compute));  // [B, H, t, D]
    out.v_lat = cache.v.narrow(1, cache.v.size(1) - a.size(1), a.size(1)).to(compute);  // as the next layer sees it
  } else {
    cache.k = append_cached(cache.k, p.k, 2, storage);  // [B, H, t, D]
    cache.v = append_cached(cache.v, p.v, 2, storage);
    k = cache.k.to(compute);
    v = cache.v.to(compute);
  }
  if (config_.ra.enabled) {
    cache.q = append_cached(cache.q, p.q, 2, storage);  // [B, H, t, Dk]
    all_q = cache.q.to(compute);
  }
  const auto att = attend_materialised(p.q, k, v, all_q, &out, false);
  out.y = merge_heads_and_project(att, head_gate_ ? head_gate : torch::Tensor());
  return out;
}

}  // namespace ratio::model

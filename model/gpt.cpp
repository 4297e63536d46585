// GPT-2 blocks, MLP, mechanism 3's coupler, the model, and its parameter report / introspection.
// docs/architecture.md is the specification; attention lives in attention.cpp.

#include "model/gpt.h"

#include <cmath>
#include <optional>
#include <stdexcept>

#include "model/fused.h"
#include "model/layers.h"

namespace ratio::model {

namespace F = torch::nn::functional;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int64_t linear_count(int64_t in, int64_t out) { return in * out + out; }
int64_t mlp_count(int64_t C, int64_t M) { return linear_count(C, M) + linear_count(M, C); }

Linear linear_no_bias(int64_t in, int64_t out) {
  return Linear(torch::nn::LinearOptions(in, out).bias(false));
}

}  // namespace

// ---- MLP ----------------------------------------------------------------------------------------

MlpImpl::MlpImpl(const ModelConfig& config, int layer) : config_(config) {
  const int64_t C = config.n_embd, M = config.mlp_hidden(), H = config.n_head, G = config.mlp_gate.gate_dim;
  const bool producer = layer < config.n_layer - 1;
  c_fc = register_module("c_fc", Linear(C, M));
  c_proj = register_module("c_proj", Linear(M, C));
  if (config.learned_ratio.enabled) ratio = register_parameter("ratio", torch::full({1}, config.learned_ratio.init));
  if (config.mlp_gate.enabled && !config.force_gates_open && producer) {
    gate_proj = register_module("gate_proj", Linear(M, G));
    gate_to_heads = register_module("gate_to_heads", Linear(G, H));
  }
  if (config.mlp_cross.enabled) {
    cross_proj = register_module("cross_proj", Linear(M, M));
    cross_alpha = register_parameter("cross_alpha", torch::full({1}, config.mlp_cross.alpha));
  }
  drop = register_module("drop", torch::nn::Dropout(config.dropout));
}

torch::Tensor MlpImpl::width_mask() const {
  // m_k = sigmoid((ratio·C - k)/tau), k = 0..M-1: a soft step at unit ratio·C. [M] fp32
  const int64_t M = config_.mlp_hidden();
  auto k = torch::arange(M, torch::TensorOptions().dtype(torch::kFloat32).device(ratio.device()));
  return torch::sigmoid((ratio.to(torch::kFloat32) * config_.n_embd - k) / config_.learned_ratio.tau);
}

int64_t MlpImpl::effective_width() const {
  const int64_t M = config_.mlp_hidden();
  const int64_t w = std::lround(ratio.item<double>() * config_.n_embd);
  return std::clamp<int64_t>(w, 0, M);
}

torch::Tensor MixingWeights::to_dense(int64_t Tk) const {
  return dense.defined() ? dense : fused::scatter_pairs(keys, values, Tk);
}

MlpOutput MlpImpl::forward(const torch::Tensor& m, const torch::Tensor& extra, const MixingWeights& mean_weights,
                           LayerCache* cache, std::optional<torch::ScalarType> storage) {
  auto h = fused_kernels_ && fused::supports_linear_gelu(m) ? fused::linear_gelu(m, c_fc->weight, c_fc->bias)
                                                            : torch::gelu(c_fc(m), "tanh");  // [B, T, M]
  if (extra.defined()) h = h + extra;     // mechanism 3: the attention latent enters the hidden state
  if (cross_proj) {
    // mechanism 2: every token mixes in the hidden states of the tokens it attends to most.
    auto visible = h;  // [B, Tk, M]: with a cache, every position so far
    if (cache) {
      cache->hidden = append_cached(cache->hidden, h, 1, storage);
      visible = cache->hidden.to(h.scalar_type());
    }
    torch::Tensor mixed;  // [B, T, M]
    if (mean_weights.keys.defined() && fused::supports_mix_rows(visible, mean_weights.keys)) {
      mixed = fused::mix_rows(mean_weights.values, mean_weights.keys, visible);  // K rows of H gathered a token
    } else {
      auto dense = mean_weights.to_dense(visible.size(1)).to(h.scalar_type());
      mixed = torch::matmul(dense, visible);  // [B, T, Tk]·[B, Tk, M]
    }
    h = h + cross_alpha.to(h.scalar_type()) * cross_proj(mixed);
  }
  if (ratio.defined()) h = h * width_mask().to(h.scalar_type());
  return {drop(c_proj(h)), h};
}

torch::Tensor MlpImpl::head_gate(const torch::Tensor& hidden, LayerCache* cache, int64_t start_pos) {
  const int64_t T = hidden.size(1);
  auto z = gate_proj(hidden);  // [B, T, G]
  // Causal prefix mean: position t averages positions <= t (a full-sequence mean leaks the future).
  torch::Tensor prefix;  // [B, T, G] in z's dtype
  if (!cache && start_pos == 0 && fused_kernels_ && fused::supports_prefix_mean(z)) {
    // One scan kernel each way instead of ATen's cumsum, which scans T serially per column, its
    // reverse, flips and casts (22 launches, 4.1 ms of a GPT-2 step).
    prefix = fused::prefix_mean(z);
  } else {
    auto sums = z.to(torch::kFloat32).cumsum(1);  // [B, T, G]
    if (cache) {
      if (cache->gate_sum.defined()) sums = sums + cache->gate_sum;
      cache->gate_sum = sums.narrow(1, T - 1, 1);  // [B, 1, G] through the newest position
    }
    auto counts = torch::arange(start_pos + 1, start_pos + T + 1,
                                torch::TensorOptions().dtype(torch::kFloat32).device(z.device()));
    prefix = (sums / counts.view({1, T, 1})).to(z.scalar_type());
  }
  auto g = torch::sigmoid(gate_to_heads(prefix));  // [B, T, H]
  return g.transpose(1, 2).unsqueeze(-1);          // [B, H, T, 1]
}

// ---- mechanism 3's coupler ------------------------------------------------------------------------

CouplerImpl::CouplerImpl(const ModelConfig& config, int layer)
    : config_(config), producer_(layer < config.n_layer - 1) {
  const int64_t C = config.n_embd, M = config.mlp_hidden(), L = config.attn_latent_dim(), H = config.n_head;
  const auto& tying = config.mlp_latent.tying;
  if (!config.mla.enabled) latent_down = register_module("latent_down", Linear(C, L));
  if (tying == "tied_transpose") {
    tied = register_module("tied", linear_no_bias(L, M));  // weight [M, L], used as W and Wᵀ
  } else if (tying == "untied" || tying == "per_head_scalar") {
    attn_to_mlp = register_module("attn_to_mlp", linear_no_bias(L, M));
    if (producer_) mlp_to_attn = register_module("mlp_to_attn", linear_no_bias(M, L));
    if (tying == "per_head_scalar" && producer_ && !config.force_gates_open) {
      head_gate = register_parameter("head_gate", torch::full({H}, 2.0));
    }
  } else {
    throw std::invalid_argument("model.mlp_latent.tying: unknown mode '" + tying +
                                "'; use untied, tied_transpose or per_head_scalar");
  }
  alpha_mlp = register_parameter("alpha_mlp", torch::full({1}, config.mlp_latent.alpha_mlp));
  if (layer >= 1) alpha_attn = register_parameter("alpha_attn", torch::full({1}, config.mlp_latent.alpha_attn));
}

torch::Tensor CouplerImpl::own_latent(const torch::Tensor& a) { return latent_down(a); }

torch::Tensor CouplerImpl::to_mlp(const torch::Tensor& lat) {
  const auto& w = tied ? tied->weight : attn_to_mlp->weight;  // [M, L]
  return alpha_mlp.to(lat.scalar_type()) * F::linear(lat, w.to(lat.scalar_type()));  // [B, T, M]
}

torch::Tensor CouplerImpl::to_attn(const torch::Tensor& hidden) {
  if (tied) return torch::matmul(hidden, tied->weight.to(hidden.scalar_type()));  // [B, T, M]·[M, L]
  auto ctx = mlp_to_attn(hidden);                                                 // [B, T, L]
  if (head_gate.defined()) {
    // Latent unit l belongs to head group floor(l·H/L); the group's gate scales it.
    const int64_t L = ctx.size(-1), H = config_.n_head;
    auto units = torch::arange(L, torch::TensorOptions().dtype(torch::kLong).device(ctx.device()));
    auto group = torch::div(units * H, L, "floor");  // [L]
    ctx = ctx * torch::sigmoid(head_gate).index_select(0, group).to(ctx.scalar_type());
  }
  return ctx;
}

torch::Tensor CouplerImpl::scale_incoming(const torch::Tensor& ctx3) const {
  return alpha_attn.to(ctx3.scalar_type()) * ctx3;
}

// ---- block --------------------------------------------------------------------------------------

std::pair<torch::Tensor, torch::Tensor> add_and_norm(bool fused, const torch::Tensor& x, const torch::Tensor& addend,
                                                     torch::nn::LayerNorm& ln) {
  if (fused && fused::supports_layer_norm(x, ln)) return fused::add_layer_norm(x, addend, ln);
  auto sum = addend.defined() ? x + addend : x;
  return {sum, ln(sum)};
}

BlockImpl::BlockImpl(const ModelConfig& config, int layer) : config_(config) {
  const int64_t C = config.n_embd;
  ln_1 = register_module("ln_1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
  attn = register_module("attn", Attention(config, layer));
  ln_2 = register_module("ln_2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
  mlp = register_module("mlp", Mlp(config, layer));
  if (config.mlp_latent.enabled) coupler = register_module("coupler", Coupler(config, layer));
}

torch::Tensor BlockImpl::coupler_extra(const torch::Tensor& a, const torch::Tensor& v_lat,
                                       const torch::Tensor& latent_ctx) {
  if (!coupler) return {};
  torch::Tensor lat;  // [B, T, L]
  if (config_.mla.enabled) {
    lat = v_lat;  // already carries ctx3
  } else {
    lat = coupler->own_latent(a);
    if (latent_ctx.defined()) lat = lat + latent_ctx;
  }
  return coupler->to_mlp(lat);
}

CrossLayerContext BlockImpl::outgoing(const torch::Tensor& hidden, LayerCache* cache, int64_t start_pos) {
  CrossLayerContext next;
  if (mlp->produces_head_gate()) next.head_gate = mlp->head_gate(hidden, cache, start_pos);
  if (coupler && coupler->produces()) next.latent = coupler->to_attn(hidden);
  return next;
}

BlockOutput BlockImpl::forward(const torch::Tensor& x_in, const torch::Tensor& pending,
                               const CrossLayerContext& incoming, bool keep_weights) {
  auto [x, a] = add_and_norm(fused_kernels_, x_in, pending, ln_1);  // x = x_in + pending, a = ln_1(x) [B, T, C]
  torch::Tensor latent_ctx;  // alpha_attn·ctx3 [B, T, L]
  if (coupler && incoming.latent.defined()) latent_ctx = coupler->scale_incoming(incoming.latent);
  auto att = attn(a, incoming.head_gate, config_.mla.enabled ? latent_ctx : torch::Tensor(), keep_weights);
  auto [x_attn, m] = add_and_norm(fused_kernels_, x, att.y, ln_2);  // x + y_attn, ln_2 of it [B, T, C]
  auto mo = mlp(m, coupler_extra(a, att.v_lat, latent_ctx), att.mean_weights);
  BlockOutput out;
  out.x = x_attn;
  out.pending = mo.out;  // added by the next norm
  out.context = outgoing(mo.hidden);
  out.weights = att.weights;
  out.raw_scores = att.raw_scores;
  return out;
}

BlockOutput BlockImpl::forward_cached(const torch::Tensor& x, const CrossLayerContext& incoming, LayerCache& cache,
                                      std::optional<torch::ScalarType> storage) {
  const int64_t start_pos = cache.k.defined() ? cache.k.size(config_.mla.enabled ? 1 : 2) : 0;
  auto a = ln_1(x);
  torch::Tensor latent_ctx;
  if (coupler && incoming.latent.defined()) latent_ctx = coupler->scale_incoming(incoming.latent);
  auto att = attn->forward_cached(a, incoming.head_gate, config_.mla.enabled ? latent_ctx : torch::Tensor(), cache,
                                  storage);
  BlockOutput out;
  out.x = x + att.y;
  auto mo = mlp->forward(ln_2(out.x), coupler_extra(a, att.v_lat, latent_ctx), att.mean_weights, &cache, storage);
  out.x = out.x + mo.out;
  out.context = outgoing(mo.hidden, &cache, start_pos);
  return out;
}

// ---- the model ------------------------------------------------------------------------------------

int64_t KVCache::bytes() const {
  int64_t total = 0;
  for (const auto& layer : layers) {
    for (const auto* t : {&layer.k, &layer.v, &layer.q, &layer.gate_sum, &layer.hidden}) {
      if (t->defined()) total += t->numel() * t->element_size();
    }
  }
  return total;
}

int64_t KVCache::length() const {
  if (layers.empty() || !layers[0].k.defined()) return 0;
  const auto& k = layers[0].k;
  return k.dim() == 4 ? k.size(2) : k.size(1);  // standard [B, H, t, D], MLA [B, t, L]
}

namespace {

void throw_if_invalid(const ModelConfig& config) {
  auto errors = validate(config);
  if (errors.empty()) return;
  std::string msg = "invalid model config:";
  for (const auto& e : errors) msg += "\n  " + e.path + ": " + e.message;
  throw std::invalid_argument(msg);
}

}  // namespace

GPTImpl::GPTImpl(const ModelConfig& config) : config_(config) {
  throw_if_invalid(config);
  const int64_t C = config.n_embd;
  wte = register_module("wte", torch::nn::Embedding(config.padded_vocab(), C));
  wpe = register_module("wpe", torch::nn::Embedding(config.block_size, C));
  drop = register_module("drop", torch::nn::Dropout(config.dropout));
  h = register_module("h", torch::nn::ModuleList());
  for (int i = 0; i < config.n_layer; ++i) {
    Block block(config, i);
    h->push_back(block);
    blocks_.push_back(block.ptr());
  }
  ln_f = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
  init_weights();
}

void GPTImpl::init_weights() {
  torch::NoGradGuard no_grad;
  const double std = 0.02;
  const double residual_std = std / std::sqrt(2.0 * config_.n_layer);  // GPT-2: residual projections
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* linear = module->as<torch::nn::Linear>()) {
      linear->weight.normal_(0.0, std);
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* embedding = module->as<torch::nn::Embedding>()) {
      embedding->weight.normal_(0.0, std);
    }
  }
  for (auto& p : named_parameters()) {
    const auto& name = p.key();
    if (ends_with(name, "attn.c_proj.weight") || ends_with(name, "mlp.c_proj.weight")) {
      p.value().normal_(0.0, residual_std);
    } else if (ends_with(name, "q_to_latent")) {
      p.value().normal_(0.0, std);
    } else if (ends_with(name, "gate_to_heads.bias")) {
      p.value().fill_(2.0);  // "mostly open" (sigmoid 2 = 0.88)
    }
  }
}

torch::Tensor GPTImpl::embed(const torch::Tensor& idx, int64_t start_pos, const torch::Tensor& tied_grad) {
  if (idx.dim() != 2) throw std::invalid_argument("GPT: idx must be [B, T] token ids");
  const int64_t T = idx.size(1);
  if (start_pos + T > config_.block_size) {
    throw std::invalid_argument("GPT: position " + std::to_string(start_pos + T) + " exceeds block_size " +
                                std::to_string(config_.block_size) + "; use a shorter sequence or a larger block");
  }
  auto pos = torch::arange(start_pos, start_pos + T, torch::TensorOptions().dtype(torch::kLong).device(idx.device()));
  const torch::Tensor tokens = tied_grad.defined() ? fused::tied_embedding(idx, wte->weight, tied_grad) : wte(idx);
  return drop(tokens + wpe(pos));  // [B, T, C]
}

torch::Tensor GPTImpl::logits_from(const torch::Tensor& x) {
  return F::linear(ln_f(x), wte->weight);  // tied head: [B, T, V_padded]
}

bool fused_kernels_built() {
#ifdef RATIO_WITH_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

// What the fused ops cast to bf16 in a forward: every linear's weight and bias that fused::linear,
// linear_gelu or shared_input_linears take (those with a bias), and the tied head's weight.
std::vector<torch::Tensor> GPTImpl::fused_linear_params() {
  std::vector<torch::Tensor> params = {wte->weight};
  for (auto& module : modules(/*include_self=*/false))
    if (auto* linear = module->as<LinearImpl>(); linear != nullptr && linear->bias.defined()) {
      params.push_back(linear->weight);
      params.push_back(linear->bias);
    }
  return params;
}

void GPTImpl::set_fused_kernels(bool on) {
  fused_kernels_ = on;
  for (auto& block : blocks_) block->set_fused_kernels(on);
  for (auto& module : modules(/*include_self=*/false))
    if (auto* linear = module->as<LinearImpl>()) {
      linear->set_fused(on);
    } else if (auto* attention = module->as<AttentionImpl>()) {
      attention->set_fused(on);
    }
}

torch::Tensor LinearImpl::forward(const torch::Tensor& input) {
  if (fused_ && bias.defined() && fused::supports_linear_gelu(input)) return fused::linear(input, weight, bias);
  return torch::linear(input, weight, bias);
}

ForwardOutput GPTImpl::forward(const torch::Tensor& idx, const torch::Tensor& targets) {
  const bool fused_head = targets.defined() && fused_kernels_ && fused::supports_classifier(idx);
  // Training through the fused classifier: the tied weight's two gradients meet in one buffer.
  torch::Tensor tied_grad;
  if (fused_head && torch::GradMode::is_enabled() && wte->weight.requires_grad())
    tied_grad = fused::tied_gradient(wte->weight);
  std::optional<fused::Bf16Weights> bf16_weights;  // the fused ops' weights cast in a few launches
  if (fused_head) bf16_weights.emplace(fused_linear_params());
  auto x = embed(idx, 0, tied_grad);
  torch::Tensor pending;      // the last MLP output, added by the next norm
  CrossLayerContext context;  // passed block to block within this call only
  for (auto& block : blocks_) {
    auto out = block->forward(x, pending, context);
    x = out.x;
    pending = out.pending;
    context = out.context;
  }
  const torch::Tensor normed = add_and_norm(fused_kernels_, x, pending, ln_f).second;  // [B, T, C]
  ForwardOutput result;
  if (fused_head) {
    result.loss = fused::classifier_loss(normed, wte->weight, targets, 0, tied_grad);  // tied head; no logits at all
    return result;
  }
  result.logits = F::linear(normed, wte->weight);  // tied head: [B, T, V_padded]
  if (targets.defined()) {
    const int64_t V = result.logits.size(-1);
    result.loss = F::cross_entropy(result.logits.view({-1, V}).to(torch::kFloat32), targets.reshape({-1}),
                                   F::CrossEntropyFuncOptions().ignore_index(-1));
  }
  return result;
}

torch::Tensor GPTImpl::forward_cached(const torch::Tensor& idx, KVCache& cache) {
  if (cache.layers.empty()) cache.layers.resize(blocks_.size());
  if (cache.layers.size() != blocks_.size()) throw std::invalid_argument("forward_cached: cache has the wrong layer count");
  auto x = embed(idx, cache.length());
  CrossLayerContext context;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    auto out = blocks_[i]->forward_cached(x, context, cache.layers[i], cache.dtype);
    x = out.x;
    context = out.context;
  }
  return logits_from(x);
}

// ---- parameter report and introspection -------------------------------------------------------------

namespace {

// Category of a parameter by its path (docs/architecture.md, "Parameter report categories").
std::string category_of(const std::string& name) {
  auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
  if (has(".coupler.")) return "mlp_latent";
  if (has(".attn.q_proj.") || has(".attn.k_down.") || has(".attn.v_down.") || has(".attn.v_up.") ||
      ends_with(name, ".attn.q_to_latent")) {
    return "mla";
  }
  if (ends_with(name, ".attn.ra_alpha")) return "ra";
  if (has(".attn.ct_")) return "ra_ct";
  if (ends_with(name, ".attn.gate_alpha") || has(".mlp.gate_proj.") || has(".mlp.gate_to_heads.")) return "mlp_gate";
  if (has(".mlp.cross_")) return "mlp_cross";
  if (has(".mlp.c_fc.") || has(".mlp.c_proj.") || ends_with(name, ".mlp.ratio")) return "ratio";
  if (name.rfind("wte.", 0) == 0 || name.rfind("wpe.", 0) == 0 || name.rfind("ln_f.", 0) == 0 ||
      has(".ln_1.") || has(".ln_2.") || has(".attn.c_attn.") || has(".attn.c_proj.")) {
    return "baseline";
  }
  throw std::logic_error("param_report: parameter '" + name +
                         "' has no category; add it to docs/architecture.md and model/gpt.cpp");
}

}  // namespace

ParamCounts GPTImpl::param_report(int64_t pruned) const {
  ParamCounts p;
  auto& cat = p.by_mechanism;
  for (const char* c : {"baseline", "mla", "ra", "ra_ct", "mlp_gate", "mlp_cross", "mlp_latent", "ratio"}) cat[c] = 0;
  int64_t mla_layers = 0;
  for (const auto& param : named_parameters()) {
    cat[category_of(param.key())] += param.value().numel();
    p.total += param.value().numel();
    if (ends_with(param.key(), ".attn.q_proj.weight")) ++mla_layers;
  }
  // The baseline is GPT-2 of the same shape: MLA is counted as the difference to the c_attn it
  // replaces, the MLP width as the difference to 4C.
  const int64_t C = wte->weight.size(1), N = int64_t(blocks_.size());
  const int64_t c_attn = linear_count(C, 3 * C), mlp_4c = mlp_count(C, 4 * C);
  cat["mla"] -= mla_layers * c_attn;
  cat["ratio"] -= N * mlp_4c;
  cat["baseline"] += mla_layers * c_attn + N * mlp_4c;
  p.baseline = cat["baseline"];
  p.added = p.total - p.baseline;
  p.effective = p.total - pruned;
  const int64_t M = config_.mlp_hidden();
  for (int64_t width : effective_mlp_widths()) p.effective -= mlp_count(C, M) - mlp_count(C, width);
  return p;
}

std::vector<int64_t> GPTImpl::effective_mlp_widths() const {
  std::vector<int64_t> widths;
  if (!config_.learned_ratio.enabled) return widths;
  for (const auto& block : blocks_) {
    auto* mlp = block->named_children()["mlp"]->as<MlpImpl>();
    widths.push_back(mlp->effective_width());
  }
  return widths;
}

std::vector<std::pair<std::string, torch::Tensor>> GPTImpl::mixing_parameters() const {
  static const std::vector<std::string> suffixes = {
      ".ra_alpha", ".ct_scale", ".ct_bias", ".ct_alpha", ".gate_alpha", ".gate_to_heads.bias", ".cross_alpha",
      ".head_gate", ".alpha_mlp", ".alpha_attn", ".mlp.ratio"};
  std::vector<std::pair<std::string, torch::Tensor>> out;
  auto collect = [&](const std::string& name, const torch::Tensor& t) {
    for (const auto& s : suffixes) {
      if (ends_with(name, s)) {
        out.emplace_back(name, t);
        return;
      }
    }
  };
  for (const auto& p : named_parameters()) collect(p.key(), p.value());
  for (const auto& b : named_buffers()) collect(b.key(), b.value());  // a frozen RA alpha is a buffer
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> GPTImpl::key_parameters() const {
  static const std::vector<std::string> suffixes = {
      ".ra_alpha", ".ct_alpha", ".gate_alpha", ".cross_alpha", ".alpha_mlp", ".alpha_attn",
      ".gate_proj.weight", ".gate_to_heads.weight", ".q_to_latent", ".latent_down.weight",
      ".attn_to_mlp.weight", ".mlp_to_attn.weight", ".tied.weight", ".head_gate", ".mlp.ratio"};
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : named_parameters()) {
    for (const auto& s : suffixes) {
      if (ends_with(p.key(), s)) {
        out.emplace_back(p.key(), p.value());
        break;
      }
    }
  }
  return out;
}

std::vector<LayerAttentionStats> GPTImpl::attention_stats(const torch::Tensor& idx) {
  torch::NoGradGuard no_grad;
  const bool was_training = is_training();
  eval();  // dropout would perturb the weights
  auto x = embed(idx, 0);
  torch::Tensor pending;
  CrossLayerContext context;
  std::vector<LayerAttentionStats> stats;
  for (auto& block : blocks_) {
    auto out = block->forward(x, pending, context, /*keep_weights=*/true);
    x = out.x;
    pending = out.pending;
    context = out.context;
    const auto& A = out.weights;  // [B, H, T, T] fp32
    LayerAttentionStats s;
    s.entropy = (-(A * A.clamp_min(1e-30).log()).sum(-1)).mean().item<double>();
    // Pairs j < i: S[i, j] against the reciprocal score S[j, i].
    const int64_t T = A.size(-1);
    auto below = torch::ones({T, T}, A.options().dtype(torch::kBool)).tril(-1);
    auto S = out.raw_scores.to(torch::kFloat64);
    auto fwd = S.masked_select(below), rev = S.transpose(-2, -1).masked_select(below);
    auto fc = fwd - fwd.mean(), rc = rev - rev.mean();
    const double denom = std::sqrt((fc.square().sum() * rc.square().sum()).item<double>());
    s.reciprocity = denom > 0 ? (fc * rc).sum().item<double>() / denom : 0.0;
    stats.push_back(s);
  }
  train(was_training);
  return stats;
}

}  // namespace ratio::model

#include "matrix/params.h"

#include <algorithm>
#include <cmath>

namespace ratio {

namespace {

int64_t linear(int64_t in, int64_t out, bool bias = true) { return in * out + (bias ? out : 0); }

// Embeddings, final norm, and per layer: two norms, standard attention, a 4C MLP.
int64_t gpt2_baseline(const ModelConfig& m) {
  const int64_t C = m.n_embd, N = m.n_layer;
  const int64_t per_layer = 2 * (2 * C) + linear(C, 3 * C) + linear(C, C) + linear(C, 4 * C) + linear(4 * C, C);
  return int64_t(m.padded_vocab()) * C + int64_t(m.block_size) * C + 2 * C + N * per_layer;
}

int64_t mlp_params(int64_t C, int64_t M) { return linear(C, M) + linear(M, C); }

}  // namespace

ParamCounts param_formula(const ModelConfig& m) {
  const int64_t C = m.n_embd, H = m.n_head, D = m.head_dim(), N = m.n_layer;
  const int64_t M = m.mlp_hidden(), L = m.attn_latent_dim(), G = m.mlp_gate.gate_dim;
  const int64_t producers = N - 1, consumers = N - 1;  // cross-layer mechanisms (docs/architecture.md)
  const bool gates = !m.force_gates_open;

  ParamCounts p;
  auto& cat = p.by_mechanism;
  cat["baseline"] = gpt2_baseline(m);

  // MLA replaces c_attn's K and V (and Q's fused projection) by q_proj, latents and v_up.
  cat["mla"] = 0;
  if (m.mla.enabled) {
    const int64_t mla = linear(C, C) + 2 * linear(C, L) + linear(L, C) + H * D * L;
    cat["mla"] = N * (mla - linear(C, 3 * C));
  }

  cat["ra"] = (m.ra.enabled && m.ra.learnable) ? N : 0;

  cat["ra_ct"] = 0;
  if (m.ra_ct.enabled && gates) cat["ra_ct"] = N * (2 * H + (m.ra_ct.apply == "weights" ? 1 : 0));

  // MLP width: difference from the 4C MLP of the baseline, plus one learned ratio per layer.
  cat["ratio"] = N * (mlp_params(C, M) - mlp_params(C, 4 * C)) + (m.learned_ratio.enabled ? N : 0);

  cat["mlp_gate"] = 0;
  if (m.mlp_gate.enabled && gates) {
    cat["mlp_gate"] = producers * (linear(M, G) + linear(G, H)) + consumers * 1;
  }

  cat["mlp_cross"] = m.mlp_cross.enabled ? N * (linear(M, M) + 1) : 0;

  cat["mlp_latent"] = 0;
  if (m.mlp_latent.enabled) {
    int64_t t = m.mla.enabled ? 0 : N * linear(C, L);  // the coupler's own down-projection
    if (m.mlp_latent.tying == "tied_transpose") {
      t += N * M * L;
    } else {  // untied, per_head_scalar: attn_to_mlp everywhere, mlp_to_attn in producers
      t += N * M * L + producers * M * L;
      if (m.mlp_latent.tying == "per_head_scalar" && gates) t += producers * H;
    }
    t += N /* alpha_mlp */ + consumers /* alpha_attn */;
    cat["mlp_latent"] = t;
  }

  for (const auto& [name, n] : cat) p.total += n;
  p.baseline = cat["baseline"];
  p.added = p.total - p.baseline;

  p.effective = p.total;
  if (m.learned_ratio.enabled) {
    // Effective width round(ratio * C) clamped to [0, M], at the initial ratio (docs/architecture.md).
    const int64_t m_eff = std::clamp<int64_t>(std::lround(m.learned_ratio.init * C), 0, M);
    p.effective -= N * (mlp_params(C, M) - mlp_params(C, m_eff));
  }
  return p;
}

}  // namespace ratio

// Autograd wrappers of the fused CUDA kernels (model/fused.h, model/kernels/kernels.h).
#include "model/fused.h"

#ifdef RATIO_WITH_CUDA_KERNELS
#include <algorithm>
#include <optional>
#include <unordered_map>

#include "model/fused_launch.h"
#include "model/kernels/kernels.h"
#include "model/torch_compat.h"
#endif

namespace ratio::model::fused {

torch::Tensor scatter_pairs(const torch::Tensor& keys, const torch::Tensor& values, int64_t Tk) {
  return torch::zeros({keys.size(0), keys.size(1), Tk}, values.options())
      .scatter_add_(-1, keys.clamp_min(0).to(torch::kLong), values);
}

#ifdef RATIO_WITH_CUDA_KERNELS

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

kernels::DType kernel_dtype(const torch::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kBFloat16,
              "fused kernels take fp32 or bf16 tensors, got ", t.scalar_type());
  return t.scalar_type() == torch::kBFloat16 ? kernels::DType::kBFloat16 : kernels::DType::kFloat32;
}

float* f32(const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// ---- residual add + layer norm ---------------------------------------------------------------------

struct NormStats {
  torch::Tensor mean, rstd;  // [N] fp32
};

// Runs the forward kernel; `sum` is written only when addend is defined.
NormStats layer_norm_forward(const torch::Tensor& x, const torch::Tensor& addend, const torch::Tensor& sum,
                             const torch::Tensor& y, const torch::Tensor& weight, const torch::Tensor& bias,
                             double eps) {
  const int64_t C = x.size(-1), N = x.numel() / C;
  NormStats stats{at::empty({N}, x.options()), at::empty({N}, x.options())};
  check_launch(kernels::add_layernorm_forward(f32(x), addend.defined() ? addend.data_ptr() : nullptr,
                                              addend.defined() ? kernel_dtype(addend) : kernels::DType::kFloat32,
                                              addend.defined() ? f32(sum) : nullptr, y.data_ptr(), kernel_dtype(y),
                                              f32(stats.mean), f32(stats.rstd), f32(weight), f32(bias), N, C,
                                              static_cast<float>(eps), current_stream()),
               "add_layernorm_forward");
  return stats;
}

struct NormGrads {
  torch::Tensor dx, daddend, dweight, dbias;
};

// dy: gradient of the normalised output; dsum: of the sum (the residual stream), or undefined.
NormGrads layer_norm_backward(torch::Tensor dy, torch::Tensor dsum, const torch::Tensor& sum, const torch::Tensor& mean,
                              const torch::Tensor& rstd, const torch::Tensor& weight, bool bf16_addend) {
  const int64_t C = sum.size(-1), N = sum.numel() / C;
  dy = dy.contiguous();
  if (dsum.defined()) dsum = dsum.to(torch::kFloat32).contiguous();
  NormGrads g;
  g.dx = at::empty_like(sum);
  if (bf16_addend) g.daddend = at::empty(sum.sizes(), sum.options().dtype(torch::kBFloat16));
  g.dweight = at::empty({C}, weight.options());
  g.dbias = at::empty({C}, weight.options());
  auto partial = at::empty({kernels::layernorm_backward_partial_floats(N, C)}, sum.options());
  check_launch(kernels::add_layernorm_backward(dy.data_ptr(), kernel_dtype(dy), f32(dsum), f32(sum), f32(mean),
                                               f32(rstd), f32(weight), f32(g.dx),
                                               g.daddend.defined() ? g.daddend.data_ptr() : nullptr, f32(g.dweight),
                                               f32(g.dbias), f32(partial), N, C, current_stream()),
               "add_layernorm_backward");
  if (!bf16_addend) g.daddend = g.dx;
  return g;
}

torch::Tensor normalised_output(const torch::Tensor& x) {
  const bool bf16 = compat::cuda_autocast_enabled();
  return at::empty(x.sizes(), x.options().dtype(bf16 ? torch::kBFloat16 : torch::kFloat32));
}

// y = LayerNorm(x).
struct LayerNormFunction : torch::autograd::Function<LayerNormFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& weight,
                               const torch::Tensor& bias, double eps) {
    auto x = x_in.contiguous();
    auto y = normalised_output(x);
    NormStats stats = layer_norm_forward(x, {}, {}, y, weight, bias, eps);
    ctx->save_for_backward({x, stats.mean, stats.rstd, weight});
    return {y};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    NormGrads g = layer_norm_backward(grads[0], {}, saved[0], saved[1], saved[2], saved[3], /*bf16_addend=*/false);
    return {g.dx, g.dweight, g.dbias, torch::Tensor()};
  }
};

// {sum, y} = {x + addend, LayerNorm(x + addend)}.
struct AddLayerNormFunction : torch::autograd::Function<AddLayerNormFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& addend_in,
                               const torch::Tensor& weight, const torch::Tensor& bias, double eps) {
    auto x = x_in.contiguous(), addend = addend_in.contiguous();
    auto sum = at::empty_like(x);
    auto y = normalised_output(x);
    NormStats stats = layer_norm_forward(x, addend, sum, y, weight, bias, eps);
    ctx->save_for_backward({sum, stats.mean, stats.rstd, weight});
    ctx->saved_data["bf16_addend"] = addend.scalar_type() == torch::kBFloat16;
    return {sum, y};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool bf16_addend = ctx->saved_data["bf16_addend"].toBool();
    const torch::Tensor& dsum = grads[0];
    const torch::Tensor& dy = grads[1];
    if (!dy.defined()) {
      // Only the residual stream carries a gradient: it passes through the add unchanged.
      if (!dsum.defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
      return {dsum, bf16_addend ? dsum.to(torch::kBFloat16) : dsum, torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
    NormGrads g = layer_norm_backward(dy, dsum, saved[0], saved[1], saved[2], saved[3], bf16_addend);
    return {g.dx, g.daddend, g.dweight, g.dbias, torch::Tensor()};
  }
};

}  // namespace

// ---- bf16 copies of the parameters ------------------------------------------------------------------

struct Bf16Weights::Copies {
  std::unordered_map<const c10::TensorImpl*, torch::Tensor> by_param;  // [same shape] bf16

  // param's copy, or an undefined tensor.
  torch::Tensor of(const torch::Tensor& param) const {
    const auto found = by_param.find(param.unsafeGetTensorImpl());
    return found == by_param.end() ? torch::Tensor() : found->second;
  }
};

namespace {

thread_local const Bf16Weights::Copies* active_copies = nullptr;  // the innermost live Bf16Weights

// t in bf16, contiguous: the live Bf16Weights' copy where it has one, else a cast.
torch::Tensor bf16_of(const torch::Tensor& t) {
  if (active_copies != nullptr)
    if (torch::Tensor copy = active_copies->of(t); copy.defined()) return copy;
  return t.to(torch::kBFloat16).contiguous();
}

}  // namespace

Bf16Weights::Bf16Weights(const std::vector<torch::Tensor>& params)
    : copies_(std::make_unique<Copies>()), outer_(active_copies) {
  kernels::CastList list{};
  auto launch = [&] {
    check_launch(kernels::cast_to_bf16(list, current_stream()), "cast_to_bf16");
    list = kernels::CastList{};
  };
  for (const torch::Tensor& p : params) {
    if (!p.defined() || !p.is_cuda() || p.scalar_type() != torch::kFloat32 || !p.is_contiguous()) continue;
    if (copies_->of(p).defined()) continue;
    torch::Tensor copy = at::empty(p.sizes(), p.options().dtype(torch::kBFloat16));
    list.tensors[list.count++] = {p.data_ptr<float>(), copy.data_ptr(), p.numel()};
    copies_->by_param.emplace(p.unsafeGetTensorImpl(), copy);
    if (list.count == kernels::kCastTensorsPerList) launch();
  }
  if (list.count > 0) launch();
  active_copies = copies_.get();
}

Bf16Weights::~Bf16Weights() { active_copies = outer_; }

torch::Tensor Bf16Weights::copy_of(const torch::Tensor& param) const { return copies_->of(param); }

namespace {

// ---- cuBLASLt matmuls -------------------------------------------------------------------------------

// Scratch for one cuBLASLt matmul, from the caching allocator (capture-safe, reused across calls).
torch::Tensor matmul_workspace(const torch::Tensor& like) {
  return at::empty({static_cast<int64_t>(kernels::kMatmulWorkspaceBytes)}, like.options().dtype(torch::kUInt8));
}

// True when the matmul was launched; false when cuBLASLt does not take it (the caller's ATen path runs).
bool launched(const kernels::MatmulStatus& status) {
  TORCH_CHECK(status.code != kernels::MatmulStatus::kFailed, "cuBLASLt matmul failed: ", status.error);
  return status.code == kernels::MatmulStatus::kLaunched;
}

// dweight = dyᵀ·x, or dweight += dyᵀ·x with `accumulate`, from dy [N, M] and x [N, C] (bf16 rows)
// into dweight [M, C] (fp32, contiguous), in fp32 out of the matmul itself; where cuBLASLt has no
// algorithm, a bf16 product copied or added.
void weight_grad(const torch::Tensor& dy_rows, const torch::Tensor& x_rows, const torch::Tensor& dweight,
                 bool accumulate = false) {
  const int64_t N = dy_rows.size(0), M = dy_rows.size(1), C = x_rows.size(1);
  if (launched(kernels::weight_grad_fp32(dy_rows.data_ptr(), x_rows.data_ptr(), f32(dweight), N, M, C,
                                         matmul_workspace(dy_rows).data_ptr(), current_stream(), accumulate)))
    return;
  auto product = at::mm(dy_rows.t(), x_rows);  // [M, N]·[N, C] bf16
  if (accumulate)
    dweight.add_(product);
  else
    dweight.copy_(product);
}

// A linear's parameter gradients from dy [N, M] and x [N, C] (bf16 rows), written into `dweight`
// [M, C] and `dbias` [M] (fp32, contiguous; dbias may be undefined). The bias gradient is our column
// sum: cuBLASLt's BGRADB epilogue was measured as a separate kernel of its own, slower than ours
// (docs/performance.md).
void linear_param_grads(const torch::Tensor& dy_rows, const torch::Tensor& x_rows, const torch::Tensor& dweight,
                        const torch::Tensor& dbias) {
  const int64_t N = dy_rows.size(0), M = dy_rows.size(1);
  if (dbias.defined()) {
    auto partial = at::empty({kernels::gelu_backward_partial_floats(N, M)}, dbias.options());
    check_launch(kernels::bias_grad(dy_rows.data_ptr(), f32(dbias), f32(partial), N, M, current_stream()), "bias_grad");
  }
  weight_grad(dy_rows, x_rows, dweight);
}

// ---- classifier -------------------------------------------------------------------------------------

// Rows per chunk: by default at most 1 GiB of bf16 logits alive at once (16 · 1024 rows of GPT-2's
// 50304 take two chunks), so the head's memory does not grow with the batch.
int64_t classifier_chunk_rows(int64_t N, int64_t V, int64_t asked) {
  const int64_t budget_rows = (int64_t(1) << 29) / std::max<int64_t>(V, 1);
  return std::clamp<int64_t>(asked > 0 ? asked : budget_rows, 1, std::max<int64_t>(N, 1));
}

struct ClassifierLossFunction : torch::autograd::Function<ClassifierLossFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& targets, bool want_grad, int64_t chunk_rows,
                               const std::optional<torch::Tensor>& tied) {
    const torch::Tensor tied_grad = tied.value_or(torch::Tensor());
    const int64_t C = x.size(-1), N = x.numel() / C, V = weight.size(0);
    auto x_rows = x.reshape({N, C}).to(torch::kBFloat16).contiguous();  // [N, C]
    auto w_bf16 = bf16_of(weight);                                       // [V, C]
    auto target_rows = targets.reshape({N}).to(torch::kLong).contiguous();
    auto inv_count = target_rows.ne(-1).sum().to(torch::kFloat32).reciprocal();  // [] device scalar, no sync
    auto losses = at::empty({N}, x.options().dtype(torch::kFloat32));
    torch::Tensor dx, dweight;
    if (want_grad) {
      dx = at::empty({N, C}, x_rows.options());
      dweight = tied_grad.defined() ? tied_grad : at::empty({V, C}, x.options().dtype(torch::kFloat32));
    }

    const int64_t chunk = classifier_chunk_rows(N, V, chunk_rows);
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t n = std::min(chunk, N - r0);
      auto x_chunk = x_rows.narrow(0, r0, n);
      auto logits = at::mm(x_chunk, w_bf16.t());  // [n, V] bf16, becomes dlogits in place
      check_launch(kernels::cross_entropy_forward_backward(logits.data_ptr(), V, target_rows.data_ptr<int64_t>() + r0,
                                                           f32(losses) + r0, f32(inv_count), want_grad, n, V,
                                                           current_stream()),
                   "cross_entropy_forward_backward");
      if (!want_grad) continue;
      auto dx_chunk = dx.narrow(0, r0, n);
      at::mm_out(dx_chunk, logits, w_bf16);                       // [n, V]·[V, C]
      weight_grad(logits, x_chunk, dweight, /*accumulate=*/r0 > 0);  // [V, n]·[n, C] fp32, summed over chunks
    }
    if (want_grad) {
      ctx->saved_data["dx"] = dx;
      ctx->saved_data["dweight"] = dweight;
      ctx->saved_data["tied"] = tied_grad.defined();
      ctx->saved_data["x_sizes"] = x.sizes().vec();
      ctx->saved_data["x_dtype"] = x.scalar_type();
    }
    return {(losses.sum() * inv_count)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const torch::Tensor g = grads[0].to(torch::kFloat32);  // [] scale of the loss (1, or 1/grad_accum)
    auto dx = ctx->saved_data["dx"].toTensor();
    auto dweight = ctx->saved_data["dweight"].toTensor();
    const auto x_sizes = ctx->saved_data["x_sizes"].toIntVector();
    const auto x_dtype = ctx->saved_data["x_dtype"].toScalarType();
    auto dx_out = (dx.to(torch::kFloat32) * g).to(x_dtype).view(x_sizes);
    ctx->saved_data.erase("dweight");  // the one reference left is returned or the tied embedding's
    dweight.mul_(g);
    // Tied: the embedding's backward, which runs after this one, adds its rows to the same buffer and
    // returns it as the weight's whole gradient.
    if (ctx->saved_data["tied"].toBool()) dweight = torch::Tensor();
    return {dx_out, dweight, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// ---- tied token embedding ---------------------------------------------------------------------------

struct TiedEmbeddingFunction : torch::autograd::Function<TiedEmbeddingFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& idx, const torch::Tensor& weight,
                               const torch::Tensor& tied_grad) {
    ctx->saved_data["idx"] = idx;
    ctx->saved_data["tied_grad"] = tied_grad;
    return {at::embedding(weight, idx)};  // [.., C] fp32
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    torch::Tensor grad = ctx->saved_data["tied_grad"].toTensor();  // [V, C] fp32: the classifier's part
    ctx->saved_data.erase("tied_grad");  // handed over whole: autograd may then keep it as .grad
    const torch::Tensor idx = ctx->saved_data["idx"].toTensor();
    if (grads[0].defined()) {
      const int64_t V = grad.size(0), C = grad.size(1), N = idx.numel();
      auto dout = grads[0].to(torch::kFloat32).contiguous().view({N, C});
      auto [sorted_ids, order] = at::sort(idx.reshape({N}), /*stable=*/true, /*dim=*/0, /*descending=*/false);
      auto partial = at::empty({kernels::embedding_backward_partial_floats(N, C)}, grad.options());
      check_launch(kernels::embedding_backward_add(sorted_ids.data_ptr<int64_t>(), order.data_ptr<int64_t>(), f32(dout),
                                                   f32(grad), f32(partial), N, C, V, current_stream()),
                   "embedding_backward_add");
    }
    return {torch::Tensor(), grad, torch::Tensor()};
  }
};

// ---- mechanism 1's prefix mean ---------------------------------------------------------------------

// out = the causal prefix mean of z over time, [B, T, G] in z's dtype.
struct PrefixMeanFunction : torch::autograd::Function<PrefixMeanFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& z_in) {
    auto z = z_in.contiguous();
    auto out = at::empty_like(z);
    check_launch(kernels::prefix_mean_forward(z.data_ptr(), kernel_dtype(z), out.data_ptr(), kernel_dtype(out),
                                              z.size(0), z.size(1), z.size(2), current_stream()),
                 "prefix_mean_forward");
    ctx->saved_data["z_dtype"] = z.scalar_type();
    return {out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {torch::Tensor()};
    auto dout = grads[0].contiguous();  // [B, T, G]
    if (dout.scalar_type() != torch::kBFloat16) dout = dout.to(torch::kFloat32);
    auto dz = at::empty(dout.sizes(), dout.options().dtype(ctx->saved_data["z_dtype"].toScalarType()));
    check_launch(kernels::prefix_mean_backward(dout.data_ptr(), kernel_dtype(dout), dz.data_ptr(), kernel_dtype(dz),
                                               dout.size(0), dout.size(1), dout.size(2), current_stream()),
                 "prefix_mean_backward");
    return {dz};
  }
};

// ---- mechanism 2's Ā·H with K entries a row -------------------------------------------------------

kernels::MixRowsArgs mix_rows_args(const torch::Tensor& keys32, const torch::Tensor& h) {
  kernels::MixRowsArgs args{};
  args.B = int(h.size(0));
  args.T = int(keys32.size(1));
  args.K = int(keys32.size(2));
  args.M = int(h.size(2));
  args.keys = keys32.data_ptr<int32_t>();
  args.h = h.data_ptr();
  args.h_sb = h.stride(0);
  args.h_st = h.stride(1);
  return args;
}

struct MixRowsFunction : torch::autograd::Function<MixRowsFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& values, const torch::Tensor& keys,
                               const torch::Tensor& h) {
    auto values32 = values.to(torch::kFloat32).contiguous();  // [B, T, K]
    auto keys32 = keys.to(torch::kInt).contiguous();          // [B, T, K]
    auto out = at::empty({h.size(0), keys.size(1), h.size(2)}, h.options());
    auto args = mix_rows_args(keys32, h);
    args.values = values32.data_ptr<float>();
    args.out = out.data_ptr();
    check_launch(kernels::mix_rows_forward(args, current_stream()), "mix_rows_forward");
    ctx->save_for_backward({values32, keys32, h});
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &values32 = saved[0], &keys32 = saved[1], &h = saved[2];
    auto dout = grads[0].to(h.scalar_type()).contiguous();  // [B, T, M]
    auto d_values = at::empty_like(values32);
    auto args = mix_rows_args(keys32, h);
    args.dout = dout.data_ptr();
    args.d_values = d_values.data_ptr<float>();
    check_launch(kernels::mix_rows_value_grad(args, current_stream()), "mix_rows_value_grad");
    // dh = Āᵀ·dout with Ā scattered dense in h's dtype, as the dense path computes it: a sum over the
    // rows that chose a key, in the matmul's order rather than one the keys would set.
    auto dense = scatter_pairs(keys32, values32.to(h.scalar_type()), h.size(1));  // [B, T, Tk]
    auto dh = torch::bmm(dense.transpose(1, 2), dout);  // [B, Tk, T]·[B, T, M]
    return {d_values, torch::Tensor(), dh};
  }
};

// ---- linear + gelu ---------------------------------------------------------------------------------

// x_bf16: [.., C]; w_bf16: [M, C]; b_bf16: [M]; all bf16 and contiguous. h and pre: [.., M] bf16.
LinearGeluOutput linear_gelu_bf16(const torch::Tensor& x_bf16, const torch::Tensor& w_bf16,
                                  const torch::Tensor& b_bf16) {
  const int64_t M = w_bf16.size(0), C = w_bf16.size(1), N = x_bf16.numel() / C;
  auto out_sizes = x_bf16.sizes().vec();
  out_sizes.back() = M;
  if (kernels::linear_gelu_epilogue_takes(M)) {
    auto h = at::empty(out_sizes, x_bf16.options()), pre = at::empty(out_sizes, x_bf16.options());
    if (launched(kernels::linear_gelu_forward(x_bf16.data_ptr(), w_bf16.data_ptr(), b_bf16.data_ptr(), h.data_ptr(),
                                              pre.data_ptr(), N, M, C, matmul_workspace(x_bf16).data_ptr(),
                                              current_stream()))) {
      return {h, pre, /*epilogue=*/true};
    }
  }
  auto pre = at::linear(x_bf16, w_bf16, b_bf16);  // cuBLASLt's bias epilogue, then a pass for gelu
  return {at::gelu(pre, "tanh"), pre, /*epilogue=*/false};
}

struct LinearGeluFunction : torch::autograd::Function<LinearGeluFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& bias) {
    auto x_bf16 = x.to(torch::kBFloat16).contiguous();
    auto w_bf16 = bf16_of(weight);
    LinearGeluOutput out = linear_gelu_bf16(x_bf16, w_bf16, bf16_of(bias));
    ctx->save_for_backward({x_bf16, w_bf16, out.pre});
    ctx->saved_data["x_dtype"] = x.scalar_type();
    return {out.h};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x_bf16 = saved[0], &w_bf16 = saved[1], &pre = saved[2];
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
    auto dh = grads[0].to(torch::kBFloat16).contiguous();
    const int64_t M = pre.size(-1), N = pre.numel() / M, C = x_bf16.size(-1);
    auto dpre = at::empty_like(pre);
    auto dbias = at::empty({M}, pre.options().dtype(torch::kFloat32));
    auto partial = at::empty({kernels::gelu_backward_partial_floats(N, M)}, dbias.options());
    check_launch(kernels::gelu_backward_bias_grad(dh.data_ptr(), pre.data_ptr(), dpre.data_ptr(), f32(dbias),
                                                  f32(partial), N, M, current_stream()),
                 "gelu_backward_bias_grad");
    auto dpre_rows = dpre.view({N, M});
    auto dx = at::mm(dpre_rows, w_bf16).view(x_bf16.sizes());  // [N, M]·[M, C]
    auto dweight = at::empty({M, C}, dbias.options());
    linear_param_grads(dpre_rows, x_bf16.view({N, C}), dweight, /*dbias: summed above*/ {});  // [M, N]·[N, C]
    return {dx.to(ctx->saved_data["x_dtype"].toScalarType()), dweight, dbias};
  }
};

// ---- linears of one input (one or several) -------------------------------------------------------------

struct SharedInputLinearsFunction : torch::autograd::Function<SharedInputLinearsFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, at::TensorList weights,
                               at::TensorList biases) {
    auto x_bf16 = x.to(torch::kBFloat16).contiguous();
    variable_list outputs, saved{x_bf16};
    for (size_t i = 0; i < weights.size(); ++i) {
      auto w_bf16 = bf16_of(weights[i]);
      outputs.push_back(at::linear(x_bf16, w_bf16, bf16_of(biases[i])));  // [.., M_i] bf16
      saved.push_back(w_bf16);
    }
    ctx->save_for_backward(saved);
    ctx->set_materialize_grads(false);  // an output nothing read costs no matmuls in the backward
    ctx->saved_data["x_dtype"] = x.scalar_type();
    return outputs;
  }

  // dx = Σ_i dy_i·W_i, each product added onto dx by its matmul (beta = 1) instead of separate adds of
  // the inputs' gradients.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& x_bf16 = saved[0];
    const int64_t C = x_bf16.size(-1), N = x_bf16.numel() / C, count = int64_t(saved.size()) - 1;
    const auto x_rows = x_bf16.view({N, C});
    torch::Tensor dx;  // [N, C] bf16
    variable_list out(1 + 2 * count);  // dx, then the weights', then the biases'; undefined where unused
    for (int64_t i = 0; i < count; ++i) {
      if (!grads[i].defined()) continue;  // an output nothing read: no gradient for its parameters either
      const torch::Tensor& w_bf16 = saved[1 + i];
      const int64_t M = w_bf16.size(0);
      auto dy_rows = grads[i].to(torch::kBFloat16).contiguous().view({N, M});
      dx = dx.defined() ? dx.addmm_(dy_rows, w_bf16) : at::mm(dy_rows, w_bf16);  // [N, M]·[M, C]
      out[1 + i] = at::empty({M, C}, x_bf16.options().dtype(torch::kFloat32));
      out[1 + count + i] = at::empty({M}, out[1 + i].options());
      linear_param_grads(dy_rows, x_rows, out[1 + i], out[1 + count + i]);
    }
    if (dx.defined()) out[0] = dx.view(x_bf16.sizes()).to(ctx->saved_data["x_dtype"].toScalarType());
    return out;
  }
};

}  // namespace

std::vector<torch::Tensor> shared_input_linears(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                                                const std::vector<torch::Tensor>& biases) {
  TORCH_CHECK(weights.size() == biases.size(), "shared_input_linears: one bias per weight");
  return SharedInputLinearsFunction::apply(x, at::TensorList(weights), at::TensorList(biases));
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  return shared_input_linears(x, {weight}, {bias})[0];
}

bool supports_linear_gelu(const torch::Tensor& x) {
  return x.is_cuda() && compat::cuda_autocast_enabled();
}

LinearGeluOutput linear_gelu_forward(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  return linear_gelu_bf16(x.to(torch::kBFloat16).contiguous(), bf16_of(weight), bf16_of(bias));
}

torch::Tensor linear_gelu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  return LinearGeluFunction::apply(x, weight, bias)[0];
}

bool supports_layer_norm(const torch::Tensor& x, const torch::nn::LayerNorm& ln) {
  const auto& w = ln->weight;
  return x.is_cuda() && x.scalar_type() == torch::kFloat32 && x.size(-1) <= kernels::kLayerNormMaxC &&
         w.defined() && ln->bias.defined() && w.scalar_type() == torch::kFloat32 &&
         ln->bias.scalar_type() == torch::kFloat32 && w.dim() == 1;
}

bool supports_classifier(const torch::Tensor& x) {
  return x.is_cuda() && compat::cuda_autocast_enabled() && compat::kTorch2;
}

std::pair<torch::Tensor, torch::Tensor> add_layer_norm(const torch::Tensor& x, const torch::Tensor& addend,
                                                       const torch::nn::LayerNorm& ln) {
  const double eps = ln->options.eps();
  if (!addend.defined()) return {x, LayerNormFunction::apply(x, ln->weight, ln->bias, eps)[0]};
  auto out = AddLayerNormFunction::apply(x, addend, ln->weight, ln->bias, eps);
  return {out[0], out[1]};
}

torch::Tensor classifier_loss(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& targets,
                              int64_t chunk_rows, const torch::Tensor& tied_grad) {
  const bool want_grad = torch::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad());
  // Optional: autograd takes an undefined tensor argument for an input without a device.
  const std::optional<torch::Tensor> tied = tied_grad.defined() ? std::optional<torch::Tensor>(tied_grad) : std::nullopt;
  return ClassifierLossFunction::apply(x, weight, targets, want_grad, chunk_rows, tied)[0];
}

torch::Tensor tied_gradient(const torch::Tensor& weight) {
  return at::empty(weight.sizes(), weight.options().dtype(torch::kFloat32));
}

torch::Tensor tied_embedding(const torch::Tensor& idx, const torch::Tensor& weight, const torch::Tensor& tied_grad) {
  return TiedEmbeddingFunction::apply(idx, weight, tied_grad)[0];
}

bool supports_mix_rows(const torch::Tensor& h, const torch::Tensor& keys) {
  return h.is_cuda() && h.scalar_type() == torch::kBFloat16 && h.dim() == 3 && h.stride(2) == 1 &&
         h.size(2) % 8 == 0 && h.stride(0) % 8 == 0 && h.stride(1) % 8 == 0 &&
         reinterpret_cast<uintptr_t>(h.data_ptr()) % 16 == 0 && keys.dim() == 3 && keys.size(0) == h.size(0) &&
         keys.size(2) >= 1 && keys.size(2) <= kernels::kMixRowsMaxK;
}

torch::Tensor mix_rows(const torch::Tensor& values, const torch::Tensor& keys, const torch::Tensor& h) {
  TORCH_CHECK(supports_mix_rows(h, keys), "fused::mix_rows: h must be [B, Tk, M] bf16 on CUDA (M a multiple of 8, "
              "rows 16-byte aligned) and keys [B, T, K] with K ≤ ", kernels::kMixRowsMaxK);
  TORCH_CHECK(values.sizes() == keys.sizes(), "fused::mix_rows: values and keys differ in shape");
  return MixRowsFunction::apply(values, keys, h)[0];
}

bool supports_prefix_mean(const torch::Tensor& z) {
  return z.is_cuda() && z.dim() == 3 && (z.scalar_type() == torch::kFloat32 || z.scalar_type() == torch::kBFloat16);
}

torch::Tensor prefix_mean(const torch::Tensor& z) {
  TORCH_CHECK(supports_prefix_mean(z), "fused::prefix_mean: z must be [B, T, G] fp32 or bf16 on CUDA, got ",
              z.sizes(), " ", z.scalar_type(), " on ", z.device());
  return PrefixMeanFunction::apply(z)[0];
}

#else  // built without the CUDA kernels: nothing is supported, and the model never calls the ops.

bool supports_layer_norm(const torch::Tensor&, const torch::nn::LayerNorm&) { return false; }
bool supports_linear_gelu(const torch::Tensor&) { return false; }

LinearGeluOutput linear_gelu_forward(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "fused::linear_gelu_forward: this build has no CUDA kernels");
}

torch::Tensor linear_gelu(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "fused::linear_gelu: this build has no CUDA kernels");
}
torch::Tensor linear(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "fused::linear: this build has no CUDA kernels");
}
std::vector<torch::Tensor> shared_input_linears(const torch::Tensor&, const std::vector<torch::Tensor>&,
                                                const std::vector<torch::Tensor>&) {
  TORCH_CHECK(false, "fused::shared_input_linears: this build has no CUDA kernels");
}
bool supports_classifier(const torch::Tensor&) { return false; }

std::pair<torch::Tensor, torch::Tensor> add_layer_norm(const torch::Tensor&, const torch::Tensor&,
                                                       const torch::nn::LayerNorm&) {
  TORCH_CHECK(false, "fused::add_layer_norm: this build has no CUDA kernels");
}

torch::Tensor classifier_loss(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, int64_t,
                              const torch::Tensor&) {
  TORCH_CHECK(false, "fused::classifier_loss: this build has no CUDA kernels");
}

struct Bf16Weights::Copies {};
Bf16Weights::Bf16Weights(const std::vector<torch::Tensor>&) : outer_(nullptr) {}
Bf16Weights::~Bf16Weights() = default;
torch::Tensor Bf16Weights::copy_of(const torch::Tensor&) const { return {}; }

torch::Tensor tied_gradient(const torch::Tensor&) { TORCH_CHECK(false, "fused::tied_gradient: this build has no CUDA kernels"); }

torch::Tensor tied_embedding(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "fused::tied_embedding: this build has no CUDA kernels");
}

bool supports_mix_rows(const torch::Tensor&, const torch::Tensor&) { return false; }

torch::Tensor mix_rows(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "fused::mix_rows: this build has no CUDA kernels");
}

bool supports_prefix_mean(const torch::Tensor&) { return false; }

torch::Tensor prefix_mean(const torch::Tensor&) { TORCH_CHECK(false, "fused::prefix_mean: this build has no CUDA kernels"); }

#endif

}  // namespace ratio::model::fused

// Band-limited reciprocal attention as an autograd operation (model/fused_ra.h).
#include "model/fused_ra.h"

#ifdef RATIO_WITH_CUDA_KERNELS
#include <array>
#include <optional>

#include "model/fused_launch.h"
#include "model/kernels/kernels.h"
#endif

namespace ratio::model::fused {

#ifdef RATIO_WITH_CUDA_KERNELS

static_assert(kMaxStatsK <= kernels::kRaTopkMaxK && 2 * kMaxStatsK <= 32, "the statistics' lists fit the kernels");
static_assert(kMaxStatsHeads <= kernels::kRaTopkMaxHeads && kMaxStatsHeads <= kernels::kRaSparseMaxHeads,
              "the statistics' heads fit the kernels");

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// [B, heads, T, D] strides for the kernels; one head broadcast to all gets head stride 0.
kernels::RaStrided strided(const torch::Tensor& t) {
  return {t.data_ptr(), t.stride(0), t.size(1) == 1 ? 0 : t.stride(1), t.stride(2)};
}
kernels::RaStridedOut strided_out(const torch::Tensor& t) {
  return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

bool bf16_on_cuda(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  return q.is_cuda() && q.scalar_type() == torch::kBFloat16 && k.scalar_type() == torch::kBFloat16 &&
         v.scalar_type() == torch::kBFloat16;
}

bool kernel_layout(const torch::Tensor& t) {
  return t.dim() == 4 && t.stride(3) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 &&
         t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 && t.stride(2) % 8 == 0;
}

// The far part: queries at positions window + 1 .. T − 1 against keys at 0 .. T − window − 2, causal.
// Query row a (position a + window + 1) sees key rows b ≤ a, i.e. exactly the keys more than
// `window` back; the lengths are equal, so the causal mask is the same whichever corner it is
// aligned to. MLA's shared key stays one head: cuDNN's attention takes fewer key heads than query
// heads (multi-query attention) and returns the key gradient summed over the heads, instead of one
// per head for ra_band_combine to sum.
struct FarInputs {
  torch::Tensor q, k, v;  // [B, H, T_far, D], k [B, H|1, T_far, Dk]
};
FarInputs far_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t window) {
  const int64_t T = q.size(2), t_far = T - window - 1;
  return {q.narrow(2, window + 1, t_far), k.narrow(2, 0, t_far), v.narrow(2, 0, t_far)};
}

// Every query against every key (causal): the statistics op without RA.
FarInputs whole_range(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) { return {q, k, v}; }

// cuDNN's attention, the kernel SDPA itself picks on Hopper (faster there than FlashAttention-2,
// and it takes MLA's 128-wide keys with 64-wide values); it returns the log-sum-exp the merge needs.
struct FarForward {
  torch::Tensor out;  // [B, H, T_far, Dv]
  torch::Tensor lse;  // [B, H, T_far(, 1)] fp32
  torch::Tensor philox_seed, philox_offset;
};

FarForward far_forward(const FarInputs& f, double scale) {
  auto r = at::_scaled_dot_product_cudnn_attention(f.q, f.k, f.v, /*attn_bias=*/std::nullopt,
                                                   /*compute_log_sumexp=*/true, /*dropout_p=*/0.0,
                                                   /*is_causal=*/true, /*return_debug_mask=*/false, scale);
  return {std::get<0>(r), std::get<1>(r), std::get<6>(r), std::get<7>(r)};
}

// The far part's gradients under the MERGED softmax: given the merged output and log-sum-exp, the
// backward's P = exp(S − lse) and D = dO·O are those of the whole row, so its dS is exactly the far
// scores' share of the gradient.
// philox_seed, philox_offset: the forward's (FarForward).
std::array<torch::Tensor, 3> far_backward(const FarInputs& f, const torch::Tensor& dout, const torch::Tensor& out,
                                          const torch::Tensor& lse, const torch::Tensor& philox_seed,
                                          const torch::Tensor& philox_offset, double scale) {
  const int64_t t_far = f.q.size(2);
  auto r = at::_scaled_dot_product_cudnn_attention_backward(
      dout, f.q, f.k, f.v, out, lse, philox_seed, philox_offset, /*attn_bias=*/{}, /*cum_seq_q=*/{},
      /*cum_seq_k=*/{}, t_far, t_far, /*dropout_p=*/0.0, /*is_causal=*/true, scale);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

kernels::RaBandShape band_shape(const torch::Tensor& q, int64_t window, double scale, const torch::Tensor& alpha) {
  return {int(q.size(0)), int(q.size(1)), int(q.size(2)), int(window), float(scale), alpha.data_ptr<float>()};
}

// One input's gradient from the band's partials and the far part's, in `grad` ([B, heads, T, D]).
void combine(const torch::Tensor& own, const torch::Tensor& prev, const torch::Tensor& far, int64_t far_offset,
             const torch::Tensor& grad) {
  TORCH_CHECK(far.stride(-1) == 1, "ra_band_attention: the far part's gradient has a strided last dimension");
  kernels::RaBandCombineArgs args{int(own.size(0)), int(own.size(1)), int(far.size(1)), int(grad.size(1)),
                                  int(grad.size(2)), int(grad.size(3)), own.data_ptr(), prev.data_ptr(),
                                  strided(far), far.size(2), far_offset, strided_out(grad)};
  check_launch(kernels::ra_band_combine(args, current_stream()), "ra_band_combine");
}

// The far part's output as cuDNN's backward should see it when each row's D = dO·O must come out
// shifted by `shift` (RA-CT's and mechanism 2's sparse terms, ra_sparse.cu): O' = O + shift/|dO|²·dO
// gives dO·O' = dO·O + shift. A row whose dO is exactly zero keeps D = dO·O (its shift is lost; its
// sparse terms still reach q and k through the correction). bf16 O' rounds D to about 2⁻⁸ of
// |shift|, the precision cuDNN's bf16 dS has anyway.
// O' has exactly the strides of the band op's output rows (`out`, a narrow of [B, T, H, Dv]). Laid out
// otherwise, MLA's dk came out NaN or wrong whenever the band op had run on the same shapes before in
// the process, and right when run alone: as if PyTorch reused the cuDNN backward graph built for the
// first call's strides. With these strides the CUDA tests pass in any order.
// Returns rows first_row .. first_row + rows − 1 of O', one pass of ra_sparse.cu's ra_shift_output
// over the whole dO and shift [B, H, T] (it was eight elementwise passes in fp32).
torch::Tensor shifted_output(const torch::Tensor& out, int64_t first_row, int64_t rows, const torch::Tensor& dout,
                             const torch::Tensor& shift) {
  auto shifted = at::empty_strided(out.sizes(), out.strides(), out.options());
  kernels::RaShiftOutputArgs args{int(out.size(0)), int(out.size(1)), int(out.size(2)), int(first_row), int(rows),
                                  int(out.size(3)), strided(dout), strided(out), shift.data_ptr<float>(),
                                  strided_out(shifted)};
  check_launch(kernels::ra_shift_output(args, current_stream()), "ra_shift_output");
  return shifted.narrow(2, first_row, rows);
}

// The sparse part's dense matrix M [B, T, H, T] (ra_sparse.cu) into the gradients:
// dq += scale·M·K and dk += scale·Mᵀ·Q, per batch row. MLA's shared key makes both one matmul over
// the (position, head) rows: dk sums the heads' contributions in its contraction.
void add_sparse_gradients(const torch::Tensor& m, const torch::Tensor& q, const torch::Tensor& k, double scale,
                          const torch::Tensor& dq, const torch::Tensor& dk) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3);
  if (k.size(1) == 1) {
    auto m_rows = m.view({B, T * H, T});                      // rows (i, h)
    auto q_rows = q.transpose(1, 2).reshape({B, T * H, Dk});  // a view when q is laid out [B, T, H, Dk]
    auto k_rows = k.select(1, 0);                             // [B, T, Dk]
    auto dq_rows = dq.transpose(1, 2).view({B, T * H, Dk});
    auto dk_rows = dk.select(1, 0);
    dq_rows.baddbmm_(m_rows, k_rows, /*beta=*/1.0, /*alpha=*/scale);
    dk_rows.baddbmm_(m_rows.transpose(1, 2), q_rows, /*beta=*/1.0, /*alpha=*/scale);
    return;
  }
  for (int64_t b = 0; b < B; ++b) {
    auto m_heads = m[b].transpose(0, 1);  // [H, T, T]
    dq[b].baddbmm_(m_heads, k[b], 1.0, scale);
    dk[b].baddbmm_(m_heads.transpose(1, 2), q[b], 1.0, scale);
  }
}

// The statistics' sparse backward (ra_sparse.cu) for the gradients of the head lists' and the mean
// lists' values (either undefined: no such entries): the rows' D shifts, alpha's share per row and the
// dense bf16 M [B, T, H, T] that add_sparse_gradients multiplies out. alpha32 undefined: no reciprocal
// term (plain causal attention).
struct SparsePart {
  torch::Tensor d_shift, dalpha_rows, m;  // [B, H, T] fp32 twice, [B, T, H, T] bf16
};
SparsePart sparse_part(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& lse,
                       const torch::Tensor& alpha32, int64_t window, double scale, int64_t K,
                       const torch::Tensor& head_key, const torch::Tensor& d_head_val, const torch::Tensor& mean_key,
                       const torch::Tensor& d_mean_val) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2);
  auto f32 = q.options().dtype(torch::kFloat32);
  auto d_head = d_head_val.defined() ? d_head_val.to(torch::kFloat32).contiguous() : torch::Tensor();
  auto d_mean = d_mean_val.defined() ? d_mean_val.to(torch::kFloat32).contiguous() : torch::Tensor();
  SparsePart out{at::empty({B, H, T}, f32), at::empty({B, H, T}, f32),
                 at::zeros({B, T, H, T}, q.options().dtype(torch::kBFloat16))};
  kernels::RaSparseArgs args{int(B), int(H), int(k.size(1)), int(T), int(q.size(3)), int(window), int(K),
                             float(scale), alpha32.defined() ? alpha32.data_ptr<float>() : nullptr, strided(q),
                             strided(k), lse.data_ptr<float>(), head_key.data_ptr<int32_t>(),
                             d_head.defined() ? d_head.data_ptr<float>() : nullptr, mean_key.data_ptr<int32_t>(),
                             d_mean.defined() ? d_mean.data_ptr<float>() : nullptr, out.d_shift.data_ptr<float>(),
                             out.dalpha_rows.data_ptr<float>(), out.m.data_ptr(), out.m.stride(0), out.m.stride(2),
                             out.m.stride(1)};
  check_launch(kernels::ra_sparse_backward(args, current_stream()), "ra_sparse_backward");
  return out;
}

// The band op, and with K > 0 its weights' top-K values as further differentiable outputs:
// {out} or {out, head_val, head_key, mean_val, mean_key}.
struct RaBandFunction : torch::autograd::Function<RaBandFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& alpha, int64_t window, double scale,
                               int64_t K, bool heads) {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dv = v.size(3);
    const auto far = far_inputs(q, k, v, window);
    const FarForward far_out = far_forward(far, scale);
    auto alpha32 = alpha.to(torch::kFloat32).contiguous();
    auto out = at::empty({B, T, H, Dv}, v.options()).transpose(1, 2);     // [B, H, T, Dv]
    auto lse = at::empty({B, H, T}, q.options().dtype(torch::kFloat32));  // merged log-sum-exp
    kernels::RaBandForwardArgs args{band_shape(q, window, scale, alpha32),
                                    int(q.size(3)),
                                    int(Dv),
                                    strided(q),
                                    strided(k),
                                    strided(v),
                                    strided(far_out.out),
                                    far_out.lse.data_ptr<float>(),
                                    far_out.lse.stride(0),
                                    far_out.lse.stride(1),
                                    far_out.lse.stride(2),
                                    strided_out(out),
                                    lse.data_ptr<float>()};
    check_launch(kernels::ra_band_forward(args, current_stream()), "ra_band_forward");
    variable_list outputs{out};
    torch::Tensor head_key, mean_key;
    if (K > 0) {
      auto top = topk_weights(q, k, lse, alpha32, window, scale, K, heads);
      head_key = top.head_key;
      mean_key = top.mean_key;
      ctx->mark_non_differentiable({head_key, mean_key});
      outputs = {out, top.head_val, head_key, top.mean_val, mean_key};
    }
    ctx->save_for_backward({q, k, v, alpha, out, lse, far_out.lse, far_out.philox_seed, far_out.philox_offset,
                            head_key, mean_key});
    ctx->saved_data["window"] = window;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["K"] = K;
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &alpha = saved[3], &out = saved[4],
                        &lse = saved[5];
    const int64_t window = ctx->saved_data["window"].toInt(), K = ctx->saved_data["K"].toInt();
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3), Dv = v.size(3);
    const int64_t t_far = T - window - 1;
    const bool head_grad = K > 0 && grads[1].defined() && grads[1].numel() > 0;
    const bool mean_grad = K > 0 && grads[3].defined();
    const variable_list none(8);
    if (!grads[0].defined() && !head_grad && !mean_grad) return none;
    auto dout = grads[0].defined() ? grads[0].to(torch::kBFloat16) : at::zeros_like(out);
    if (!kernel_layout(dout)) dout = dout.contiguous();
    auto alpha32 = alpha.to(torch::kFloat32).contiguous();

    // Sparse part first: it yields the rows' D shifts the dense part needs.
    const SparsePart sparse = head_grad || mean_grad
                                  ? sparse_part(q, k, lse, alpha32, window, scale, K, saved[9],
                                                head_grad ? grads[1] : torch::Tensor(), saved[10],
                                                mean_grad ? grads[3] : torch::Tensor())
                                  : SparsePart{};
    const torch::Tensor &d_shift = sparse.d_shift, &dalpha_rows = sparse.dalpha_rows, &m = sparse.m;

    // Far part, under the merged log-sum-exp (in the far kernel's own layout).
    const auto far = far_inputs(q, k, v, window);
    const torch::Tensor &far_lse_saved = saved[6], &philox_seed = saved[7], &philox_offset = saved[8];
    auto lse_far = at::zeros_like(far_lse_saved);
    auto lse_far_rows = lse_far.narrow(2, 0, t_far);
    lse_far_rows.copy_(lse.narrow(2, window + 1, t_far).reshape(lse_far_rows.sizes()));
    auto dout_far = dout.narrow(2, window + 1, t_far);
    auto out_far = out.narrow(2, window + 1, t_far);
    if (d_shift.defined())
      out_far = shifted_output(out, window + 1, t_far, dout, d_shift);
    const auto far_grads = far_backward(far, dout_far, out_far, lse_far, philox_seed, philox_offset, scale);

    // Band: bf16 partials per row, then one pass per input adds them to the far part's.
    const int64_t t_pad = kernels::ra_band_padded_t(T);
    auto bf16 = q.options().dtype(torch::kBFloat16);
    auto own_q = at::empty({B, H, t_pad, Dk}, bf16), prev_q = at::empty_like(own_q);
    // MLA: one key partial per block for all heads (ra_band.cu sums them), so one key head here.
    auto own_k = at::empty({B, k.size(1), t_pad, Dk}, bf16), prev_k = at::empty_like(own_k);
    auto own_v = at::empty({B, H, t_pad, Dv}, bf16), prev_v = at::empty_like(own_v);
    auto dalpha_partial = at::empty({kernels::ra_band_blocks(B, k.size(1), T)}, q.options().dtype(torch::kFloat32));
    kernels::RaBandBackwardArgs args{band_shape(q, window, scale, alpha32),
                                     int(Dk),
                                     int(Dv),
                                     strided(q),
                                     strided(k),
                                     strided(v),
                                     strided(out),
                                     strided(dout),
                                     lse.data_ptr<float>(),
                                     d_shift.defined() ? d_shift.data_ptr<float>() : nullptr,
                                     own_q.data_ptr(),
                                     own_k.data_ptr(),
                                     own_v.data_ptr(),
                                     prev_q.data_ptr(),
                                     prev_k.data_ptr(),
                                     prev_v.data_ptr(),
                                     dalpha_partial.data_ptr<float>()};
    check_launch(kernels::ra_band_backward(args, current_stream()), "ra_band_backward");

    auto dq = at::empty({B, T, H, Dk}, q.options()).transpose(1, 2);  // [B, H, T, Dk]
    auto dk = at::empty({B, T, k.size(1), Dk}, k.options()).transpose(1, 2);
    auto dv = at::empty({B, T, H, Dv}, v.options()).transpose(1, 2);
    combine(own_q, prev_q, far_grads[0], window + 1, dq);  // far query rows start at position window + 1
    combine(own_k, prev_k, far_grads[1], 0, dk);           // MLA: both parts come summed over the heads
    combine(own_v, prev_v, far_grads[2], 0, dv);
    if (m.defined()) add_sparse_gradients(m, q, k, scale, dq, dk);
    torch::Tensor dalpha;
    if (alpha.requires_grad()) {
      auto total = dalpha_partial.sum();
      if (dalpha_rows.defined()) total = total + dalpha_rows.sum();
      dalpha = total.view(alpha.sizes()).to(alpha.scalar_type());
    }
    return {dq, dk, dv, dalpha, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// Plain causal attention (cuDNN's, as the band op's far part, over the whole range) and its weights'
// top K as differentiable outputs: {out, head_val, head_key, mean_val, mean_key}. The backward is the
// band op's without the band: the sparse part, then cuDNN's backward given O' for the D shift.
struct CausalStatsFunction : torch::autograd::Function<CausalStatsFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, double scale, int64_t K, bool heads) {
    const FarForward attended = far_forward(whole_range(q, k, v), scale);
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2);
    auto lse = attended.lse.reshape({B, H, T}).contiguous();  // fp32, for our kernels
    auto top = topk_weights(q, k, lse, torch::Tensor(), /*window=*/0, scale, K, heads);
    ctx->mark_non_differentiable({top.head_key, top.mean_key});
    ctx->save_for_backward({q, k, v, attended.out, attended.lse, lse, attended.philox_seed, attended.philox_offset,
                            top.head_key, top.mean_key});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["K"] = K;
    return {attended.out, top.head_val, top.head_key, top.mean_val, top.mean_key};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &cudnn_lse = saved[4],
                        &lse = saved[5];
    const int64_t K = ctx->saved_data["K"].toInt();
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3);
    const bool head_grad = grads[1].defined() && grads[1].numel() > 0;
    const bool mean_grad = grads[3].defined();
    const variable_list none(6);
    if (!grads[0].defined() && !head_grad && !mean_grad) return none;
    auto dout = grads[0].defined() ? grads[0].to(torch::kBFloat16) : at::zeros_like(out);
    if (!kernel_layout(dout)) dout = dout.contiguous();

    SparsePart sparse;
    auto out_seen = out;  // what cuDNN's backward takes for O: O' when the rows' D is shifted
    if (head_grad || mean_grad) {
      sparse = sparse_part(q, k, lse, torch::Tensor(), /*window=*/0, scale, K, saved[8],
                           head_grad ? grads[1] : torch::Tensor(), saved[9], mean_grad ? grads[3] : torch::Tensor());
      out_seen = shifted_output(out, 0, T, dout, sparse.d_shift);
    }
    const auto dense = far_backward(whole_range(q, k, v), dout, out_seen, cudnn_lse, saved[6], saved[7], scale);

    // add_sparse_gradients wants dq laid out [B, T, H, Dk]; MLA's dk comes summed over the heads.
    auto dq = at::empty({B, T, H, Dk}, q.options()).transpose(1, 2);  // [B, H, T, Dk]
    dq.copy_(dense[0]);
    auto dk = dense[1];
    if (sparse.m.defined()) add_sparse_gradients(sparse.m, q, k, scale, dq, dk);
    return {dq, dk, dense[2], torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// cuDNN's output rows in [B, T, H, Dv] storage, so that merging the heads is free. all [B, H, T, ≥ Dv].
torch::Tensor heads_last_copy(const torch::Tensor& all, int64_t Dv) {
  const int64_t B = all.size(0), H = all.size(1), T = all.size(2);
  auto out = at::empty({B, T, H, Dv}, all.options()).transpose(1, 2);
  out.copy_(all.narrow(-1, 0, Dv));
  return out;
}

// The upstream gradients of (out, statistic), zeros where autograd passes none. [B, H, T, Dv] bf16, [B, H, T] fp32
std::pair<torch::Tensor, torch::Tensor> statistic_grads(const variable_list& grads, const torch::Tensor& q,
                                                        int64_t Dv) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2);
  auto dout = grads[0].defined() ? grads[0].to(torch::kBFloat16) : at::zeros({B, H, T, Dv}, q.options());
  auto g = grads[1].defined() ? grads[1].to(torch::kFloat32) : at::zeros({B, H, T}, q.options().dtype(torch::kFloat32));
  return {dout, g};
}

// MLA's shared key [B, 1, T, Dk] receives the sum of what each head's copy of it received.
torch::Tensor per_key_heads(const torch::Tensor& grad, const torch::Tensor& k) {
  return k.size(1) == 1 && grad.size(1) != 1 ? grad.sum(1, /*keepdim=*/true) : grad;
}

// RA-CT's `entropy` (issue 11, deliverable 2). With the keys as extra value columns, cuDNN's attention
// returns Ok_i = Σ_j P_ij·(k_j − k_c) beside O_i, and since Σ_j P_ij = 1,
//   H_i = −Σ_j P_ij·log P_ij = lse_i − Σ_j P_ij·S_ij = lse_i − scale·q_i·(k_c + Ok_i)
// for any fixed key k_c. k_c = k_0, the first key, which every row sees, takes the keys' shared
// component out of the bf16 Ok (softmax ignores it, so training is free to grow it), where H would
// otherwise be a small difference of large numbers. Backward, with g = dL/dH: Ok's gradient is
// −g·scale·q (a further slice of dO for cuDNN), lse's is g, i.e. ∂lse_i/∂S_ij = P_ij, which is D
// shifted by −g (shifted_output), and q has H's explicit term −g·scale·(k_c + Ok). Any k_c gives the
// same function of (q, k), so k_c is held constant: the key columns' gradient is the keys'. Under MLA
// the key is one head for cuDNN (its gradient comes back summed) and every head's value columns.
// k_c + Ok_i = Σ_j P_ij·k_j in fp32, from cuDNN's output over [v, k − k_c] (out_all) and k. [B, H, T, Dk]
torch::Tensor weighted_keys(const torch::Tensor& out_all, const torch::Tensor& k) {
  const int64_t Dk = k.size(3), Dv = out_all.size(3) - Dk;
  return out_all.narrow(-1, Dv, Dk).to(torch::kFloat32) + k.narrow(2, 0, 1).to(torch::kFloat32);
}

struct CausalEntropyFunction : torch::autograd::Function<CausalEntropyFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, double scale) {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = k.size(3), Dv = v.size(3);
    auto key_columns = (k - k.narrow(2, 0, 1)).expand({B, H, T, Dk});
    auto values = torch::cat({v, key_columns}, -1);  // [B, H, T, Dv + Dk]
    const FarForward attended = far_forward({q, k, values}, scale);
    auto lse = attended.lse.reshape({B, H, T}).to(torch::kFloat32);
    auto entropy = lse - scale * (q.to(torch::kFloat32) * weighted_keys(attended.out, k)).sum(-1);  // [B, H, T]
    ctx->save_for_backward({q, k, values, attended.out, attended.lse, attended.philox_seed, attended.philox_offset});
    ctx->saved_data["scale"] = scale;
    return {heads_last_copy(attended.out, Dv), entropy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &q = saved[0], &k = saved[1], &values = saved[2], &out = saved[3];
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t T = q.size(2), Dk = k.size(3), Dv = values.size(3) - Dk;
    if (!grads[0].defined() && !grads[1].defined()) return variable_list(4);
    const auto [dout, g] = statistic_grads(grads, q, Dv);  // g = dL/dH
    auto d_keys = ((-scale) * g.unsqueeze(-1) * q.to(torch::kFloat32)).to(torch::kBFloat16);  // Ok's gradient
    auto d_all = torch::cat({dout, d_keys}, -1);  // [B, H, T, Dv + Dk], contiguous
    auto shift = (-g).contiguous();
    const auto out_seen = shifted_output(out, 0, T, d_all, shift);
    const auto dense = far_backward({q, k, values}, d_all, out_seen, saved[4], saved[5], saved[6], scale);
    auto dq = (dense[0].to(torch::kFloat32) - scale * g.unsqueeze(-1) * weighted_keys(out, k)).to(q.scalar_type());
    auto dk = dense[1] + per_key_heads(dense[2].narrow(-1, Dv, Dk), k);
    auto dv = dense[2].narrow(-1, 0, Dv);
    return {dq, dk, dv, torch::Tensor()};
  }
};

// RA-CT's `rms`. The squares of a softmax row are the softmax of the doubled scores, rescaled:
//   R_i = Σ_j P_ij² = Σ_j exp(2·S_ij − 2·lse_i) = exp(lse2_i − 2·lse_i),  lse2_i = log Σ_j exp(2·S_ij),
// and lse2 is the log-sum-exp of a second cuDNN attention at twice the scale (its values are zeros:
// only lse2 is used). rms_i = sqrt(R_i / n_i), n_i = i + 1 visible keys. Backward, with c = dL/dR·R:
//   ∂R_i/∂S_ij = 2·R_i·(P2_ij − P_ij), P2 the doubled call's weights, so
//   −2c·P_ij is the lse gradient −2c of the main call: its D shifted by +2c (shifted_output);
//   2c·P2_ij w.r.t. S is c·P2_ij w.r.t. the doubled call's scores 2·S: the lse2 gradient c, i.e. that
//   call's backward with dO = ones against zero values (dP = 0) and D shifted by −c.
// A row with dO exactly zero keeps the main call's D unshifted, but under the `output` gate its dR is
// zero too (dL/dgate_i = Σ dy_i·O_i, and dO_i = dy_i·gate_i with gate_i > 0).
// Each call's dS sums to ∓2c over a row instead of 0, so keys sharing a large component put opposite
// terms of that size into the two calls' dq, which cancel up to bf16's rounding of dS.
struct CausalRmsFunction : torch::autograd::Function<CausalRmsFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, double scale) {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dv = v.size(3);
    // Measured on the H200: with the model's v (a strided view of c_attn's output) both calls' gradients
    // came out wrong through the model while the op on contiguous tensors was right; with v contiguous
    // both are right. The cause is not isolated; the copy is one [B, H, T, Dv] bf16 pass.
    auto v_rows = v.contiguous();
    const FarForward attended = far_forward({q, k, v_rows}, scale);
    auto zeros = at::zeros_like(v_rows);
    const FarForward doubled = far_forward({q, k, zeros}, 2 * scale);
    auto lse = attended.lse.reshape({B, H, T}).to(torch::kFloat32);
    auto lse2 = doubled.lse.reshape({B, H, T}).to(torch::kFloat32);
    auto square_sum = (lse2 - 2 * lse).exp();                                          // R [B, H, T]
    auto visible_keys = torch::arange(1, T + 1, lse.options());                       // n_i, [T]
    auto rms = (square_sum / visible_keys).sqrt();                                     // [B, H, T]
    ctx->save_for_backward({q, k, v_rows, attended.out, attended.lse, attended.philox_seed, attended.philox_offset,
                            doubled.out, doubled.lse, doubled.philox_seed, doubled.philox_offset, rms});
    ctx->saved_data["scale"] = scale;
    return {heads_last_copy(attended.out, Dv), rms};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &rms = saved[11];
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t T = q.size(2), Dv = v.size(3);
    if (!grads[0].defined() && !grads[1].defined()) return variable_list(4);
    const auto [dout, g] = statistic_grads(grads, q, Dv);  // g = dL/drms
    // drms/dR = rms / (2R), so c = dL/dR·R = g·rms/2.
    auto c = g * rms * 0.5;  // [B, H, T]
    auto dout_rows = dout.contiguous();
    const auto out_seen = shifted_output(saved[3], 0, T, dout_rows, (2 * c).contiguous());
    const auto main = far_backward({q, k, v}, dout_rows, out_seen, saved[4], saved[5], saved[6], scale);
    auto ones = at::ones_like(dout_rows);
    auto zeros = at::zeros_like(v);
    const auto doubled_seen = shifted_output(saved[7], 0, T, ones, (-c).contiguous());
    const auto doubled = far_backward({q, k, zeros}, ones, doubled_seen, saved[8], saved[9], saved[10], 2 * scale);
    return {main[0] + doubled[0], main[1] + doubled[1], main[2], torch::Tensor()};
  }
};

}  // namespace

bool supports_ra_band(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t window) {
  if (!bf16_on_cuda(q, k, v)) return false;
  if (!kernel_layout(q) || !kernel_layout(k) || !kernel_layout(v)) return false;
  const int64_t T = q.size(2);
  return kernels::ra_band_supports(q.size(3), v.size(3)) && k.size(3) == q.size(3) &&
         (k.size(1) == q.size(1) || k.size(1) == 1) && window >= 1 && window <= kernels::kRaMaxWindow &&
         window < T - 1;
}

torch::Tensor ra_band_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& alpha, int64_t window, double scale) {
  return RaBandFunction::apply(q, k, v, alpha, window, scale, /*K=*/0, /*heads=*/false)[0];
}

RaBandStats ra_band_attention_stats(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    const torch::Tensor& alpha, int64_t window, double scale, int64_t K,
                                    bool heads) {
  TORCH_CHECK(K >= 1 && K <= kMaxStatsK, "ra_band_attention_stats: K must be 1..", kMaxStatsK, ", got ", K);
  TORCH_CHECK(q.size(1) <= kMaxStatsHeads, "ra_band_attention_stats: at most ", kMaxStatsHeads, " heads");
  auto r = RaBandFunction::apply(q, k, v, alpha, window, scale, K, heads);
  return {r[0], r[1], r[2], r[3], r[4]};
}

bool supports_causal_stats(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  if (!bf16_on_cuda(q, k, v)) return false;
  if (!kernel_layout(q) || !kernel_layout(k) || v.dim() != 4 || v.stride(3) != 1) return false;
  return kernels::ra_topk_supports(q.size(3)) && k.size(3) == q.size(3) && v.size(3) % 8 == 0 &&
         (k.size(1) == q.size(1) || k.size(1) == 1) && q.size(1) <= kMaxStatsHeads;
}

RaBandStats causal_attention_stats(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   double scale, int64_t K, bool heads) {
  TORCH_CHECK(K >= 1 && K <= kMaxStatsK, "causal_attention_stats: K must be 1..", kMaxStatsK, ", got ", K);
  TORCH_CHECK(supports_causal_stats(q, k, v), "causal_attention_stats: q, k, v must be bf16 on CUDA, key width 64 "
              "or 128, at most ", kMaxStatsHeads, " heads, last dimensions contiguous and 16-byte aligned");
  auto r = CausalStatsFunction::apply(q, k, v, scale, K, heads);
  return {r[0], r[1], r[2], r[3], r[4]};
}

bool supports_causal_statistic(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               RowStatistic statistic) {
  if (!bf16_on_cuda(q, k, v)) return false;
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || q.stride(3) != 1 || k.stride(3) != 1 || v.stride(3) != 1)
    return false;
  const int64_t H = q.size(1), Dk = q.size(3), Dv = v.size(3);
  // cuDNN's values: [v, k − k_0] for the entropy, v for the rms.
  const int64_t value_width = statistic == RowStatistic::entropy ? Dv + Dk : Dv;
  return (Dk == 64 || Dk == 128) && k.size(3) == Dk && (k.size(1) == H || k.size(1) == 1) && v.size(1) == H &&
         Dv % 8 == 0 && Dv <= 128 && value_width <= 256;
}

CausalStatistic causal_attention_statistic(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                           double scale, RowStatistic statistic) {
  TORCH_CHECK(supports_causal_statistic(q, k, v, statistic), "causal_attention_statistic: q, k, v must be bf16 on "
              "CUDA, [B, H, T, Dk] with Dk 64 or 128, k one head per query head or one shared, v [B, H, T, Dv] with "
              "Dv a multiple of 8 up to 128 (entropy: Dv + Dk up to 256), last dimensions contiguous");
  auto r = statistic == RowStatistic::entropy ? CausalEntropyFunction::apply(q, k, v, scale)
                                              : CausalRmsFunction::apply(q, k, v, scale);
  return {r[0], r[1]};
}

TopkWeights topk_weights(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& lse,
                         const torch::Tensor& alpha, int64_t window, double scale, int64_t K, bool heads) {
  TORCH_CHECK(q.is_cuda() && q.scalar_type() == torch::kBFloat16 && k.scalar_type() == torch::kBFloat16,
              "topk_weights: q and k must be bf16 on CUDA");
  TORCH_CHECK(kernel_layout(q) && kernel_layout(k), "topk_weights: q and k need a contiguous, 16-byte aligned last dimension");
  TORCH_CHECK(kernels::ra_topk_supports(q.size(3)) && K >= 1 && K <= kernels::kRaTopkMaxK,
              "topk_weights: key width 64 or 128 and 1 ≤ K ≤ ", kernels::kRaTopkMaxK, " (got ", q.size(3), ", ", K, ")");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2);
  auto lse32 = lse.to(torch::kFloat32).contiguous();
  TORCH_CHECK(lse32.numel() == B * H * T, "topk_weights: lse must be [B, H, T]");
  torch::Tensor alpha32;
  if (alpha.defined()) alpha32 = alpha.to(torch::kFloat32).contiguous();
  auto f32 = q.options().dtype(torch::kFloat32), i32 = q.options().dtype(torch::kInt);
  const int64_t head_k = heads ? K : 0;
  TopkWeights out{at::empty({B, H, T, head_k}, f32), at::empty({B, H, T, head_k}, i32), at::empty({B, T, K}, f32),
                  at::empty({B, T, K}, i32)};
  kernels::RaTopkArgs args{int(B), int(H), int(k.size(1)), int(T), int(q.size(3)), int(window), int(K), float(scale),
                           alpha32.defined() ? alpha32.data_ptr<float>() : nullptr, strided(q), strided(k),
                           lse32.data_ptr<float>(), heads ? out.head_val.data_ptr<float>() : nullptr,
                           heads ? out.head_key.data_ptr<int32_t>() : nullptr,
                           out.mean_val.data_ptr<float>(), out.mean_key.data_ptr<int32_t>()};
  check_launch(kernels::ra_topk_stats(args, current_stream()), "ra_topk_stats");
  return out;
}

#else

bool supports_ra_band(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, int64_t) { return false; }

torch::Tensor ra_band_attention(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                int64_t, double) {
  TORCH_CHECK(false, "fused::ra_band_attention: this build has no CUDA kernels");
}

RaBandStats ra_band_attention_stats(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                    const torch::Tensor&, int64_t, double, int64_t, bool) {
  TORCH_CHECK(false, "fused::ra_band_attention_stats: this build has no CUDA kernels");
}

bool supports_causal_stats(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { return false; }

RaBandStats causal_attention_stats(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, double, int64_t,
                                   bool) {
  TORCH_CHECK(false, "fused::causal_attention_stats: this build has no CUDA kernels");
}

bool supports_causal_statistic(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, RowStatistic) {
  return false;
}

CausalStatistic causal_attention_statistic(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, double,
                                           RowStatistic) {
  TORCH_CHECK(false, "fused::causal_attention_statistic: this build has no CUDA kernels");
}

TopkWeights topk_weights(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, int64_t,
                         double, int64_t, bool) {
  TORCH_CHECK(false, "fused::topk_weights: this build has no CUDA kernels");
}

#endif

}  // namespace ratio::model::fused

#pragma once
// The fused CUDA kernels of model/kernels/ as autograd operations (issue 10). Each replaces a
// composite of ATen ops and computes the same function; tests/model/fused_ops_test.cpp holds the
// composite beside it and compares forward and every gradient on CUDA. Built with the kernels only
// where CMake found CUDA and a CUDA LibTorch; elsewhere `supported` is false and the model keeps its
// ATen path (the CPU build behaves exactly as before).
//
// Private to model/ (the worker switches the path with GPT::set_fused_kernels).

#include <memory>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace ratio::model::fused {

// True where the kernels can take this residual stream: built with them, x fp32 on CUDA, width within
// the kernels' limit, layer-norm parameters fp32.
bool supports_layer_norm(const torch::Tensor& x, const torch::nn::LayerNorm& ln);
// True where the fused classifier can take tensors on x's device (x: its input [.., C], or the token
// ids it will follow): built with the kernels, on CUDA, under bf16 autocast.
bool supports_classifier(const torch::Tensor& x);

// True where linear_gelu can take x: built with the kernels, on CUDA, under bf16 autocast.
bool supports_linear_gelu(const torch::Tensor& x);

// gelu_tanh(x·weightᵀ + bias) under bf16 autocast in one cuBLASLt matmul whose epilogue adds the bias,
// applies gelu and keeps the pre-activation for the backward (for M not a multiple of 8, ATen's
// linear then gelu); its backward runs gelu's derivative and the bias gradient in one kernel, and
// the weight gradient comes out of its matmul in fp32.
// x [.., C]; weight [M, C] and bias [M] fp32. Returns bf16 [.., M].
torch::Tensor linear_gelu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

// linear_gelu's forward without autograd (for the tests): h = gelu_tanh(pre) and pre = x·wᵀ + bias,
// both bf16 [.., M], and whether cuBLASLt's GELU epilogue computed them (else ATen's linear, gelu).
struct LinearGeluOutput {
  torch::Tensor h, pre;
  bool epilogue;
};
LinearGeluOutput linear_gelu_forward(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

// x·weightᵀ + bias under bf16 autocast, as ATen computes it (cuBLASLt's bias epilogue); its backward
// sums the bias gradient in our column-sum kernel instead of ATen's reduction, and the weight
// gradient comes out of its matmul in fp32.
// x [.., C]; weight [M, C] and bias [M] fp32. Returns bf16 [.., M]. Same conditions as linear_gelu.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

// Several linears of one input x [.., C] as one op (MLA's q_proj, k_down and v_down): returns
// x·W_iᵀ + b_i for each weight [M_i, C] and bias [M_i] (fp32), bf16 [.., M_i]. What it saves over
// separate linears is in the backward: each dy_i·W_i is added onto dx by its matmul, not by separate
// adds of the input gradients. linear is its one-weight case. Same conditions as linear.
std::vector<torch::Tensor> shared_input_linears(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                                                const std::vector<torch::Tensor>& biases);

// {x + addend, LayerNorm(x + addend)} in one kernel (and one in the backward); with addend
// undefined, {x, LayerNorm(x)}. x fp32 [.., C]; addend fp32 or bf16 [.., C]. The normalised output is
// bf16 under CUDA autocast (what the next linear would cast it to), else fp32.
std::pair<torch::Tensor, torch::Tensor> add_layer_norm(const torch::Tensor& x, const torch::Tensor& addend,
                                                       const torch::nn::LayerNorm& ln);

// Mean cross-entropy of logits = x·weightᵀ over targets ≠ −1, as F::cross_entropy on fp32 logits
// computes it, without fp32 [N, V] logits: bf16 logits in row chunks, softmax, loss and dlogits in
// one kernel, and (when a gradient is wanted) dx and dweight from the chunk before it is freed.
// x [.., C]; weight [V, C] fp32; targets [..] int64 with x's leading shape. Returns a scalar fp32.
// chunk_rows: rows of logits per chunk; 0 = as many as fit in 1 GiB of bf16. tied_grad: see below.
torch::Tensor classifier_loss(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& targets,
                              int64_t chunk_rows = 0, const torch::Tensor& tied_grad = {});

// bf16 copies of fp32 parameters for one forward, made by one multi-tensor kernel per 48 tensors
// instead of a cast of each weight and bias inside each fused op (about 100 launches a GPT-2
// step). While the object lives, the fused ops on this thread read a parameter's copy instead of
// casting it. The copies are made when the object is built, from the values a forward reads (the
// parameters do not change during a forward). Parameters that are not fp32 CUDA tensors are left
// to the ops' own casts. One scope at a time per thread; a nested one hides the outer.
class Bf16Weights {
 public:
  explicit Bf16Weights(const std::vector<torch::Tensor>& params);
  ~Bf16Weights();
  Bf16Weights(const Bf16Weights&) = delete;
  Bf16Weights& operator=(const Bf16Weights&) = delete;
  // Its copy of `param` ([same shape] bf16), or an undefined tensor where it made none.
  torch::Tensor copy_of(const torch::Tensor& param) const;

  struct Copies;  // the copies by parameter (model/fused.cpp)

 private:
  std::unique_ptr<Copies> copies_;
  const Copies* outer_;
};

// Rows of (key, value) pairs as a dense [B, T, Tk] in values' dtype: out[b, i, keys[b, i, e]] +=
// values[b, i, e]. An empty entry (key −1, value 0) adds 0 at key 0. keys [B, T, K] integral, values
// [B, T, K]. Any build and device: mix_rows' backward and MixingWeights::to_dense (model/layers.h).
torch::Tensor scatter_pairs(const torch::Tensor& keys, const torch::Tensor& values, int64_t Tk);

// True where mix_rows can take h: built with the kernels, h [B, Tk, M] bf16 on CUDA with M a multiple
// of 8 and 16-byte aligned rows, keys [B, T, K] with K ≤ 32.
bool supports_mix_rows(const torch::Tensor& h, const torch::Tensor& keys);

// Mechanism 2's Ā·H with Ā as K (key, value) pairs a row (model/kernels/mix_rows.cu): out[b, i] =
// Σ_e values[b, i, e]·h[b, keys[b, i, e]], a key −1 adding nothing. values [B, T, K] fp32 (differentiable),
// keys [B, T, K] int32, h [B, Tk, M] bf16 (differentiable); returns [B, T, M] bf16. The gathers replace
// two of the dense matmul's three products; H's gradient stays a dense matmul with Ā scattered.
torch::Tensor mix_rows(const torch::Tensor& values, const torch::Tensor& keys, const torch::Tensor& h);

// True where prefix_mean can take z: built with the kernels, z [B, T, G] fp32 or bf16 on CUDA.
bool supports_prefix_mean(const torch::Tensor& z);

// Mechanism 1's causal prefix mean over time, out[b, t] = mean_{s ≤ t} z[b, s], summed in fp32 and
// returned in z's dtype, as MlpImpl::head_gate's cumsum formula computes it; one scan kernel forward
// and one reverse scan backward instead of ATen's serial cumsum, flips and casts. z: [B, T, G].
torch::Tensor prefix_mean(const torch::Tensor& z);

// GPT-2's tied weight [V, C], the token embedding's table and the classifier's, with its gradient
// built in one fp32 buffer (tied_gradient, one per forward) instead of two [V, C] gradients that
// autograd then adds: classifier_loss writes its weight gradient there and returns none, and
// tied_embedding's backward, which runs after it (the classifier reads what the embedding
// produced), adds the embedding's rows in place and returns the buffer as the weight's whole
// gradient. Both must be given the same buffer in one forward with gradients on.
// idx: [..] int64 token ids; returns weight[idx], [.., C] fp32.
torch::Tensor tied_gradient(const torch::Tensor& weight);
torch::Tensor tied_embedding(const torch::Tensor& idx, const torch::Tensor& weight, const torch::Tensor& tied_grad);

}  // namespace ratio::model::fused

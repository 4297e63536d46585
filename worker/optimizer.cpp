#include "worker/optimizer.h"

#include <cmath>
#include <limits>

#include "model/fused_adamw.h"
#include "model/torch_compat.h"

namespace ratio::worker {

namespace {

// Spike z-scores need a history; before this many norms no step counts as a spike.
constexpr int64_t kMinSpikeHistory = 10;
constexpr double kAdamEps = 1e-8;

// tensors[i] for each i in `indices`, in that order.
std::vector<torch::Tensor> pick(const std::vector<torch::Tensor>& tensors, const std::vector<size_t>& indices) {
  std::vector<torch::Tensor> out;
  for (size_t i : indices) out.push_back(tensors[i]);
  return out;
}

std::vector<torch::Tensor> zeros_like_all(const NamedTensors& params) {
  std::vector<torch::Tensor> out;
  for (const auto& [name, p] : params) out.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
  return out;
}

}  // namespace

SpamAdamW::SpamAdamW(NamedTensors params, const TrainConfig& train, bool kernel)
    : params_(std::move(params)), train_(train) {
  m_ = zeros_like_all(params_);
  v_ = zeros_like_all(params_);
  const auto& first = params_.front().second;
  fused_ = compat::kHasFusedAdamW && first.is_cuda();
  for (size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& p = params_[i].second;
    tensors_.push_back(p);
    decayed_.push_back(p.dim() >= 2);  // matrices decay; biases, norms, alphas do not
    (decayed_.back() ? decayed_index_ : plain_index_).push_back(i);
    // The fused kernel takes one device and one dtype per call.
    fused_ = fused_ && p.device() == first.device() && p.scalar_type() == first.scalar_type();
  }
  kernel_ = kernel && model::fused::supports_spam_adamw(tensors_);
  scalars_ = torch::zeros({kernels::kScalarCount}, first.options().dtype(torch::kFloat32));
  step_ = scalars_[kernels::kScalarStep];
  norm_mean_ = scalars_[kernels::kScalarNormMean];
  norm_m2_ = scalars_[kernels::kScalarNormM2];
  spikes_ = scalars_[kernels::kScalarSpikes];
  norm_ = scalars_[kernels::kScalarNorm];
}

void SpamAdamW::zero_grad() {
  // Dropped rather than zeroed: the next backward then hands its gradient over instead of adding
  // it to zeros (one kernel per parameter saved), as PyTorch's set_to_none does.
  for (auto& [name, p] : params_) p.mutable_grad() = torch::Tensor();
}

void SpamAdamW::reset() {
  torch::NoGradGuard no_grad;
  at::_foreach_zero_(m_);
  at::_foreach_zero_(v_);
  steps_since_reset_ = 0;
  step_.zero_();
}

void SpamAdamW::set_counters(int64_t steps_since_reset, int64_t norms_seen) {
  torch::NoGradGuard no_grad;
  steps_since_reset_ = steps_since_reset;
  norms_seen_ = norms_seen;
  step_.fill_(static_cast<double>(steps_since_reset));
  scalars_[kernels::kScalarNormsSeen].fill_(static_cast<double>(norms_seen));
}

int64_t SpamAdamW::steps_since_reset() const {
  return kernel_ ? std::llround(step_.item<double>()) : steps_since_reset_;
}

int64_t SpamAdamW::norms_seen() const {
  return kernel_ ? std::llround(scalars_[kernels::kScalarNormsSeen].item<double>()) : norms_seen_;
}

void SpamAdamW::set_lr(double lr) {
  lr_ = lr;
  if (kernel_) {
    torch::NoGradGuard no_grad;
    scalars_[kernels::kScalarLr].fill_(lr);  // a launch, not a sync; outside a captured step
  }
}

NamedTensors SpamAdamW::state() const {
  NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("adam_m/" + params_[i].first, m_[i]);
    out.emplace_back("adam_v/" + params_[i].first, v_[i]);
  }
  out.emplace_back("spam/norm_mean", norm_mean_);
  out.emplace_back("spam/norm_m2", norm_m2_);
  out.emplace_back("spam/spikes", spikes_);
  return out;
}

torch::Tensor SpamAdamW::global_norm() const {
  std::vector<torch::Tensor> norms = at::_foreach_norm(grads_);
  return torch::stack(norms).norm().to(torch::kFloat32);  // [] on the device, no sync
}

SpamAdamW::MomentFactors SpamAdamW::spike_factors(const torch::Tensor& norm) {
  MomentFactors factors;
  if (norms_seen_ >= kMinSpikeHistory) {
    auto std = (norm_m2_ / static_cast<double>(norms_seen_ - 1)).sqrt();
    auto spike = ((norm - norm_mean_) / (std + 1e-12)) > train_.spam.spike_z;  // [] bool
    auto spiked = spike.to(torch::kFloat32);  // 1 on a spike, else 0
    factors.m = 1.0 - 0.5 * spiked;
    factors.v = 1.0 - 0.1 * spiked;
    spikes_.add_(spiked);
  }
  // Welford update of the norm history (every norm, spikes included).
  ++norms_seen_;
  auto delta = norm - norm_mean_;
  norm_mean_.add_(delta / static_cast<double>(norms_seen_));
  norm_m2_.add_(delta * (norm - norm_mean_));
  return factors;
}

void SpamAdamW::clip_to_second_moment() {
  if (steps_since_reset_ == 0) return;  // v is all zeros right after a reset: nothing to clip against
  std::vector<torch::Tensor> bound = at::_foreach_mul(v_, train_.spam.theta);
  at::_foreach_sqrt_(bound);
  for (size_t i = 0; i < bound.size(); ++i) bound[i].masked_fill_(v_[i] == 0, std::numeric_limits<float>::infinity());
  at::_foreach_minimum_(grads_, bound);
  for (auto& b : bound) b.neg_();
  at::_foreach_maximum_(grads_, bound);
}

void SpamAdamW::adamw_update(double lr, const MomentFactors& spike) {
  ++steps_since_reset_;
  if (fused_) {
    if (spike.m.defined()) {  // the spike's soft reset, then the usual decay inside the kernel
      compat::foreach_mul_(m_, spike.m);
      compat::foreach_mul_(v_, spike.v);
    }
    fused_adamw_update(lr);
    return;
  }
  const double b1 = train_.beta1, b2 = train_.beta2;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(steps_since_reset_));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(steps_since_reset_));
  if (spike.m.defined()) {
    // The spike's soft reset rides on the moments' decay: one pass over m and v, no host sync.
    const auto moments = m_.front().scalar_type();  // the factors in the moments' precision, as b1 and b2 are
    compat::foreach_mul_(m_, spike.m.to(moments) * b1);
    compat::foreach_mul_(v_, spike.v.to(moments) * b2);
  } else {
    at::_foreach_mul_(m_, b1);
    at::_foreach_mul_(v_, b2);
  }
  at::_foreach_add_(m_, grads_, 1.0 - b1);                 // m = b1·(spike factor)·m + (1 − b1)·g
  at::_foreach_addcmul_(v_, grads_, grads_, 1.0 - b2);     // v = b2·(spike factor)·v + (1 − b2)·g²
  if (train_.weight_decay > 0 && !decayed_index_.empty()) {
    std::vector<torch::Tensor> decayed = pick(tensors_, decayed_index_);
    at::_foreach_mul_(decayed, 1.0 - lr * train_.weight_decay);
  }
  std::vector<torch::Tensor> denom = at::_foreach_sqrt(v_);
  at::_foreach_div_(denom, std::sqrt(bc2));
  at::_foreach_add_(denom, kAdamEps);                      // sqrt(v̂) + eps
  at::_foreach_addcdiv_(tensors_, m_, denom, -lr / bc1);    // p −= lr·m̂/(sqrt(v̂) + eps)
}

void SpamAdamW::fused_adamw_update(double lr) {
  step_.fill_(static_cast<double>(steps_since_reset_));  // a launch, not a sync
  for (const auto& [indices, weight_decay] : {std::pair{&decayed_index_, train_.weight_decay}, std::pair{&plain_index_, 0.0}}) {
    if (indices->empty()) continue;
    std::vector<torch::Tensor> p = pick(tensors_, *indices), g = pick(grads_, *indices), m = pick(m_, *indices),
                               v = pick(v_, *indices);
    compat::fused_adamw_(p, g, m, v, step_, lr, train_.beta1, train_.beta2, weight_decay, kAdamEps);
  }
}

void SpamAdamW::kernel_step() {
  model::fused::SpamAdamWOptions options{train_.beta1, train_.beta2,      kAdamEps,
                                        train_.weight_decay, train_.grad_clip, train_.spam.enabled,
                                        train_.spam.theta, train_.spam.spike_z, static_cast<int>(kMinSpikeHistory)};
  for (auto& g : grads_) g = g.contiguous();
  model::fused::spam_adamw_step(tensors_, grads_, m_, v_, decayed_, scalars_, options);
}

torch::Tensor SpamAdamW::step() {
  torch::NoGradGuard no_grad;
  grads_.clear();
  for (auto& [name, p] : params_) {
    // A parameter that took no part in this forward still gets a (zero) gradient, so the lists align.
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads_.push_back(p.grad());
  }
  if (kernel_) {
    kernel_step();
    grads_.clear();
    return norm_;
  }
  const double lr = lr_;
  torch::Tensor norm = global_norm();
  MomentFactors spike;
  if (train_.spam.enabled) spike = spike_factors(norm);
  if (train_.grad_clip > 0) {
    auto coef = (train_.grad_clip / (norm + 1e-6)).clamp_max(1.0);
    compat::foreach_mul_(grads_, coef);
  }
  if (train_.spam.enabled) clip_to_second_moment();
  adamw_update(lr, spike);
  grads_.clear();
  return norm;
}

// ---- pruning ----------------------------------------------------------------------------------

MagnitudePruner::MagnitudePruner(const NamedTensors& params) {
  for (const auto& [name, p] : params) {
    const bool embedding = name.rfind("wte.", 0) == 0 || name.rfind("wpe.", 0) == 0;
    const bool linear_weight = p.dim() == 2 && name.size() > 7 && name.substr(name.size() - 7) == ".weight";
    if (linear_weight && !embedding) {
      weights_.emplace_back(name, p);
      masks_.push_back(torch::ones_like(p, torch::kBool));
    }
  }
}

void MagnitudePruner::update_masks(double sparsity) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < weights_.size(); ++i) {
    const torch::Tensor& w = weights_[i].second;
    const auto k = static_cast<int64_t>(std::floor(sparsity * static_cast<double>(w.numel())));
    if (k <= 0) continue;
    auto magnitude = w.detach().abs().flatten();
    auto threshold = std::get<0>(magnitude.kthvalue(k));  // the k-th smallest |w|
    masks_[i] = w.abs() > threshold;
  }
  apply();
}

void MagnitudePruner::apply() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < weights_.size(); ++i) weights_[i].second.mul_(masks_[i]);
}

int64_t MagnitudePruner::pruned() const {
  int64_t n = 0;
  for (const auto& m : masks_) n += m.numel() - m.sum().item<int64_t>();
  return n;
}

NamedTensors MagnitudePruner::state() const {
  NamedTensors out;
  for (size_t i = 0; i < weights_.size(); ++i) out.emplace_back("prune_mask/" + weights_[i].first, masks_[i]);
  return out;
}

}  // namespace ratio::worker

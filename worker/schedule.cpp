#include "worker/schedule.h"

#include <algorithm>
#include <cmath>

namespace ratio::worker {

namespace {
constexpr double kPi = 3.14159265358979323846;
}

double base_lr(const TrainConfig& train, int64_t iter) {
  if (iter < train.warmup_iters) return train.lr * static_cast<double>(iter + 1) / static_cast<double>(train.warmup_iters);
  if (iter >= train.max_iters) return train.min_lr;
  const double span = static_cast<double>(std::max<int64_t>(1, train.max_iters - train.warmup_iters));
  const double progress = static_cast<double>(iter - train.warmup_iters) / span;  // 0 -> 1
  const double coeff = 0.5 * (1.0 + std::cos(kPi * progress));                    // 1 -> 0
  return train.min_lr + coeff * (train.lr - train.min_lr);
}

bool spam_resets_at(const SpamConfig& spam, int64_t iter) {
  return spam.enabled && spam.reset_interval > 0 && iter > 0 && iter % spam.reset_interval == 0;
}

double spam_warmup_factor(const SpamConfig& spam, int64_t iter) {
  if (!spam.enabled || spam.reset_interval <= 0 || spam.reset_warmup <= 0 || iter < spam.reset_interval) return 1.0;
  const int64_t since_reset = iter % spam.reset_interval;  // 0 at the reset itself
  if (since_reset >= spam.reset_warmup) return 1.0;
  const double p = static_cast<double>(since_reset + 1) / static_cast<double>(spam.reset_warmup);
  return 0.5 * (1.0 - std::cos(kPi * p));
}

double lr_at(const TrainConfig& train, int64_t iter) {
  return base_lr(train, iter) * spam_warmup_factor(train.spam, iter);
}

double prune_sparsity_at(const PruneConfig& prune, int64_t max_iters, int64_t iter) {
  if (!prune.enabled) return 0.0;
  const double start = prune.start_frac * static_cast<double>(max_iters);
  const double end = prune.end_frac * static_cast<double>(max_iters);
  const double t = static_cast<double>(iter);
  if (t < start) return 0.0;
  if (t >= end || end <= start) return prune.target_sparsity;
  const double p = (t - start) / (end - start);
  return prune.target_sparsity * (1.0 - std::pow(1.0 - p, 3));
}

bool prune_updates_at(const PruneConfig& prune, int64_t max_iters, int64_t iter) {
  if (!prune.enabled) return false;
  const auto start = static_cast<int64_t>(std::ceil(prune.start_frac * static_cast<double>(max_iters)));
  const auto end = static_cast<int64_t>(std::ceil(prune.end_frac * static_cast<double>(max_iters)));
  if (iter < start || iter > end) return false;
  return iter == end || (iter - start) % std::max(1, prune.interval) == 0;
}

double flops_per_token(int64_t n_params, int n_layer, int n_head, int head_dim, int block_size) {
  return 6.0 * static_cast<double>(n_params) + 12.0 * n_layer * n_head * head_dim * static_cast<double>(block_size);
}

}  // namespace ratio::worker

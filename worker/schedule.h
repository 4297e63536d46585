#pragma once
// Schedules of the study's training (no LibTorch): learning rate, SPAM's periodic resets, the
// cubic pruning schedule, and the nanoGPT MFU estimate.

#include <cstdint>

#include "matrix/job_spec.h"

namespace ratio::worker {

// Linear warm-up over warmup_iters, then cosine decay from lr to min_lr at max_iters.
double base_lr(const TrainConfig& train, int64_t iter);

// SPAM's periodic moment reset happens before the update of iteration `iter` when this is true
// (iter = reset_interval, 2·reset_interval, ...; never with reset_interval 0).
bool spam_resets_at(const SpamConfig& spam, int64_t iter);
// After each reset the lr warms up again over reset_warmup steps (cosine from ~0 to 1); 1 outside.
double spam_warmup_factor(const SpamConfig& spam, int64_t iter);

// Learning rate actually used at `iter`: base_lr times SPAM's warm-up factor when SPAM is on.
double lr_at(const TrainConfig& train, int64_t iter);

// Target sparsity at `iter`: 0 before start_frac·max_iters, target·(1 − (1 − p)³) in between,
// target after end_frac·max_iters (Zhu & Gupta's gradual pruning).
double prune_sparsity_at(const PruneConfig& prune, int64_t max_iters, int64_t iter);
// Masks are recomputed at iterations that are multiples of `interval` inside the schedule, and at its end.
bool prune_updates_at(const PruneConfig& prune, int64_t max_iters, int64_t iter);

// nanoGPT's estimate of training flops per token: 6·N + 12·L·H·Q·T (N = parameters, Q = head dim).
double flops_per_token(int64_t n_params, int n_layer, int n_head, int head_dim, int block_size);
constexpr double kH100PeakBf16Flops = 989e12;

}  // namespace ratio::worker

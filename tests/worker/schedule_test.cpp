#include <gtest/gtest.h>

#include "worker/schedule.h"

using namespace ratio;
using namespace ratio::worker;

TEST(Schedule, WarmupThenCosineToMinLr) {
  TrainConfig t;
  t.lr = 1e-3;
  t.min_lr = 1e-4;
  t.warmup_iters = 10;
  t.max_iters = 110;
  EXPECT_DOUBLE_EQ(base_lr(t, 0), 1e-4);    // (0+1)/10 of lr
  EXPECT_DOUBLE_EQ(base_lr(t, 9), 1e-3);
  EXPECT_DOUBLE_EQ(base_lr(t, 10), 1e-3);   // cosine starts at lr
  EXPECT_NEAR(base_lr(t, 60), 5.5e-4, 1e-12);  // halfway: the mean of lr and min_lr
  EXPECT_DOUBLE_EQ(base_lr(t, 110), 1e-4);
  for (int i = 11; i < 110; ++i) EXPECT_LE(base_lr(t, i), base_lr(t, i - 1));
}

TEST(Schedule, SpamResetsAndWarmsUpAgain) {
  SpamConfig s;
  s.reset_interval = 100;
  s.reset_warmup = 10;
  EXPECT_FALSE(spam_resets_at(s, 0));
  EXPECT_TRUE(spam_resets_at(s, 100));
  EXPECT_TRUE(spam_resets_at(s, 200));
  EXPECT_FALSE(spam_resets_at(s, 150));
  EXPECT_DOUBLE_EQ(spam_warmup_factor(s, 50), 1.0);  // before the first reset the normal warm-up applies
  EXPECT_GT(spam_warmup_factor(s, 100), 0.0);
  EXPECT_LT(spam_warmup_factor(s, 100), 0.05);
  EXPECT_DOUBLE_EQ(spam_warmup_factor(s, 109), 1.0);
  EXPECT_DOUBLE_EQ(spam_warmup_factor(s, 110), 1.0);
  s.enabled = false;
  EXPECT_FALSE(spam_resets_at(s, 100));
  EXPECT_DOUBLE_EQ(spam_warmup_factor(s, 100), 1.0);
}

TEST(Schedule, CubicPruning) {
  PruneConfig p;
  p.enabled = true;
  p.target_sparsity = 0.5;
  p.start_frac = 0.1;
  p.end_frac = 0.8;
  p.interval = 10;
  EXPECT_DOUBLE_EQ(prune_sparsity_at(p, 1000, 99), 0.0);
  EXPECT_DOUBLE_EQ(prune_sparsity_at(p, 1000, 100), 0.0);
  EXPECT_NEAR(prune_sparsity_at(p, 1000, 450), 0.5 * (1 - 0.125), 1e-12);  // p = 1/2
  EXPECT_DOUBLE_EQ(prune_sparsity_at(p, 1000, 800), 0.5);
  EXPECT_DOUBLE_EQ(prune_sparsity_at(p, 1000, 999), 0.5);
  EXPECT_TRUE(prune_updates_at(p, 1000, 100));
  EXPECT_TRUE(prune_updates_at(p, 1000, 110));
  EXPECT_FALSE(prune_updates_at(p, 1000, 105));
  EXPECT_TRUE(prune_updates_at(p, 1000, 800));
  EXPECT_FALSE(prune_updates_at(p, 1000, 810));
}

TEST(Schedule, Gpt2FlopsPerToken) {
  // /work/shared/gpu.md: 855 MFLOP per token for GPT-2 124M at T = 1024 (nanoGPT's N leaves out wpe).
  const int64_t n = 124'439'808 - 1024 * 768;
  EXPECT_NEAR(flops_per_token(n, 12, 12, 64, 1024) / 1e6, 855.2, 0.1);
}

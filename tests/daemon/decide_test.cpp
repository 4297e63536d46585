// The sequential decision rule alone (daemon/decide.h): its t quantiles, its outcomes, and 1,000
// simulated matrices per scenario under optional stopping, where a seed is added after every look
// that leaves the effect open, exactly as ratiod does.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>

#include "daemon/decide.h"

namespace ratio {
namespace {

TEST(StudentT, QuantilesMatchTables) {
  EXPECT_NEAR(student_t_quantile(0.975, 1), 12.7062, 1e-3);
  EXPECT_NEAR(student_t_quantile(0.975, 10), 2.2281, 1e-4);
  EXPECT_NEAR(student_t_quantile(0.995, 3), 5.8409, 1e-4);
  EXPECT_NEAR(student_t_quantile(0.5, 7), 0.0, 1e-9);
  EXPECT_NEAR(student_t_quantile(0.025, 10), -2.2281, 1e-4);
  // Far tail, many df: the normal's 3.719 plus the first Cornish-Fisher term (z³ + z)/(4·df) = 3.788.
  EXPECT_NEAR(student_t_quantile(0.9999, 200), 3.788, 2e-3);
}

TEST(DecidePaired, OutcomesFollowTheInterval) {
  const DecideOptions options{8, 0.95, 0.01};
  EXPECT_EQ(decide_paired({}, options).outcome, "open");
  EXPECT_EQ(decide_paired({-0.2}, options).outcome, "open");  // one seed has no interval
  const Decision better = decide_paired({-0.101, -0.099, -0.100, -0.102}, options);
  EXPECT_EQ(better.outcome, "better") << better.reason;
  EXPECT_LT(*better.upper, -0.01);
  const Decision worse = decide_paired({0.051, 0.049, 0.050, 0.052}, options);
  EXPECT_EQ(worse.outcome, "not_better") << worse.reason;
  const Decision null_effect = decide_paired({0.0001, -0.0001, 0.0002, -0.0002, 0.0, 0.0001}, options);
  EXPECT_EQ(null_effect.outcome, "not_better") << null_effect.reason;  // interval inside ±min_effect
  EXPECT_NE(null_effect.reason.find("no effect"), std::string::npos);
  const Decision noisy = decide_paired({-0.05, 0.04, -0.03}, options);
  EXPECT_EQ(noisy.outcome, "open") << noisy.reason;
  const Decision spent = decide_paired({-0.05, 0.04, -0.03, 0.02, -0.01, 0.03, -0.04, 0.01}, options);
  EXPECT_EQ(spent.outcome, "undecided") << spent.reason;
  // Each look spends α/K with K = max_seeds − 1 looks.
  EXPECT_NEAR(better.look_confidence, 1.0 - 0.05 / 7, 1e-12);
}

// Seeds added one at a time from 2 until decided or max_seeds, as ratiod adds them.
struct Run {
  std::string outcome;
  int seeds = 0;
};

template <typename Draw>
Run sequential_run(Draw draw, const DecideOptions& options) {
  std::vector<double> d{draw(), draw()};
  while (true) {
    const Decision decision = decide_paired(d, options);
    if (decision.outcome != "open") return {decision.outcome, decision.n};
    d.push_back(draw());
  }
}

struct Scenario {
  const char* name;
  double true_delta;
  double sd_baseline, sd_step;  // per-seed spread of each side (unequal allowed), independent
};

struct Rates {
  double better = 0, not_better = 0, undecided = 0, mean_seeds = 0;
  int max_seeds_seen = 0;
};

Rates simulate(const Scenario& s, const DecideOptions& options, uint64_t seed, int matrices = 1000) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> base(2.70, s.sd_baseline), step(2.70 + s.true_delta, s.sd_step);
  Rates r;
  for (int i = 0; i < matrices; ++i) {
    const Run run = sequential_run([&] { return step(rng) - base(rng); }, options);
    r.better += run.outcome == "better";
    r.not_better += run.outcome == "not_better";
    r.undecided += run.outcome == "undecided";
    r.mean_seeds += run.seeds;
    r.max_seeds_seen = std::max(r.max_seeds_seen, run.seeds);
  }
  r.better /= matrices, r.not_better /= matrices, r.undecided /= matrices, r.mean_seeds /= matrices;
  std::printf("%-22s better %.3f  not better %.3f  undecided %.3f  mean seeds %.2f  max %d\n", s.name, r.better,
              r.not_better, r.undecided, r.mean_seeds, r.max_seeds_seen);
  return r;
}

TEST(DecideSimulation, FalseBetterRateStaysBelowAlphaUnderOptionalStopping) {
  const DecideOptions options{8, 0.95, 0.01};
  // No effect, and an effect exactly at −min_effect: "better" (Δ < −min_effect) is false for both.
  for (const Scenario& s : {Scenario{"null", 0.0, 0.02, 0.02}, Scenario{"null, unequal spread", 0.0, 0.005, 0.04},
                            Scenario{"at the margin", -0.01, 0.02, 0.02}}) {
    const Rates r = simulate(s, options, 42);
    EXPECT_LE(r.better, 1.0 - options.confidence) << s.name;
    EXPECT_LE(r.max_seeds_seen, options.max_seeds) << s.name;
  }
  // The same data judged by a 95 % t-test after every seed, stopping at the first "better", would
  // not hold the rate: this pins that the test above has teeth.
  std::mt19937_64 rng(7);
  std::normal_distribution<double> diff(-0.01, 0.028);
  int naive_false = 0;
  for (int i = 0; i < 1000; ++i) {
    std::vector<double> d{diff(rng), diff(rng)};
    for (; d.size() <= 8; d.push_back(diff(rng))) {
      const Decision one_look = decide_paired(d, DecideOptions{2, 0.95, 0.01});  // K = 1: a plain 95 % interval
      if (one_look.upper && *one_look.upper < -0.01) {
        ++naive_false;
        break;
      }
    }
  }
  std::printf("naive t-test after every seed: false better %.3f\n", naive_false / 1000.0);
  EXPECT_GT(naive_false / 1000.0, 1.0 - options.confidence);
}

TEST(DecideSimulation, LargeEffectsAreDecidedInFewSeedsAndNothingPassesMaxSeeds) {
  const DecideOptions options{8, 0.95, 0.01};
  const Rates large = simulate({"large gain", -0.10, 0.02, 0.02}, options, 1);
  EXPECT_GT(large.better, 0.95);
  EXPECT_LT(large.mean_seeds, 4.5);
  const Rates harm = simulate({"large harm", +0.10, 0.02, 0.02}, options, 2);
  EXPECT_GT(harm.not_better, 0.95);
  EXPECT_LT(harm.mean_seeds, 4.5);
  const Rates small = simulate({"small gain, noisy", -0.015, 0.03, 0.03}, options, 3);
  EXPECT_LE(small.max_seeds_seen, options.max_seeds);
  EXPECT_GT(small.undecided, 0.5);  // honest: 8 seeds cannot settle 0.015 under 0.04 of noise
}

}  // namespace
}  // namespace ratio

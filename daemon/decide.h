#pragma once
// Deciding a step's effect on validation loss from paired seeds, with an error rate that stays valid
// however often the results are looked at (issue 15). A pure function: ratiod calls it after every
// finished seed and adds one more seed while the effect is open.
//
// The data: for each seed number run by both the step and the baseline (same data order, same
// validation batches), the paired difference d = loss_step − loss_baseline. Negative is better.
//
// The rule: a group-sequential design with Bonferroni alpha spending (Jennison & Turnbull, "Group
// Sequential Methods with Applications to Clinical Trials", 2000, §2.4; the simplest member of the
// alpha-spending family of Lan & DeMets, Biometrika 1983). A decision may be taken at every n from 2
// to max_seeds, so there are K = max_seeds − 1 looks; each look builds a two-sided Student-t interval
// for the mean of d at level α/K (α = 1 − confidence). By the union bound the probability that ANY
// look's interval misses the true mean is at most K·α/K = α, so stopping at the first look that
// decides — optional stopping — keeps every decision's error below α. A fixed-sample t-test re-run
// after each seed would not: its error grows with every look. The price is wider intervals than a
// single test; normal paired differences are assumed (the t interval's own assumption).
//
// Outcomes at a look with interval [lo, hi]:
//   better      hi < −min_effect        (an improvement of at least min_effect, with the confidence)
//   not_better  lo > 0                  (worse), or −min_effect < lo ≤ hi < min_effect (no effect
//                                        of a size that matters)
//   open        neither, and seeds remain: run one more
//   undecided   neither, and max_seeds are spent

#include <optional>
#include <string>
#include <vector>

namespace ratio {

struct DecideOptions {
  int max_seeds = 8;
  double confidence = 0.95;
  double min_effect = 0.01;  // in validation-loss units (nats)
};

struct Decision {
  std::string outcome;  // better | not_better | open | undecided
  int n = 0;            // paired seeds used
  std::optional<double> mean;  // mean paired difference (n >= 1)
  std::optional<double> lower, upper;  // the look's interval (n >= 2)
  double look_confidence = 0;  // 1 − α/K: the per-look level that keeps the whole sequence at `confidence`
  std::string reason;          // one sentence with the numbers
};

// `differences`: one paired difference per seed run by both, in any order.
Decision decide_paired(const std::vector<double>& differences, const DecideOptions& options);

// Student's t quantile: P(T_df <= t) = p, for 0 < p < 1 and df >= 1.
double student_t_quantile(double p, int df);

}  // namespace ratio

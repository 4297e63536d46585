// judge_matrix on hand-built matrices: one test per rule of mechanisms.md §Judging and the noise logic.
#include "daemon/verdict.h"

#include <cmath>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace ratio {
namespace {

JobOutcome job(int64_t id, const std::string& step, double final_loss, int64_t params_added = 0) {
  JobOutcome j;
  j.job_id = id;
  j.spec.step = step;
  j.spec.name = "step " + step;
  j.status = "succeeded";
  j.final_val_loss = final_loss;
  j.best_val_loss = final_loss - 0.01;
  j.tokens_per_s = 1000.0;
  j.params_total = 124439808 + params_added;
  j.params_added = params_added;
  return j;
}

JobOutcome with_seed(JobOutcome j, int seed) {
  j.spec.tags.push_back("seed:" + std::to_string(seed));
  j.spec.train.seed = 1337 + seed;
  return j;
}

const ResultRow& row_of(const ResultsTable& table, const std::string& step) {
  for (const ResultRow& row : table.rows)
    if (row.step == step) return row;
  throw std::runtime_error("no row for step " + step);
}

TEST(Verdict, BaselineRowAndDeltas) {
  ResultsTable t = judge_matrix({job(1, "0", 3.60), job(2, "5", 3.50, 12)});
  EXPECT_EQ(t.baseline_step, "0");
  const ResultRow& base = row_of(t, "0");
  EXPECT_EQ(base.verdict, "BASELINE");
  EXPECT_FALSE(base.within_noise.has_value());
  const ResultRow& ra = row_of(t, "5");
  ASSERT_TRUE(ra.delta.has_value());
  EXPECT_NEAR(*ra.delta, -0.10, 1e-12);
  EXPECT_NEAR(*ra.delta_pct, -0.10 / 3.60 * 100.0, 1e-9);
  EXPECT_NEAR(*ra.efficiency, 0.10 / 12e-6, 1e-6);
  EXPECT_EQ(ra.seeds, 1);
  EXPECT_FALSE(ra.val_loss_std.has_value());
}

TEST(Verdict, KeepWhenBetterBeyondSingleSeedNoise) {
  ResultsTable t = judge_matrix({job(1, "0", 3.60), job(2, "5", 3.55, 12)});
  const ResultRow& r = row_of(t, "5");
  EXPECT_EQ(r.verdict, "KEEP") << r.verdict_reason;
  EXPECT_FALSE(*r.within_noise);
}

TEST(Verdict, SingleSeedDifferenceBelowStudyNoiseIsWithinNoise) {
  // The study's recorded steps: 3.5740 (step 0) vs 3.5716 (step 1): 0.0024 apart, far below 0.03.
  ResultsTable t = judge_matrix({job(1, "0", 3.5740), job(2, "1", 3.5716)});
  const ResultRow& r = row_of(t, "1");
  EXPECT_TRUE(*r.within_noise);
  EXPECT_EQ(r.verdict, "INVESTIGATE");
  EXPECT_NE(r.verdict_reason.find("within noise"), std::string::npos) << r.verdict_reason;
}

TEST(Verdict, SingleRunNoiseIsConfigurable) {
  VerdictOptions strict;
  strict.single_run_noise = 0.001;
  ResultsTable t = judge_matrix({job(1, "0", 3.5740), job(2, "1", 3.5716)}, "", strict);
  EXPECT_FALSE(*row_of(t, "1").within_noise);
  EXPECT_EQ(row_of(t, "1").verdict, "KEEP");
}

TEST(Verdict, RemoveWhenWorseBeyondNoise) {
  // The study's step 5 (+RA): 3.6367 against 3.5740, 0.063 worse.
  ResultsTable t = judge_matrix({job(1, "0", 3.5740), job(2, "5", 3.6367, 12)});
  const ResultRow& r = row_of(t, "5");
  EXPECT_EQ(r.verdict, "REMOVE");
  EXPECT_NE(r.verdict_reason.find("worse"), std::string::npos) << r.verdict_reason;
}

TEST(Verdict, SeedsUseMeanAndCombinedStd) {
  // Baseline seeds 3.50, 3.60 (std 0.0707); step seeds 3.40, 3.50 (std 0.0707): delta -0.10,
  // combined std 0.1, threshold 0.2: within noise although a single seed would call 0.10 beyond 0.03.
  ResultsTable t = judge_matrix({with_seed(job(1, "0", 3.50), 1), with_seed(job(2, "0", 3.60), 2),
                                 with_seed(job(3, "5", 3.40, 12), 1), with_seed(job(4, "5", 3.50, 12), 2)});
  const ResultRow& r = row_of(t, "5");
  EXPECT_EQ(r.seeds, 2);
  EXPECT_EQ(r.job_id, 3);
  EXPECT_NEAR(*r.final_val_loss, 3.45, 1e-12);
  EXPECT_NEAR(*r.val_loss_std, std::sqrt(0.005), 1e-12);
  EXPECT_NEAR(*r.delta, -0.10, 1e-12);
  EXPECT_TRUE(*r.within_noise);
  EXPECT_EQ(r.verdict, "INVESTIGATE");
  EXPECT_NE(r.verdict_reason.find("combined seed std"), std::string::npos) << r.verdict_reason;
}

TEST(Verdict, TightSeedsMakeSmallDifferencesReal) {
  // Seeds agree to 0.001: a 0.02 gain (below the single-seed 0.03) is beyond 2x combined std.
  ResultsTable t = judge_matrix({with_seed(job(1, "0", 3.600), 1), with_seed(job(2, "0", 3.601), 2),
                                 with_seed(job(3, "5", 3.580, 12), 1), with_seed(job(4, "5", 3.581, 12), 2)});
  const ResultRow& r = row_of(t, "5");
  EXPECT_FALSE(*r.within_noise);
  EXPECT_EQ(r.verdict, "KEEP") << r.verdict_reason;
}

TEST(Verdict, RemoveWhenLearnedAlphasCollapse) {
  JobOutcome cross = job(2, "4", 3.50, 1000000);
  cross.alphas = {{"h.0.mlp.cross_alpha", 0.001}, {"h.1.mlp.cross_alpha", -0.002}, {"h.1.mlp.ratio", 4.0}};
  ResultsTable t = judge_matrix({job(1, "0", 3.60), cross});
  const ResultRow& r = row_of(t, "4");
  EXPECT_EQ(r.verdict, "REMOVE");
  EXPECT_NE(r.verdict_reason.find("alphas went to ~0"), std::string::npos) << r.verdict_reason;
  // Only mixing alphas are summarised; the learned ratio is not an alpha.
  EXPECT_EQ(r.alphas.size(), 2u);
}

TEST(Verdict, HealthyAlphasDoNotTriggerRemoval) {
  JobOutcome ra = job(2, "5", 3.50, 12);
  ra.alphas = {{"h.0.attn.ra_alpha", 0.25}, {"h.1.attn.ra_alpha", 0.31}};
  ResultsTable t = judge_matrix({job(1, "0", 3.60), ra});
  const ResultRow& r = row_of(t, "5");
  EXPECT_EQ(r.verdict, "KEEP");
  EXPECT_NEAR(r.alphas.at("h.0.attn.ra_alpha"), 0.25, 1e-12);
}

// Step 2 is plain scaling (only mlp_ratio differs from the baseline): 0.10 better for 2M parameters
// = 0.05 per M. Step 4 buys 0.05 for 10M parameters = 0.005 per M: below plain scaling.
std::vector<JobOutcome> matrix_with_plain_scaling(double step4_loss, int64_t step4_added) {
  JobOutcome wide = job(2, "2", 3.50, 2000000);
  wide.spec.model.mlp_ratio = 5.0;
  JobOutcome mech = job(3, "4", step4_loss, step4_added);
  mech.spec.model.mlp_gate.enabled = true;
  mech.spec.model.mlp_cross.enabled = true;
  return {job(1, "0", 3.60), wide, mech};
}

TEST(Verdict, PlainScalingIsTheWiderMlpOnlyStep) {
  ResultsTable t = judge_matrix(matrix_with_plain_scaling(3.55, 10000000));
  EXPECT_EQ(t.plain_scaling_step, "2");
  EXPECT_NEAR(*t.plain_scaling_efficiency, 0.05, 1e-9);
  EXPECT_EQ(row_of(t, "2").verdict, "KEEP");  // the reference is not judged against itself
}

TEST(Verdict, RemoveWhenEfficiencyBelowPlainScaling) {
  ResultsTable t = judge_matrix(matrix_with_plain_scaling(3.55, 10000000));
  const ResultRow& r = row_of(t, "4");
  EXPECT_NEAR(*r.efficiency, 0.005, 1e-9);
  EXPECT_EQ(r.verdict, "REMOVE");
  EXPECT_NE(r.verdict_reason.find("below plain scaling (step 2"), std::string::npos) << r.verdict_reason;
}

TEST(Verdict, KeepWhenEfficiencyAbovePlainScaling) {
  ResultsTable t = judge_matrix(matrix_with_plain_scaling(3.50, 1000000));  // 0.10 per M
  EXPECT_EQ(row_of(t, "4").verdict, "KEEP") << row_of(t, "4").verdict_reason;
}

TEST(Verdict, StepWithOtherChangesIsNotPlainScaling) {
  std::vector<JobOutcome> jobs = matrix_with_plain_scaling(3.55, 10000000);
  jobs[1].spec.model.ra.enabled = true;  // step 2 now changes attention too
  ResultsTable t = judge_matrix(jobs);
  EXPECT_EQ(t.plain_scaling_step, "");
  EXPECT_EQ(row_of(t, "4").verdict, "KEEP");
}

TEST(Verdict, PlainScalingWithinNoiseIsNoYardstick) {
  std::vector<JobOutcome> jobs = matrix_with_plain_scaling(3.55, 10000000);
  jobs[1].final_val_loss = 3.59;  // plain scaling gained only 0.01: noise
  ResultsTable t = judge_matrix(jobs);
  EXPECT_EQ(t.plain_scaling_step, "2");
  EXPECT_FALSE(t.plain_scaling_efficiency.has_value());
  EXPECT_EQ(row_of(t, "4").verdict, "KEEP");
}

TEST(Verdict, DeadParametersBlockKeep) {
  JobOutcome coupler = job(2, "m3", 3.50, 100000);
  coupler.grad_norms = {{"h.0.coupler.tied.weight", 0.12}, {"h.0.coupler.mlp_down.weight", 0.0}};
  ResultsTable t = judge_matrix({job(1, "0", 3.60), coupler});
  const ResultRow& r = row_of(t, "m3");
  ASSERT_EQ(r.dead_params.size(), 1u);
  EXPECT_EQ(r.dead_params[0], "h.0.coupler.mlp_down.weight");
  EXPECT_EQ(r.verdict, "INVESTIGATE");
  EXPECT_NE(r.verdict_reason.find("no gradient"), std::string::npos) << r.verdict_reason;
}

TEST(Verdict, FailedAndRunningStepsHaveNoVerdict) {
  JobOutcome failed = job(2, "3", 0.0);
  failed.status = "failed";
  failed.final_val_loss.reset();
  failed.reason = "diverged at iter 120";
  JobOutcome running = job(3, "4", 0.0);
  running.status = "running";
  running.final_val_loss.reset();
  ResultsTable t = judge_matrix({job(1, "0", 3.60), failed, running});
  EXPECT_EQ(row_of(t, "3").verdict, "");
  EXPECT_NE(row_of(t, "3").verdict_reason.find("diverged at iter 120"), std::string::npos);
  EXPECT_NE(row_of(t, "3").verdict_reason.find("ratio rerun --job 2"), std::string::npos);
  EXPECT_EQ(row_of(t, "4").status, "running");
  EXPECT_NE(row_of(t, "4").verdict_reason.find("0 of 1"), std::string::npos);
}

TEST(Verdict, StepWithAFailedSeedIsFailed) {
  JobOutcome lost = with_seed(job(3, "5", 0.0), 2);
  lost.status = "failed";
  lost.final_val_loss.reset();
  ResultsTable t = judge_matrix({job(1, "0", 3.60), with_seed(job(2, "5", 3.50), 1), lost});
  EXPECT_EQ(row_of(t, "5").status, "failed");
  EXPECT_EQ(row_of(t, "5").seeds, 1);
  EXPECT_EQ(row_of(t, "5").verdict, "");
}

TEST(Verdict, DeclaredBaselineAndMissingBaseline) {
  ResultsTable declared = judge_matrix({job(1, "ratio-4.0", 3.60), job(2, "ratio-5.0", 3.50)}, "ratio-4.0");
  EXPECT_EQ(declared.baseline_step, "ratio-4.0");
  EXPECT_EQ(row_of(declared, "ratio-5.0").verdict, "KEEP");

  ResultsTable none = judge_matrix({job(1, "a", 3.60), job(2, "b", 3.50)});
  EXPECT_EQ(none.baseline_step, "");
  EXPECT_FALSE(row_of(none, "b").delta.has_value());
  EXPECT_EQ(row_of(none, "b").verdict, "");
  EXPECT_NE(row_of(none, "b").verdict_reason.find("no baseline"), std::string::npos);
}

TEST(Verdict, FewerParametersHaveNoEfficiency) {
  ResultsTable t = judge_matrix({job(1, "0", 3.60), job(2, "8", 3.61, -500000)});
  const ResultRow& r = row_of(t, "8");
  EXPECT_FALSE(r.efficiency.has_value());
  EXPECT_EQ(r.verdict, "INVESTIGATE");
}

TEST(Verdict, ForcedGatesTwinIsComparedWithItsGatedStep) {
  JobOutcome gated = job(2, "12", 3.50, 1000);
  JobOutcome twin = job(3, "17", 3.51, 900);
  twin.spec.tags.push_back("forced_gates_twin_of:12");
  JobOutcome worse_twin = job(4, "18", 3.58, 900);
  worse_twin.spec.tags.push_back("forced_gates_twin_of:12");
  ResultsTable t = judge_matrix({job(1, "0", 3.60), gated, twin, worse_twin});
  EXPECT_NE(row_of(t, "17").verdict_reason.find("vs step 12 with learned gates: +0.0100 (within noise"),
            std::string::npos)
      << row_of(t, "17").verdict_reason;
  EXPECT_NE(row_of(t, "18").verdict_reason.find("+0.0800 (learned gates help)"), std::string::npos)
      << row_of(t, "18").verdict_reason;
  EXPECT_EQ(row_of(t, "12").verdict_reason.find("learned gates"), std::string::npos);
}

TEST(Verdict, JsonRowHasEveryApiField) {
  nlohmann::json j = to_json(judge_matrix({job(1, "0", 3.60), job(2, "5", 3.50, 12)}));
  EXPECT_EQ(j["baseline_step"], "0");
  ASSERT_EQ(j["rows"].size(), 2u);
  for (const char* key : {"job_id", "step", "name", "status", "final_val_loss", "best_val_loss", "delta", "delta_pct",
                          "params_total", "params_added", "efficiency", "tokens_per_s", "verdict", "verdict_reason",
                          "alphas", "seeds", "val_loss_std", "within_noise", "dead_params"})
    EXPECT_TRUE(j["rows"][1].contains(key)) << key;
  EXPECT_TRUE(j["rows"][0]["delta"].is_number());  // baseline vs itself: 0
  EXPECT_TRUE(j["rows"][0]["within_noise"].is_null());
  EXPECT_TRUE(j["rows"][1]["val_loss_std"].is_null());
  EXPECT_EQ(j["rows"][1]["verdict"], "KEEP");
}

}  // namespace
}  // namespace ratio

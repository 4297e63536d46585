// `decide:` on hand-built outcomes: which seeds ratiod adds (daemon/seeding.h) and how the decision
// turns into the results row (daemon/verdict.h with VerdictOptions::decide).
#include "daemon/seeding.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace ratio::daemon {
namespace {

JobOutcome seed_job(int64_t id, const std::string& step, uint64_t seed, std::optional<double> loss,
                    const std::string& status = "succeeded") {
  JobOutcome j;
  j.job_id = id;
  j.spec.step = step;
  j.spec.name = "step " + step + " (seed " + std::to_string(seed) + ")";
  j.spec.train.seed = seed;
  j.spec.tags = {"seed:" + std::to_string(seed)};
  j.status = status;
  j.final_val_loss = loss;
  j.tokens_per_s = 1000.0;
  return j;
}

const DecideOptions kOptions{4, 0.95, 0.01};

TEST(Seeding, AnOpenStepGetsTheNextSeedAndTheBaselineItsPair) {
  // Step 5 is noisy against the baseline: open after 2 seeds.
  std::vector<JobOutcome> jobs = {seed_job(1, "0", 1, 3.00), seed_job(2, "0", 2, 3.00), seed_job(3, "5", 1, 2.95),
                                  seed_job(4, "5", 2, 3.04)};
  const auto requests = seeds_to_add(jobs, "", kOptions);
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].step, "5");
  EXPECT_EQ(requests[0].seed, 3u);
  EXPECT_EQ(requests[0].template_job_id, 3);
  EXPECT_NE(requests[0].reason.find("seed 3 added: open"), std::string::npos) << requests[0].reason;
  EXPECT_EQ(requests[1].step, "0");
  EXPECT_EQ(requests[1].seed, 3u);
}

TEST(Seeding, OneBaselineSeedServesEveryOpenStep) {
  std::vector<JobOutcome> jobs = {seed_job(1, "0", 1, 3.00), seed_job(2, "0", 2, 3.00), seed_job(3, "5", 1, 2.95),
                                  seed_job(4, "5", 2, 3.04),  seed_job(5, "7", 1, 3.05), seed_job(6, "7", 2, 2.97)};
  const auto requests = seeds_to_add(jobs, "", kOptions);
  int baseline_requests = 0;
  for (const auto& r : requests) baseline_requests += r.step == "0";
  EXPECT_EQ(requests.size(), 3u);
  EXPECT_EQ(baseline_requests, 1);
}

TEST(Seeding, NothingIsAddedWhileASeedRunsOrFailedOrTheEffectIsDecidedOrSeedsAreSpent) {
  const std::vector<JobOutcome> base = {seed_job(1, "0", 1, 3.00), seed_job(2, "0", 2, 3.01)};
  auto with = [&](std::vector<JobOutcome> step) {
    std::vector<JobOutcome> all = base;
    all.insert(all.end(), step.begin(), step.end());
    return seeds_to_add(all, "", kOptions);
  };
  EXPECT_TRUE(with({seed_job(3, "5", 1, 2.95), seed_job(4, "5", 2, std::nullopt, "running")}).empty());
  EXPECT_TRUE(with({seed_job(3, "5", 1, 2.95), seed_job(4, "5", 2, std::nullopt, "failed")}).empty());
  EXPECT_TRUE(with({seed_job(3, "5", 1, 2.90), seed_job(4, "5", 2, 2.91)}).empty());  // exactly −0.1 both times
  EXPECT_TRUE(with({seed_job(3, "5", 1, 2.95), seed_job(4, "5", 2, 3.04), seed_job(5, "5", 3, 2.99),
                    seed_job(6, "5", 4, 3.03)})
                  .empty());  // 4 = max_seeds
  // A step whose seed has no finished baseline pair waits for it.
  std::vector<JobOutcome> unpaired = {seed_job(1, "0", 1, 3.00), seed_job(2, "0", 2, std::nullopt, "queued"),
                                      seed_job(3, "5", 1, 2.95), seed_job(4, "5", 2, 3.04)};
  EXPECT_TRUE(seeds_to_add(unpaired, "", kOptions).empty());
}

TEST(DecideVerdict, DecisionsReplaceTheNoiseRule) {
  VerdictOptions options;
  options.decide = kOptions;
  // Step 5: clearly better on 3 paired seeds; step 7: clearly worse; step 9: open, a seed queued.
  std::vector<JobOutcome> jobs = {seed_job(1, "0", 1, 3.00),  seed_job(2, "0", 2, 3.02),  seed_job(3, "0", 3, 2.99),
                                  seed_job(4, "5", 1, 2.90),  seed_job(5, "5", 2, 2.921), seed_job(6, "5", 3, 2.889),
                                  seed_job(7, "7", 1, 3.10),  seed_job(8, "7", 2, 3.119), seed_job(9, "7", 3, 3.091),
                                  seed_job(10, "9", 1, 2.95), seed_job(11, "9", 2, 3.04),
                                  seed_job(12, "9", 3, std::nullopt, "queued")};
  jobs[11].spec.tags.push_back(kDecideTag + "seed 3 added: open: ...");
  const ResultsTable table = judge_matrix(jobs, "", options);
  const nlohmann::json j = to_json(table);
  ASSERT_EQ(table.rows.size(), 4u);
  EXPECT_EQ(table.rows[1].verdict, "KEEP") << table.rows[1].verdict_reason;
  EXPECT_EQ(table.rows[1].decision->outcome, "better");
  EXPECT_EQ(table.rows[2].verdict, "REMOVE") << table.rows[2].verdict_reason;
  EXPECT_EQ(table.rows[2].decision->outcome, "not_better");
  EXPECT_TRUE(table.rows[3].verdict.empty());
  EXPECT_EQ(table.rows[3].decision->outcome, "open");
  EXPECT_NE(table.rows[3].verdict_reason.find("deciding"), std::string::npos) << table.rows[3].verdict_reason;
  EXPECT_EQ(j["rows"][3]["decision"]["history"][0]["seed"], 3);
  EXPECT_EQ(j["rows"][1]["decision"]["seeds"], 3);
  EXPECT_LT(j["rows"][1]["decision"]["upper"].get<double>(), -0.01);
  EXPECT_EQ(j["decide"]["open_steps"], 1);
  EXPECT_TRUE(j["decide"]["gpu_seconds_left_at_most"].is_number());
  EXPECT_TRUE(j["rows"][0]["decision"].is_null());  // the baseline
  // Without `decide` the rows carry no decision.
  EXPECT_TRUE(to_json(judge_matrix(jobs))["rows"][1]["decision"].is_null());
}

}  // namespace
}  // namespace ratio::daemon

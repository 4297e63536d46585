// The SLURM executor against a real slurmctld and slurmd on localhost (tests/daemon/slurm_cluster.h),
// with the real ratiod and ratio-worker on CPU jobs. Nothing is mocked. Each test starts its own
// cluster and stops it (with every job it still had).
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "daemon/process.h"
#include "db/store.h"
#include "tests/daemon/daemon_process.h"
#include "tests/daemon/slurm_cluster.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace ratio_test;

namespace {

class SlurmTest : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef RATIO_HAVE_WORKER
    GTEST_SKIP() << "built with RATIO_WITH_TORCH=OFF: there is no ratio-worker to run on SLURM";
#endif
    if (std::string missing = missing_slurm_binaries(); !missing.empty()) {
      GTEST_SKIP() << "SLURM is not installed (missing " << missing
                   << "); scripts/setup.sh installs slurmctld slurmd slurm-client munge";
    }
    dir_ = fs::temp_directory_path() / ("ratio-slurm-test-" + std::to_string(getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    cluster_ = std::make_unique<SlurmCluster>(dir_ / "slurm");
    cluster_->start();
  }
  void TearDown() override {
    daemon_.reset();  // kill -9 of ratiod first: nothing submits while the cluster stops
    if (cluster_) {
      if (HasFailure()) std::cerr << cluster_->logs();
      cluster_->stop();
    }
    if (!HasFailure() && !dir_.empty()) fs::remove_all(dir_);
  }
  // ratiod with the SLURM executor (the test cluster has no GPUs: no gres).
  Daemon& start_daemon(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--executor", "slurm", "--slurm-gres", "none"};
    args.insert(args.end(), extra.begin(), extra.end());
    daemon_ = std::make_unique<Daemon>(dir_ / "slurm-ratiod", args);
    fs::create_directories(dir_ / "slurm-ratiod");
    daemon_->start();
    return *daemon_;
  }
  static std::vector<int64_t> iters_of(const json& series) {
    std::vector<int64_t> iters;
    for (const json& point : series) iters.push_back(point[0].get<int64_t>());
    return iters;
  }
  // Every logged iteration of the job once, from the first to the last (log_interval 5).
  static void expect_whole_series(Daemon& d, int64_t job, int64_t last) {
    json series = d.get("/api/jobs/" + std::to_string(job) + "/metrics?names=train_loss&max_points=100000")["series"];
    std::vector<int64_t> iters = iters_of(series["train_loss"]);
    ASSERT_FALSE(iters.empty());
    EXPECT_LT(iters.front(), 5);
    for (size_t i = 1; i < iters.size(); ++i) EXPECT_EQ(iters[i] - iters[i - 1], 5) << "at " << iters[i];
    EXPECT_GE(iters.back(), last);
  }

  fs::path dir_;
  std::unique_ptr<SlurmCluster> cluster_;
  std::unique_ptr<Daemon> daemon_;
};

// The demo preset through SLURM and on local CPU slots side by side (one thread per worker in both,
// two at a time): every job succeeds, and CPU training is deterministic, so the losses agree. Its 8
// jobs are cut from 200 to 24 iterations (an eval at 12 and 24): 16 full runs take ~15 CPU-minutes.
TEST_F(SlurmTest, DemoPresetSucceedsAndMatchesALocalRunOfTheSameSeeds) {
  Daemon& d = start_daemon();
  fs::create_directories(dir_ / "local-ratiod");
  Daemon local(dir_ / "local-ratiod", {"--slots", "cpu:2"});
  local.start();
  auto preset = d.client().Get("/api/presets/demo");
  ASSERT_TRUE(preset && preset->status == 200);
  std::string demo = preset->body;
  for (auto [from, to] : {std::pair<std::string, std::string>{"max_iters: 200", "max_iters: 24"},
                          {"eval_interval: 50", "eval_interval: 12"}}) {
    ASSERT_NE(demo.find(from), std::string::npos) << from;
    demo.replace(demo.find(from), from.size(), to);
  }
  auto [status, created] = d.post("/api/matrices", demo);
  ASSERT_EQ(status, 201) << created.dump();
  auto [local_status, local_created] = local.post("/api/matrices", demo);
  ASSERT_EQ(local_status, 201) << local_created.dump();
  const int64_t matrix = created["id"].get<int64_t>(), local_matrix = local_created["id"].get<int64_t>();
  // Both runs share the cores: one deadline for the two.
  ASSERT_TRUE(d.wait_for([&] { return d.matrix_done(matrix) && local.matrix_done(local_matrix); }, 480,
                         "the SLURM and the local run of the demo preset"));

  json jobs = d.get("/api/jobs?matrix=" + std::to_string(matrix))["jobs"];
  json local_jobs = local.get("/api/jobs?matrix=" + std::to_string(local_matrix))["jobs"];
  ASSERT_EQ(jobs.size(), local_jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_EQ(jobs[i]["status"], "succeeded") << jobs[i];
    ASSERT_EQ(local_jobs[i]["status"], "succeeded") << local_jobs[i];
    EXPECT_EQ(jobs[i]["name"], local_jobs[i]["name"]);
    EXPECT_NEAR(jobs[i]["final_val_loss"].get<double>(), local_jobs[i]["final_val_loss"].get<double>(), 1e-6)
        << jobs[i]["name"];
    EXPECT_NEAR(jobs[i]["best_val_loss"].get<double>(), local_jobs[i]["best_val_loss"].get<double>(), 1e-6);
    ASSERT_TRUE(jobs[i]["slurm"].is_object()) << jobs[i];
    EXPECT_EQ(jobs[i]["slurm"]["state"], "COMPLETED");
    EXPECT_TRUE(local_jobs[i]["slurm"].is_null());
  }
  // The attempt stores its SLURM job id, and its log (SLURM's --output) is served as usual.
  json detail = d.job(jobs[0]["id"].get<int64_t>());
  ASSERT_EQ(detail["attempts"].size(), 1u);
  EXPECT_FALSE(detail["attempts"][0]["slurm"]["job_id"].get<std::string>().empty());
  auto log = d.client().Get(("/api/jobs/" + jobs[0]["id"].dump() + "/log?tail=5").c_str());
  ASSERT_TRUE(log);
  EXPECT_NE(log->body.find("\"type\":\"finished\""), std::string::npos) << log->body;
  auto prometheus = d.client().Get("/metrics");  // workers on the nodes reported over HTTP too
  ASSERT_TRUE(prometheus);
  EXPECT_EQ(prometheus->body.find("ratio_reports_total{answer=\"accepted\"} 0\n"), std::string::npos);
}

// A job cancelled in SLURM by someone else: the worker checkpoints on SLURM's SIGTERM, the attempt
// ends lost, and the retry resumes from the checkpoint with no gap or duplicate in its metrics.
TEST_F(SlurmTest, ScancelFromOutsideIsLostAndTheRetryResumes) {
  Daemon& d = start_daemon();
  auto [status, created] = d.post("/api/matrices", tiny_matrix("scancel", 300, "  - {id: 0}\n"));
  ASSERT_EQ(status, 201) << created.dump();
  const int64_t job = created["jobs"][0]["id"].get<int64_t>();
  ASSERT_TRUE(d.wait_for([&] { return d.job(job)["job"]["iter"].get<int64_t>() >= 25; }, 120, "iteration 25"));
  const std::string slurm_id = d.job(job)["attempts"][0]["slurm"]["job_id"].get<std::string>();
  auto r = ratio::daemon::run_command({"scancel", slurm_id});
  ASSERT_EQ(r.exit.code, 0) << r.err;
  ASSERT_TRUE(d.wait_for([&] { return d.job_status(job) == "succeeded"; }, 180, "the retried job to succeed"));

  json attempts = d.job(job)["attempts"];
  ASSERT_EQ(attempts.size(), 2u) << attempts;
  EXPECT_EQ(attempts[0]["status"], "lost");
  EXPECT_NE(attempts[0]["reason"].get<std::string>().find("cancelled in SLURM"), std::string::npos) << attempts[0];
  EXPECT_EQ(attempts[0]["slurm"]["state"], "CANCELLED");
  EXPECT_GT(attempts[1]["start_iter"].get<int64_t>(), 0) << "the retry resumes past iteration 0";
  EXPECT_NE(attempts[1]["slurm"]["job_id"], attempts[0]["slurm"]["job_id"]);
  expect_whole_series(d, job, 295);
}

// kill -9 of ratiod mid-matrix: the restarted daemon (same port, so the workers' HTTP reports reach
// it) re-attaches to its SLURM jobs by their stored ids; no job gets a second attempt.
TEST_F(SlurmTest, KilledDaemonReattachesToItsSlurmJobs) {
  Daemon& d = start_daemon();
  auto [status, created] =
      d.post("/api/matrices", tiny_matrix("reattach", 200, "  - {id: 0}\n  - {id: 5, ra: true}\n  - {id: 9, mlp_ratio: 3}\n"));
  ASSERT_EQ(status, 201) << created.dump();
  const int64_t matrix = created["id"].get<int64_t>();
  const int64_t first = created["jobs"][0]["id"].get<int64_t>();
  ASSERT_TRUE(d.wait_for([&] { return d.job(first)["job"]["iter"].get<int64_t>() >= 25; }, 120, "iteration 25"));
  const int port = d.port();
  d.kill9();
  sleep_s(3);  // the workers go on without a daemon
  d.start({"--listen", "127.0.0.1:" + std::to_string(port)});
  ASSERT_TRUE(d.wait_for([&] { return d.matrix_done(matrix); }, 180, "the matrix to complete after the restart"));

  for (const json& job : d.get("/api/jobs?matrix=" + std::to_string(matrix))["jobs"]) {
    EXPECT_EQ(job["status"], "succeeded") << job;
    json attempts = d.job(job["id"].get<int64_t>())["attempts"];
    EXPECT_EQ(attempts.size(), 1u) << "re-attached, not resubmitted: " << attempts;
    expect_whole_series(d, job["id"].get<int64_t>(), 195);
  }
  ratio::db::Store store((dir_ / "slurm-ratiod" / "ratio.db").string(), true);
  auto dup = store.connection().prepare(
      "SELECT COUNT(*) FROM (SELECT job_id, name, iter FROM metrics GROUP BY 1, 2, 3 HAVING COUNT(*) > 1)");
  dup.step();
  EXPECT_EQ(dup.get_int(0), 0);
}

// A partition SLURM does not have: sbatch refuses, the job fails at once with SLURM's own message.
TEST_F(SlurmTest, BadPartitionFailsAtOnceWithSlurmsMessage) {
  Daemon& d = start_daemon({"--slurm-partition", "no-such-partition"});
  auto [status, created] = d.post("/api/matrices", tiny_matrix("bad-partition", 20, "  - {id: 0}\n"));
  ASSERT_EQ(status, 201) << created.dump();
  const int64_t job = created["jobs"][0]["id"].get<int64_t>();
  ASSERT_TRUE(d.wait_for([&] { return d.job_status(job) == "failed"; }, 30, "the job to fail"));
  json detail = d.job(job);
  EXPECT_NE(detail["job"]["reason"].get<std::string>().find("Invalid partition name specified"), std::string::npos)
      << detail["job"];
  sleep_s(2);
  EXPECT_EQ(d.job(job)["attempts"].size(), 1u) << "a refused submission is not retried";
}

// A job that cannot start (more CPUs than the node has) waits in SLURM's queue: the API shows SLURM's
// state and reason, no lease runs (a 3 s lease would have expired), and cancel takes it out.
TEST_F(SlurmTest, PendingJobShowsSlurmsReasonAndIsNotLost) {
  Daemon& d = start_daemon({"--slurm-arg", "--cpus-per-task=" + std::to_string(std::thread::hardware_concurrency() + 1),
                            "--lease-s", "3"});
  auto [status, created] = d.post("/api/matrices", tiny_matrix("pending", 20, "  - {id: 0}\n"));
  ASSERT_EQ(status, 201) << created.dump();
  const int64_t job = created["jobs"][0]["id"].get<int64_t>();
  auto slurm_state = [&] {
    json slurm = d.job(job)["job"]["slurm"];
    return slurm.is_object() ? slurm["state"].get<std::string>() : std::string();
  };
  ASSERT_TRUE(d.wait_for([&] { return slurm_state() == "PENDING"; }, 30, "the job to show as PENDING"));
  sleep_s(8);
  json detail = d.job(job);
  EXPECT_EQ(detail["job"]["status"], "running") << detail["job"];
  EXPECT_EQ(detail["job"]["slurm"]["state"], "PENDING");
  EXPECT_FALSE(detail["job"]["slurm"]["reason"].get<std::string>().empty()) << detail["job"];
  ASSERT_EQ(detail["attempts"].size(), 1u);
  EXPECT_EQ(detail["attempts"][0]["status"], "running");

  EXPECT_EQ(d.post("/api/jobs/" + std::to_string(job) + "/cancel", "").first, 200);
  ASSERT_TRUE(d.wait_for([&] { return d.job_status(job) == "cancelled"; }, 30, "the cancel"));
}

}  // namespace

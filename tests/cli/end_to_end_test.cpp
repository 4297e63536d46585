// `ratio` against the real ratiod running the real ratio-worker: submit a tiny matrix, watch it
// finish, and check that every read command shows what the API holds. Skipped (with a message) only
// in builds without LibTorch, which have no worker.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "tests/cli/cli_process.h"

namespace ratio::cli::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Three 1-layer models on byte-level fortunes, 30 iterations each: baseline, plain scaling, RA.
constexpr const char* kTinyMatrix = R"(name: cli-e2e
description: CLI end-to-end test matrix
base:
  model: {n_layer: 1, n_head: 2, n_embd: 32, vocab_size: 256, block_size: 32, mlp_ratio: 4.0, ra: {window: 8}}
  train: {max_iters: 30, batch_size: 4, grad_accum: 1, warmup_iters: 3, eval_interval: 10, eval_batches: 2,
          checkpoint_interval: 10, log_interval: 5, grad_norm_interval: 5, device: cpu}
  data: {dataset: fortunes, tokenizer: byte}
steps:
  - id: 0
    name: baseline
  - id: 2
    name: wider MLP
    mlp_ratio: 5.0
  - id: 5
    name: + RA
    ra: true
)";

class Daemon {
 public:
  Daemon(const fs::path& dir, int port) {
    const std::string ratiod = bin_dir() + "/ratiod";
    const std::string listen = "127.0.0.1:" + std::to_string(port);
    const std::string db = (dir / "ratio.db").string(), work = (dir / "work").string(), data = (dir / "data").string(),
                      log = (dir / "ratiod.log").string();
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execl(ratiod.c_str(), "ratiod", "--db", db.c_str(), "--listen", listen.c_str(), "--workdir", work.c_str(),
              "--data-dir", data.c_str(), "--slots", "cpu:1", static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~Daemon() { stop(); }

  // SIGTERM, then the exit status (0 = clean shutdown); SIGKILL after 60 s.
  int stop() {
    if (pid_ <= 0) return status_;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 600; ++i) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = 0;
        status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return status_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = 0;
    return status_ = 137;
  }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
};

TEST(CliEndToEnd, SubmitWatchResultsExport) {
  if (!RATIO_HAS_WORKER) GTEST_SKIP() << "built with RATIO_WITH_TORCH=OFF: there is no ratio-worker to run jobs";

  const fs::path dir = fs::temp_directory_path() / ("ratio-cli-e2e-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const int port = free_port();
  const std::string server = "http://127.0.0.1:" + std::to_string(port);
  const std::string env = "RATIO_SERVER=" + server;
  Daemon daemon(dir, port);

  // Up within 30 s: `ratio status` stops exiting 3 (unreachable).
  Ran up;
  for (int i = 0; i < 300; ++i) {
    up = run_ratio({"status"}, env);
    if (up.code != 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(up.code, 0) << up.err << "\nratiod log:\n" << slurp(dir / "ratiod.log");

  const fs::path matrix_file = dir / "tiny.yaml";
  std::ofstream(matrix_file) << kTinyMatrix;
  // submit --watch: progress on stderr, the matrix id alone on stdout.
  const Ran submitted = run_ratio({"submit", matrix_file.string(), "--watch", "--interval", "0.5"}, env);
  ASSERT_EQ(submitted.code, 0) << submitted.err << "\nratiod log:\n" << slurp(dir / "ratiod.log");
  const std::string id = last_line(submitted.out);
  EXPECT_EQ(submitted.out, id + "\n");
  EXPECT_NE(submitted.err.find("as id " + id + ": 3 jobs"), std::string::npos) << submitted.err;
  EXPECT_NE(submitted.err.find("3 succeeded"), std::string::npos) << submitted.err;
  // The final table shows each job's last train loss and its final val loss, not values seen mid-run.
  httplib::Client http(server);
  const json jobs = json::parse(http.Get(("/api/jobs?matrix=" + id).c_str())->body).at("jobs");
  ASSERT_EQ(jobs.size(), 3u);
  for (const json& job : jobs) {
    const std::string job_id = job.at("id").dump();
    const auto metrics = http.Get(("/api/jobs/" + job_id + "/metrics?names=train_loss&max_points=1").c_str());
    ASSERT_TRUE(metrics);
    const double last_train = json::parse(metrics->body).at("series").at("train_loss").at(0).at(1).get<double>();
    std::string line;  // the table row whose first cell (right-aligned) is the job id
    std::istringstream lines(submitted.err);
    for (std::string candidate; std::getline(lines, candidate);) {
      std::string first_cell;
      std::istringstream(candidate) >> first_cell;
      if (first_cell == job_id) line = candidate + " ";
    }
    ASSERT_FALSE(line.empty()) << "no row for job " << job_id << " in:\n" << submitted.err;
    char expected[64];
    std::snprintf(expected, sizeof expected, " %.4f ", last_train);
    EXPECT_NE(line.find(expected), std::string::npos) << "train_loss" << expected << "missing: " << line;
    std::snprintf(expected, sizeof expected, " %.4f ", job.at("final_val_loss").get<double>());
    EXPECT_NE(line.find(expected), std::string::npos) << "val_loss" << expected << "missing: " << line;
  }

  const Ran watched = run_ratio({"status", id, "--watch", "--interval", "0.5"}, env);
  ASSERT_EQ(watched.code, 0) << watched.err;
  EXPECT_NE(watched.out.find("matrix " + id + " (cli-e2e): 3 jobs, 3 succeeded"), std::string::npos) << watched.out;
  EXPECT_NE(watched.out.find("30/30"), std::string::npos) << watched.out;

  // The same configs again reuse the finished results, and say so.
  const Ran again = run_ratio({"submit", matrix_file.string()}, env);
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_NE(again.err.find("3 reuse cached results"), std::string::npos) << again.err;

  // --json prints exactly what the API answers.
  const Ran results = run_ratio({"results", id, "--json"}, env);
  ASSERT_EQ(results.code, 0) << results.err;
  const auto api = http.Get(("/api/matrices/" + id + "/results").c_str());
  ASSERT_TRUE(api);
  ASSERT_EQ(api->status, 200);
  const json from_api = json::parse(api->body);
  EXPECT_EQ(json::parse(results.out), from_api);
  ASSERT_EQ(from_api.at("rows").size(), 3u);
  for (const json& row : from_api.at("rows")) {
    EXPECT_EQ(row.at("status"), "succeeded") << row.dump();
    EXPECT_TRUE(row.at("final_val_loss").is_number()) << row.dump();
    EXPECT_TRUE(row.at("verdict").is_string()) << row.dump();
  }

  const Ran table = run_ratio({"results", id}, env);
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.out.find("BASELINE"), std::string::npos) << table.out;
  const Ran csv = run_ratio({"results", id, "--csv"}, env);
  EXPECT_EQ(std::count(csv.out.begin(), csv.out.end(), '\n'), 4) << csv.out;

  const Ran exported = run_ratio({"export", id, (dir / "export").string()}, env);
  ASSERT_EQ(exported.code, 0) << exported.err;
  const fs::path export_dir = last_line(exported.out);
  EXPECT_NE(export_dir.filename().string().find("cli-e2e_results_"), std::string::npos);
  EXPECT_EQ(json::parse(slurp(export_dir / "summary.json")), from_api);
  for (const char* step : {"0", "2", "5"}) {
    const json step_file = json::parse(slurp(export_dir / (std::string("step_") + step + ".json")));
    EXPECT_EQ(step_file.at("row").at("step"), step);
    EXPECT_FALSE(step_file.at("jobs").at(0).at("metrics").at("train_loss").empty());
  }

  const std::string first_job = std::to_string(from_api["rows"][0]["job_id"].get<int64_t>());
  const Ran logs = run_ratio({"logs", first_job, "--tail", "5"}, env);
  EXPECT_EQ(logs.code, 0) << logs.err;
  EXPECT_FALSE(logs.out.empty());
  const Ran followed = run_ratio({"logs", first_job, "-f", "--tail", "2"}, env);  // ends: the job has finished
  EXPECT_EQ(followed.code, 0) << followed.err;
  EXPECT_NE(followed.out.find("--- job " + first_job + " succeeded ---"), std::string::npos) << followed.out;

  // A rerun adds an attempt; cancelling the matrix stops it unless it already finished.
  const Ran rerun = run_ratio({"rerun", "--job", first_job}, env);
  EXPECT_EQ(rerun.code, 0) << rerun.err;
  EXPECT_EQ(rerun.out, "requeued 1 job(s) " + first_job + "\n");
  EXPECT_EQ(run_ratio({"cancel", "--matrix", id}, env).code, 0);
  const int after_cancel = run_ratio({"status", id, "--watch", "--interval", "0.5"}, env).code;
  EXPECT_TRUE(after_cancel == 0 || after_cancel == 5) << after_cancel;

  const Ran missing = run_ratio({"results", "999999"}, env);
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("HTTP 404"), std::string::npos) << missing.err;

  EXPECT_EQ(daemon.stop(), 0) << slurp(dir / "ratiod.log");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ratio::cli::test

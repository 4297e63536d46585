#pragma once
// One real ratiod process on a free loopback port with its own database, for the integration and fuzz
// tests of tests/daemon. Nothing is mocked.

#include <algorithm>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

namespace ratio_test {

namespace fs = std::filesystem;
using nlohmann::json;

inline fs::path bin_dir() {
  const char* dir = std::getenv("RATIO_BIN_DIR");
  return dir ? fs::path(dir) : fs::path(RATIO_TEST_BIN_DIR);
}

inline std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline void sleep_s(double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); }

// A tiny matrix that trains in seconds on one CPU core. `steps` is YAML for the list of steps.
inline std::string tiny_matrix(const std::string& name, int max_iters, const std::string& steps) {
  return "name: " + name +
         "\n"
         "max_attempts: 3\n"
         "base:\n"
         "  model: {n_layer: 1, n_head: 2, n_embd: 32, vocab_size: 256, block_size: 32, ra: {window: 8}}\n"
         "  train: {max_iters: " +
         std::to_string(max_iters) +
         ", batch_size: 4, grad_accum: 1, eval_interval: 10, eval_batches: 2, checkpoint_interval: 10,\n"
         "          log_interval: 5, grad_norm_interval: 10, warmup_iters: 5, device: cpu}\n"
         "  data: {dataset: fortunes, tokenizer: byte}\n"
         "steps:\n" +
         steps;
}

// One ratiod process with its own database and work directory.
class Daemon {
 public:
  Daemon(fs::path dir, std::vector<std::string> extra) : dir_(std::move(dir)), extra_(std::move(extra)) {}
  ~Daemon() {
    if (pid_ > 0) kill9();
  }

  // `more` flags are added for this launch only.
  void start(const std::vector<std::string>& more = {}) {
    static int launches = 0;
    out_path_ = dir_ / ("ratiod-" + std::to_string(++launches) + ".log");
    std::vector<std::string> args = {(bin_dir() / "ratiod").string(), "--db", (dir_ / "ratio.db").string(),
                                     "--data-dir", data_dir().string(), "--grace-s", "20"};
    args.insert(args.end(), extra_.begin(), extra_.end());
    args.insert(args.end(), more.begin(), more.end());
    // A free port and one CPU slot unless the test asks otherwise (ratiod refuses a flag given twice).
    for (const auto& [flag, value] : {std::pair<std::string, std::string>{"--listen", "127.0.0.1:0"}, {"--slots", "cpu:1"}})
      if (std::find(args.begin(), args.end(), flag) == args.end()) args.insert(args.end(), {flag, value});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    int rc = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error(std::string("cannot start ") + argv[0] + ": " + strerror(rc));
    const std::string marker = "listening on http://127.0.0.1:";
    for (int i = 0; i < 200 && port_ == 0; ++i) {
      std::string out = read_file(out_path_);
      size_t at = out.find(marker);
      if (at != std::string::npos && out.find('\n', at) != std::string::npos) {
        port_ = std::stoi(out.substr(at + marker.size()));
      } else {
        sleep_s(0.05);
      }
    }
    if (port_ == 0) throw std::runtime_error("ratiod did not start:\n" + read_file(out_path_));
    client_ = std::make_unique<httplib::Client>("127.0.0.1", port_);
    client_->set_read_timeout(60);
  }

  // SIGTERM and wait: the graceful path.
  int stop() {
    kill(pid_, SIGTERM);
    return reap();
  }
  void kill9() {
    kill(pid_, SIGKILL);
    reap();
  }

  json get(const std::string& path, int expect = 200) {
    auto res = client_->Get(path.c_str());
    EXPECT_TRUE(res) << "GET " << path << " got no answer";
    if (!res) return json();
    EXPECT_EQ(res->status, expect) << "GET " << path << ": " << res->body;
    return json::parse(res->body, nullptr, false);
  }
  std::pair<int, json> post(const std::string& path, const std::string& body,
                            const httplib::Headers& headers = {}) {
    auto res = client_->Post(path.c_str(), headers, body, "application/yaml");
    EXPECT_TRUE(res) << "POST " << path << " got no answer";
    if (!res) return {0, json()};
    return {res->status, json::parse(res->body, nullptr, false)};
  }
  httplib::Client& client() { return *client_; }

  // Polls until pred() holds; on timeout fails with the daemon log tail.
  bool wait_for(const std::function<bool()>& pred, double timeout_s, const std::string& what) {
    for (double t = 0; t < timeout_s; t += 0.25) {
      if (pred()) return true;
      sleep_s(0.25);
    }
    std::string log = read_file(out_path_);
    ADD_FAILURE() << "timed out after " << timeout_s << " s waiting for " << what << "\nratiod log tail:\n"
                  << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
    return false;
  }

  // Until one GET /api/events stream is open (the subscriber count in /metrics shows it).
  void wait_for_sse_subscriber() {
    wait_for([&] {
      auto res = client_->Get("/metrics");
      return res && res->body.find("ratio_sse_subscribers 1") != std::string::npos;
    }, 10, "the SSE subscriber");
  }

  json job(int64_t id) { return get("/api/jobs/" + std::to_string(id)); }
  std::string job_status(int64_t id) { return job(id)["job"]["status"].get<std::string>(); }
  bool matrix_done(int64_t id) {
    json counts = get("/api/matrices/" + std::to_string(id))["matrix"]["counts"];
    return counts["queued"] == 0 && counts["running"] == 0;
  }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  const fs::path& dir() const { return dir_; }

  static fs::path data_dir() { return fs::temp_directory_path() / "ratio-daemon-test-data"; }

 private:
  int reap() {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    port_ = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  fs::path dir_;
  std::vector<std::string> extra_;
  fs::path out_path_;
  pid_t pid_ = -1;
  int port_ = 0;
  std::unique_ptr<httplib::Client> client_;
};

}  // namespace ratio_test

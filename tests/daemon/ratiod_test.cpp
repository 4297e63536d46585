// Integration: the real ratiod binary on a free loopback port with a temporary database, and the real
// ratio-worker on tiny CPU jobs (1 layer, 32 wide, block 32, byte tokens). Nothing is mocked.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "../cli/cli_process.h"
#include "db/store.h"
#include "tests/daemon/daemon_process.h"
#include "tests/process_tree.h"
#include "tests/worker_backends.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

#ifdef RATIO_HAVE_WORKER
constexpr bool kHaveWorker = true;
#else
constexpr bool kHaveWorker = false;
#endif

#define REQUIRE_WORKER()                                                                            \
  if (!kHaveWorker) GTEST_SKIP() << "built with RATIO_WITH_TORCH=OFF: there is no ratio-worker to " \
                                    "run jobs, so this job-running test is skipped"

using namespace ratio_test;

class RatiodTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ratiod-test-" + std::to_string(getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    daemon_.reset();
    if (!HasFailure()) fs::remove_all(dir_);
  }
  Daemon& start_daemon(std::vector<std::string> extra = {}) {
    daemon_ = std::make_unique<Daemon>(dir_, std::move(extra));
    daemon_->start();
    return *daemon_;
  }
  int64_t count_rows(const std::string& sql) {
    ratio::db::Store store((dir_ / "ratio.db").string(), true);
    auto st = store.connection().prepare(sql);
    st.step();
    return st.get_int(0);
  }
  // The `finished` result the worker printed on stdout into the attempt's log.
  static json finished_result_in_log(const std::string& log_path) {
    std::istringstream lines(read_file(log_path));
    std::string line;
    json result;
    while (std::getline(lines, line)) {
      json e = json::parse(line, nullptr, false);
      if (!e.is_discarded() && e.is_object() && e.value("type", "") == "finished") result = e["result"];
    }
    return result;
  }
  // Every iteration of a series, checked for gaps against the expected logging interval.
  static std::vector<int64_t> iters_of(const json& series) {
    std::vector<int64_t> iters;
    for (const json& point : series) iters.push_back(point[0].get<int64_t>());
    return iters;
  }

  fs::path dir_;
  std::unique_ptr<Daemon> daemon_;
};

int64_t pid_of_running_attempt(Daemon& d, int64_t job) {
  json attempts = d.job(job)["attempts"];
  for (const json& a : attempts) {
    if (a["status"] == "running" && a["pid"].is_number()) return a["pid"].get<int64_t>();
  }
  return -1;
}

}  // namespace

// ---- without a worker --------------------------------------------------------------------------

TEST_F(RatiodTest, HealthPresetsAndExpandDryRun) {
  Daemon& d = start_daemon();
  json health = d.get("/api/health");
  EXPECT_EQ(health["ok"], true);
  EXPECT_EQ(health["slots"], json::parse(R"([{"name": "cpu:0", "job": null}])"));
  json presets = d.get("/api/presets")["presets"];
  ASSERT_FALSE(presets.empty());
  std::set<std::string> names;
  for (const json& p : presets) names.insert(p["name"].get<std::string>());
  EXPECT_TRUE(names.count("demo"));
  auto yaml = d.client().Get("/api/presets/demo");
  ASSERT_TRUE(yaml);
  EXPECT_EQ(yaml->status, 200);
  EXPECT_NE(yaml->get_header_value("Content-Type").find("yaml"), std::string::npos);
  EXPECT_NE(yaml->body.find("name: demo"), std::string::npos);
  d.get("/api/presets/no-such-preset", 404);

  auto [status, expanded] = d.post("/api/expand", tiny_matrix("dry", 30, "  - {id: 0, name: baseline}\n  - {id: 5, ra: true}\n"));
  EXPECT_EQ(status, 200);
  ASSERT_EQ(expanded["jobs"].size(), 2u);
  EXPECT_EQ(expanded["jobs"][1]["config"]["model"]["ra"]["enabled"], true);
  EXPECT_EQ(d.get("/api/matrices")["matrices"].size(), 0u);  // a dry run stores nothing
  EXPECT_EQ(d.stop(), 0);
}

TEST_F(RatiodTest, IdempotencyKeyReplaysTheFirstSubmission) {
  Daemon& d = start_daemon({"--drain"});
  const std::string matrix = tiny_matrix("idem", 30, "  - {id: 0}\n  - {id: 5, ra: true}\n");
  auto [first_status, first] = d.post("/api/matrices", matrix, {{"Idempotency-Key", "client-42"}});
  auto [again_status, again] = d.post("/api/matrices", matrix, {{"Idempotency-Key", "client-42"}});
  EXPECT_EQ(first_status, 201);
  EXPECT_EQ(again_status, 200);
  EXPECT_EQ(again["id"], first["id"]);
  EXPECT_EQ(again["jobs"], first["jobs"]);
  EXPECT_EQ(count_rows("SELECT COUNT(*) FROM jobs"), 2);
  EXPECT_EQ(d.post("/api/matrices", matrix, {{"Idempotency-Key", "client-43"}}).first, 201);
  EXPECT_EQ(count_rows("SELECT COUNT(*) FROM jobs"), 4);
  json health = d.get("/api/health");
  EXPECT_EQ(health["queued"], 4);
  EXPECT_EQ(health["draining"], true);
  d.get("/api/jobs/1/log", 404);  // no attempt yet
}

TEST_F(RatiodTest, JobListPagesWithAKeysetCursor) {
  Daemon& d = start_daemon({"--drain"});
  const std::string steps = "  - {id: 0}\n  - {id: 5, ra: true}\n  - {id: 6, mla: {enabled: true}}\n";
  ASSERT_EQ(d.post("/api/matrices", tiny_matrix("page-a", 30, steps)).first, 201);
  ASSERT_EQ(d.post("/api/matrices", tiny_matrix("page-b", 30, steps)).first, 201);
  std::vector<int64_t> seen;
  std::string url = "/api/jobs?limit=4";
  for (int page = 0; page < 10; ++page) {
    json body = d.get(url);
    for (const json& job : body["jobs"]) seen.push_back(job["id"].get<int64_t>());
    if (page == 0) {
      EXPECT_EQ(body["jobs"].size(), 4u);
      // A job submitted between pages shows up on a later one.
      ASSERT_EQ(d.post("/api/matrices", tiny_matrix("page-c", 30, "  - {id: 0}\n")).first, 201);
    }
    if (body["next_after_id"].is_null()) break;
    url = "/api/jobs?limit=4&after_id=" + std::to_string(body["next_after_id"].get<int64_t>());
  }
  EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(d.get("/api/jobs?matrix=2&limit=2&after_id=4")["jobs"].size(), 2u);  // jobs 5 and 6
  EXPECT_TRUE(d.get("/api/jobs")["next_after_id"].is_null());
  d.get("/api/jobs?limit=0", 400);
  d.get("/api/jobs?limit=x", 400);
  // Matrices page the same way.
  json first = d.get("/api/matrices?limit=2");
  ASSERT_EQ(first["matrices"].size(), 2u);
  EXPECT_EQ(first["matrices"][1]["total"], 3);  // page-b
  EXPECT_EQ(first["next_after_id"], 2);
  json last = d.get("/api/matrices?limit=2&after_id=2");
  ASSERT_EQ(last["matrices"].size(), 1u);
  EXPECT_EQ(last["matrices"][0]["id"], 3);
  EXPECT_TRUE(last["next_after_id"].is_null());
  EXPECT_EQ(d.get("/api/matrices")["matrices"].size(), 3u);
  d.get("/api/matrices?limit=0", 400);
}

TEST_F(RatiodTest, FiftyMalformedBodiesAre400WithALocationAndLeaveTheDatabaseUnchanged) {
  Daemon& d = start_daemon();
  const std::string good = tiny_matrix("bad", 30, "  - {id: 0, name: baseline}\n");
  std::vector<std::string> bodies = {
      "",
      "   \n",
      "name: [unclosed\n",
      "name: x\nsteps:\n  - id: 0\n   name: misaligned\n",
      "name: x\nsteps: [{id: 0}\n",
      "name: \"unterminated\nsteps: []\n",
      "{\"name\": \"x\", \"steps\": [{\"id\": 0}],}",
      "{\"name\": \"x\", \"steps\": [{\"id\": 0}]",
      "[]",
      "42",
      "\"just a string\"",
      "null",
      "steps:\n  - id: 0\n",
      "name: x\n",
      "name: x\nsteps: []\n",
      "name: x\nsteps: {id: 0}\n",
      "name: x\nsteps:\n  - name: no id\n",
      "name: x\nsteps:\n  - id: 0\n  - id: 0\n",
      "name: x\nbogus_top_level: 1\nsteps:\n  - id: 0\n",
      "name: x\nsteps:\n  - id: 0\n    bogus_step_key: 1\n",
      "name: x\nbase: {model: {bogus: 1}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {model: {n_layer: big}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {model: {n_layer: \"4\"}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {model: {n_layer: 0}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {model: {n_head: [1, 2]}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {model: {n_embd: -8}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {model: {n_embd: 30, n_head: 4}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {model: {mlp_ratio: fast}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {model: {dropout: 1.5}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {model: {block_size: -1}}\nsteps:\n  - id: 0\n",
      "name: x\nsteps:\n  - id: 0\n    ra: {alpha: many}\n",
      "name: x\nsteps:\n  - id: 0\n    ra_ct: {mode: median}\n",
      "name: x\nsteps:\n  - id: 0\n    mlp_cross: {sparsify: sometimes}\n",
      "name: x\nsteps:\n  - id: 0\n    mlp_latent: {tying: glued}\n",
      "name: x\nsteps:\n  - id: 0\n    mla: {latent_dim: big}\n",
      "name: x\nsteps:\n  - id: 0\n    mla: maybe\n",
      "name: x\nbase: {train: {max_iters: lots}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {train: {lr: fast}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {train: {batch_size: 0}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {train: {bogus: 1}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {train: {device: tpu}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {data: {tokenizer: morse}}\nsteps:\n  - id: 0\n",
      "name: x\nbase: {data: {bogus: 1}}\nsteps:\n  - id: 0\n",
      "name: x\nseeds: seven\nsteps:\n  - id: 0\n",
      "name: x\ngrid: {mlp_ratio: 3.0}\nsteps:\n  - id: 0\n",
      "name: x\nmax_attempts: zero\nsteps:\n  - id: 0\n",
      "name: x\npriority: 5000\nsteps:\n  - id: 0\n",
      "name: \"bad name with spaces/slash\"\nsteps:\n  - id: 0\n",
      "{\"name\": \"x\", \"steps\": [{\"id\": 0, \"model\": {\"n_layer\": \"two\"}}]}",
      "name: x\nsteps:\n\t- id: 0\n",
  };
  ASSERT_EQ(bodies.size(), 50u);
  int located = 0;
  for (size_t i = 0; i < bodies.size(); ++i) {
    for (const char* path : {"/api/matrices", "/api/expand"}) {
      auto [status, body] = d.post(path, bodies[i]);
      EXPECT_EQ(status, 400) << "body " << i << " to " << path << ":\n" << bodies[i] << "\nanswer: " << body.dump();
      ASSERT_TRUE(body.is_object()) << "body " << i;
      EXPECT_TRUE(body["error"].is_string() && !body["error"].get<std::string>().empty()) << body.dump();
      EXPECT_TRUE(body.contains("line") && body.contains("column") && body.contains("path")) << body.dump();
      if (std::string(path) == "/api/matrices" && body["line"].is_number() && body["line"].get<int>() > 0) ++located;
    }
  }
  // Everything but the empty bodies and whole-document type errors points at a line.
  EXPECT_GE(located, 40);
  EXPECT_EQ(count_rows("SELECT COUNT(*) FROM matrices"), 0);
  EXPECT_EQ(count_rows("SELECT COUNT(*) FROM jobs"), 0);
  EXPECT_EQ(d.post("/api/matrices", good).first, 201);  // the daemon is still fine
  EXPECT_EQ(count_rows("SELECT COUNT(*) FROM matrices"), 1);
}

TEST_F(RatiodTest, IdsBeyondInt64Are404AndQuotedBytesStayValidJson) {
  Daemon& d = start_daemon();
  for (const char* path : {"/api/jobs/99999999999999999999", "/api/jobs/99999999999999999999/metrics",
                           "/api/jobs/99999999999999999999/log", "/api/matrices/99999999999999999999",
                           "/api/matrices/99999999999999999999/results"}) {
    json body = d.get(path, 404);
    EXPECT_TRUE(body.is_object() && body["error"].is_string()) << path;
  }
  // The bad value is quoted in the error; its invalid UTF-8 comes back as U+FFFD, not as a 500.
  json body = d.get("/api/jobs?limit=%FF%FE", 400);
  EXPECT_NE(body["error"].get<std::string>().find("'limit' must be an integer"), std::string::npos) << body.dump();
  auto [status, located] = d.post("/api/expand", "name: caf\xe9\nsteps: [{id: 0}]\n");
  EXPECT_EQ(status, 400);
  EXPECT_EQ(located["line"], 1);
  EXPECT_EQ(located["column"], 10);
  EXPECT_NE(located["error"].get<std::string>().find("byte 0xE9 is not valid UTF-8"), std::string::npos) << located;
  auto metrics = d.client().Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("ratio_internal_errors_total 0\n"), std::string::npos) << metrics->body;
}

TEST_F(RatiodTest, FilesOutsideTheDataDirAndAllowedPathsAre400AtExpandAndSubmit) {
  fs::path models = dir_ / "models";
  fs::create_directories(models);
  Daemon& d = start_daemon({"--allow-path", models.string()});
  auto with = [](const std::string& step) { return tiny_matrix("confined", 30, "  - " + step + "\n"); };
  for (const char* path : {"/api/expand", "/api/matrices"}) {
    auto [status, body] = d.post(path, with("{id: 0, train: {init_from: /etc/shadow}}"));
    EXPECT_EQ(status, 400) << body.dump();
    EXPECT_EQ(body["path"], "steps[0].train.init_from");
    EXPECT_EQ(body["line"], 9);
    const std::string error = body["error"].get<std::string>();
    EXPECT_NE(error.find(Daemon::data_dir().string() + ", " + models.string()), std::string::npos) << error;

    auto [escape_status, escape] = d.post(path, with("{id: 0, data: {dataset: ../../../../etc}}"));
    EXPECT_EQ(escape_status, 400) << escape.dump();
    EXPECT_EQ(escape["path"], "steps[0].data.dataset");
  }
  EXPECT_EQ(count_rows("SELECT COUNT(*) FROM matrices"), 0);
  const std::string inside = "{id: 0, train: {init_from: " + (models / "gpt2.safetensors").string() + "}}";
  EXPECT_EQ(d.post("/api/expand", with(inside)).first, 200);
  EXPECT_EQ(d.post("/api/expand", with("{id: 0, data: {dataset: fineweb-edu}}")).first, 200);
}

TEST_F(RatiodTest, ResultsFollowJobsAddedToAMatrixAfterItsSpecsWereCached) {
  Daemon& d = start_daemon({"--drain"});
  ASSERT_EQ(d.post("/api/matrices", tiny_matrix("grows", 30, "  - {id: 0}\n  - {id: 5, ra: true}\n")).first, 201);
  EXPECT_EQ(d.get("/api/matrices/1/results")["rows"].size(), 2u);  // caches the two jobs' specs
  {  // a third step's job joins the matrix, as more seeds would
    ratio::db::Store store((dir_ / "ratio.db").string(), false);
    store.connection().exec(
        "INSERT INTO jobs(matrix_id, step, name, spec, config_hash, params, status, max_iters, max_attempts, "
        "created_at, updated_at) SELECT matrix_id, '6', 'late', json_set(spec, '$.step', '6'), 'late-hash', params, "
        "status, max_iters, max_attempts, created_at, updated_at FROM jobs WHERE id = 1");
  }
  json results = d.get("/api/matrices/1/results");
  ASSERT_EQ(results["rows"].size(), 3u) << results.dump();
  EXPECT_EQ(results["rows"][2]["step"], "6");
}

TEST_F(RatiodTest, MutatingCallsNeedTheBearerTokenWhenOneIsConfigured) {
  fs::path token_file = dir_ / "token";
  std::ofstream(token_file) << "s3cret-token-0123456789\n";
  Daemon& d = start_daemon({"--token-file", token_file.string(), "--drain"});
  const std::string matrix = tiny_matrix("auth", 30, "  - {id: 0}\n");
  auto [status, body] = d.post("/api/matrices", matrix);
  EXPECT_EQ(status, 401);
  EXPECT_NE(body["error"].get<std::string>().find("Bearer"), std::string::npos);
  EXPECT_EQ(d.post("/api/matrices", matrix, {{"Authorization", "Bearer wrong-token-0123456789"}}).first, 401);
  EXPECT_EQ(d.post("/api/matrices", matrix, {{"Authorization", "Bearer s3cret-token-0123456789"}}).first, 201);
  d.get("/api/matrices");  // reads stay open
  d.stop();

  // Beyond loopback without a token the daemon refuses to start.
  std::string cmd = (bin_dir() / "ratiod").string() + " --db " + (dir_ / "x.db").string() +
                    " --listen 0.0.0.0:0 > " + (dir_ / "refused.log").string() + " 2>&1";
  EXPECT_NE(std::system(cmd.c_str()), 0);
  EXPECT_NE(read_file(dir_ / "refused.log").find("requires --token-file"), std::string::npos);
}

TEST_F(RatiodTest, OneDaemonPerDatabase) {
  start_daemon();
  std::string cmd = (bin_dir() / "ratiod").string() + " --db " + (dir_ / "ratio.db").string() +
                    " --listen 127.0.0.1:0 > " + (dir_ / "second.log").string() + " 2>&1";
  EXPECT_NE(std::system(cmd.c_str()), 0);
  EXPECT_NE(read_file(dir_ / "second.log").find("another ratiod"), std::string::npos);
}

TEST_F(RatiodTest, ServesTheDashboardWithContentTypes) {
  fs::path web = dir_ / "web";
  fs::create_directories(web / "js");
  std::ofstream(web / "index.html") << "<!doctype html><title>RATIO</title>";
  std::ofstream(web / "js" / "app.js") << "export const x = 1;";
  std::ofstream(web / "style.css") << "body {}";
  Daemon& d = start_daemon({"--web-root", web.string()});
  struct Case {
    const char* path;
    const char* type;
    const char* body;
  };
  for (const Case& c : {Case{"/", "text/html", "RATIO"}, Case{"/index.html", "text/html", "RATIO"},
                        Case{"/js/app.js", "javascript", "export"}, Case{"/style.css", "text/css", "body"}}) {
    auto res = d.client().Get(c.path);
    ASSERT_TRUE(res) << c.path;
    EXPECT_EQ(res->status, 200) << c.path;
    EXPECT_NE(res->get_header_value("Content-Type").find(c.type), std::string::npos) << c.path;
    EXPECT_NE(res->body.find(c.body), std::string::npos) << c.path;
  }
  auto missing = d.client().Get("/nope.html");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  d.get("/api/health");  // the API still wins over the web root
}

TEST_F(RatiodTest, ServerSentEventsAnnounceNewJobsAndMatrices) {
  Daemon& d = start_daemon({"--drain"});  // nothing runs: only submission events
  std::atomic<bool> saw_job{false}, saw_matrix{false};
  // Keep-alive comments reach the callback every 15 s, so it can give up at the deadline.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::string received;
  std::thread listener([&] {
    httplib::Client sse("127.0.0.1", d.port());
    sse.set_read_timeout(20);
    sse.Get("/api/events", [&](const char* data, size_t size) {
      received.append(data, size);
      if (received.find("event: job\ndata: ") != std::string::npos) saw_job = true;
      if (received.find("event: matrix\ndata: ") != std::string::npos) saw_matrix = true;
      return !(saw_job && saw_matrix) && std::chrono::steady_clock::now() < deadline;
    });
  });
  // Submit once the stream is open (the subscriber count shows it in /metrics).
  d.wait_for_sse_subscriber();
  EXPECT_EQ(d.post("/api/matrices", tiny_matrix("sse", 30, "  - {id: 0}\n")).first, 201);
  listener.join();
  EXPECT_TRUE(saw_job);
  EXPECT_TRUE(saw_matrix);
  EXPECT_NE(received.find("\"status\":\"queued\""), std::string::npos) << received;
}

// The `data` of every `event: matrix` in a server-sent event stream, in order.
std::vector<json> matrix_events(const std::string& stream) {
  const std::string marker = "event: matrix\ndata: ";
  std::vector<json> out;
  for (size_t at = stream.find(marker); at != std::string::npos; at = stream.find(marker, at + 1)) {
    size_t end = stream.find("\n\n", at);
    if (end == std::string::npos) break;  // not fully received yet
    out.push_back(json::parse(stream.substr(at + marker.size(), end - at - marker.size()), nullptr, false));
  }
  return out;
}

TEST_F(RatiodTest, RerunReopensAFinishedMatrixAndAnnouncesIt) {
  Daemon& d = start_daemon({"--drain"});  // nothing runs: cancel finishes the matrix, rerun reopens it
  auto [status, created] = d.post("/api/matrices", tiny_matrix("reopen", 30, "  - {id: 0}\n  - {id: 5, ra: true}\n"));
  ASSERT_EQ(status, 201);
  const std::string matrix = "/api/matrices/" + created["id"].dump();
  const std::string job = "/api/jobs/" + created["jobs"][0]["id"].dump();
  auto finished_at = [&] { return d.get(matrix)["matrix"]["finished_at"]; };

  // A live view sees the matrix finish, then reopen with the rerun (while draining nothing starts,
  // so only the rerun itself can announce it). Keep-alives every 15 s let it give up at the deadline.
  std::mutex mu;
  std::string received;
  std::atomic<bool> saw_reopen{false};
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::thread listener([&] {
    httplib::Client sse("127.0.0.1", d.port());
    sse.set_read_timeout(20);
    sse.Get("/api/events", [&](const char* data, size_t size) {
      std::lock_guard<std::mutex> lock(mu);
      received.append(data, size);
      bool finished = false;
      for (const json& m : matrix_events(received)) {
        if (!m["finished_at"].is_null()) finished = true;
        else if (finished) saw_reopen = true;
      }
      return !saw_reopen && std::chrono::steady_clock::now() < deadline;
    });
  });
  d.wait_for_sse_subscriber();

  EXPECT_EQ(d.post(matrix + "/cancel", "").first, 200);
  ASSERT_TRUE(finished_at().is_number());
  auto [rerun_status, rerun] = d.post(job + "/rerun", "");
  EXPECT_EQ(rerun_status, 200);
  EXPECT_TRUE(finished_at().is_null()) << "a job rerun must reopen its matrix";
  EXPECT_EQ(d.get("/api/matrices")["matrices"][0]["finished_at"], nullptr);
  listener.join();
  EXPECT_TRUE(saw_reopen) << "no matrix event with finished_at null after it finished:\n" << received;

  EXPECT_EQ(d.post(matrix + "/cancel", "").first, 200);
  double first_finish = finished_at().get<double>();
  auto [matrix_rerun_status, matrix_rerun] = d.post(matrix + "/rerun", R"({"status": ["cancelled"]})");
  EXPECT_EQ(matrix_rerun_status, 200);
  EXPECT_EQ(matrix_rerun["requeued"].size(), 2u);
  EXPECT_TRUE(finished_at().is_null()) << "a matrix rerun must reopen it";
  EXPECT_EQ(d.post(matrix + "/cancel", "").first, 200);
  EXPECT_GE(finished_at().get<double>(), first_finish);  // set again when it finishes again
}

TEST_F(RatiodTest, ReportsNeedAKnownAttemptTokenAndStaleOnesGet409) {
  // A worker path that does not exist: the attempt is created and ends at once, so its token is stale.
  Daemon& d = start_daemon({"--worker", (dir_ / "no-such-worker").string()});
  auto [status, created] = d.post("/api/matrices", tiny_matrix("stale", 30, "  - {id: 0}\n"));
  ASSERT_EQ(status, 201);
  int64_t job = created["jobs"][0]["id"].get<int64_t>();
  ASSERT_TRUE(d.wait_for([&] { return d.job_status(job) == "failed"; }, 20, "the job to fail"));
  json detail = d.job(job);
  EXPECT_NE(detail["job"]["reason"].get<std::string>().find("could not start the worker"), std::string::npos);

  const std::string events = R"({"events": [{"type": "metric", "seq": 0, "time": 1, "iter": 5, "train_loss": 2.0}]})";
  EXPECT_EQ(d.client().Post("/api/report", events, "application/json")->status, 401);
  EXPECT_EQ(d.client().Post("/api/report", {{"Authorization", "Bearer unknown"}}, events, "application/json")->status, 401);
  std::string token;
  {
    ratio::db::Store store((dir_ / "ratio.db").string(), true);
    auto st = store.connection().prepare("SELECT token FROM attempts");
    ASSERT_TRUE(st.step());
    token = st.get_text(0);
  }
  httplib::Headers auth = {{"Authorization", "Bearer " + token}};
  EXPECT_EQ(d.client().Post("/api/report", auth, "not json", "application/json")->status, 400);
  auto stale = d.client().Post("/api/report", auth, events, "application/json");
  ASSERT_TRUE(stale);
  EXPECT_EQ(stale->status, 409);
  EXPECT_EQ(count_rows("SELECT COUNT(*) FROM events WHERE applied = 0"), 1);  // recorded
  EXPECT_EQ(count_rows("SELECT COUNT(*) FROM metrics"), 0);                   // not applied
}

// ---- with the real worker ----------------------------------------------------------------------

TEST_F(RatiodTest, MatrixSucceedsResultsMatchTheWorkerAndAFailedJobRerunsAlone) {
  REQUIRE_WORKER();
  Daemon& d = start_daemon();
  const std::string matrix = tiny_matrix("e2e", 30,
                                         "  - {id: 0, name: baseline}\n"
                                         "  - {id: 5, name: RA, ra: {alpha: 0.3, window: 8}}\n"
                                         "  - {id: 9, name: missing data, data: {dataset: no-such-shards}}\n");
  auto [status, created] = d.post("/api/matrices", matrix);
  ASSERT_EQ(status, 201) << created.dump();
  int64_t matrix_id = created["id"].get<int64_t>();
  ASSERT_TRUE(d.wait_for([&] { return d.matrix_done(matrix_id); }, 300, "the matrix to finish"));

  json jobs = d.get("/api/jobs?matrix=" + std::to_string(matrix_id))["jobs"];
  ASSERT_EQ(jobs.size(), 3u);
  EXPECT_EQ(jobs[0]["status"], "succeeded");
  EXPECT_EQ(jobs[1]["status"], "succeeded");
  EXPECT_EQ(jobs[2]["status"], "failed");
  EXPECT_NE(jobs[2]["reason"].get<std::string>().find("data error (exit 3)"), std::string::npos) << jobs[2];

  json results = d.get("/api/matrices/" + std::to_string(matrix_id) + "/results");
  ASSERT_EQ(results["rows"].size(), 3u);
  for (int i = 0; i < 2; ++i) {
    json detail = d.job(jobs[i]["id"].get<int64_t>());
    ASSERT_EQ(detail["attempts"].size(), 1u);
    json reported = finished_result_in_log(detail["attempts"][0]["log_path"].get<std::string>());
    ASSERT_TRUE(reported.is_object()) << "no `finished` event in the attempt log";
    EXPECT_EQ(detail["job"]["result"]["final_val_loss"], reported["final_val_loss"]);
    EXPECT_EQ(jobs[i]["final_val_loss"], reported["final_val_loss"]);
    EXPECT_EQ(jobs[i]["best_val_loss"], reported["best_val_loss"]);
    EXPECT_EQ(results["rows"][i]["final_val_loss"], reported["final_val_loss"]);
    EXPECT_EQ(jobs[i]["iter"], 30);
    json metrics = d.get("/api/jobs/" + jobs[i]["id"].dump() + "/metrics?names=train_loss,val_loss");
    EXPECT_FALSE(metrics["series"]["train_loss"].empty());
    EXPECT_FALSE(metrics["series"]["val_loss"].empty());
  }
  EXPECT_EQ(results["rows"][0]["verdict"], "BASELINE");
  // Workers deliver every event twice (stdout and POST /api/report); each is stored once.
  auto prometheus = d.client().Get("/metrics");
  ASSERT_TRUE(prometheus);
  EXPECT_EQ(prometheus->body.find("ratio_reports_total{answer=\"accepted\"} 0\n"), std::string::npos)
      << "no report reached the daemon over HTTP:\n" << prometheus->body;
  std::string first_log = d.job(jobs[0]["id"].get<int64_t>())["attempts"][0]["log_path"].get<std::string>();
  std::istringstream log_lines(read_file(first_log));
  int64_t event_lines = 0;
  for (std::string line; std::getline(log_lines, line);) event_lines += line.rfind("{\"", 0) == 0;
  EXPECT_EQ(count_rows("SELECT COUNT(*) FROM events e JOIN attempts a ON a.id = e.attempt_id WHERE a.job_id = " +
                       jobs[0]["id"].dump()),
            event_lines);
  auto log = d.client().Get(("/api/jobs/" + jobs[2]["id"].dump() + "/log?tail=50").c_str());
  ASSERT_TRUE(log);
  EXPECT_EQ(log->status, 200);
  EXPECT_NE(log->body.find("\"type\":\"failed\""), std::string::npos) << log->body;
  auto tail = d.client().Get(("/api/jobs/" + jobs[0]["id"].dump() + "/log?tail=1&attempt=1").c_str());
  ASSERT_TRUE(tail);
  EXPECT_EQ(std::count(tail->body.begin(), tail->body.end(), '\n'), 1) << tail->body;

  // rerun --failed: only the failed job gets a new attempt; earlier attempts stay.
  auto [rerun_status, rerun] = d.post("/api/matrices/" + std::to_string(matrix_id) + "/rerun", R"({"status": ["failed"]})");
  EXPECT_EQ(rerun_status, 200);
  EXPECT_EQ(rerun["requeued"], json::array({jobs[2]["id"]}));
  ASSERT_TRUE(d.wait_for([&] { return d.matrix_done(matrix_id); }, 120, "the rerun to finish"));
  EXPECT_EQ(d.job(jobs[2]["id"].get<int64_t>())["attempts"].size(), 2u);
  EXPECT_EQ(d.job(jobs[0]["id"].get<int64_t>())["attempts"].size(), 1u);

  // Resubmitting identical configs reuses the finished results; ?force=1 runs them again.
  auto [again_status, again] = d.post("/api/matrices", matrix);
  ASSERT_EQ(again_status, 201);
  EXPECT_EQ(again["jobs"][0]["status"], "succeeded");
  EXPECT_EQ(again["jobs"][0]["reused_from"], jobs[0]["id"]);
  EXPECT_EQ(again["jobs"][2]["status"], "queued");  // a failed config is not a result
  auto [forced_status, forced] = d.post("/api/matrices?force=1", matrix, {});
  ASSERT_EQ(forced_status, 201);
  EXPECT_EQ(forced["jobs"][0]["status"], "queued");
  auto [cancel_status, cancelled] = d.post("/api/matrices/" + forced["id"].dump() + "/cancel", "");
  EXPECT_EQ(cancel_status, 200);
  d.post("/api/matrices/" + again["id"].dump() + "/cancel", "");
  ASSERT_TRUE(d.wait_for([&] { return d.matrix_done(forced["id"].get<int64_t>()); }, 60, "the cancel"));
  EXPECT_EQ(d.job(forced["jobs"][1]["id"].get<int64_t>())["job"]["status"], "cancelled");
}

// decide: the step and the baseline start with seeds 1 and 2. A narrower MLP draws a different
// initialisation of every later weight from the same seed, so its paired differences scatter like
// seed-to-seed noise, and an interval from 2 seeds at 98.75 % is ±25 standard errors wide: the effect
// is open, so ratiod adds seed 3 to both and stops there (max_seeds 3). CPU training is deterministic.
TEST_F(RatiodTest, DecideAddsPairedSeedsToAnOpenStepAndStopsAtMaxSeeds) {
  REQUIRE_WORKER();
  Daemon& d = start_daemon();
  const std::string matrix = "seeds: [1, 2]\ndecide: {max_seeds: 3, min_effect: 0.001}\n" +
                             tiny_matrix("decide", 20,
                                         "  - {id: 0, name: baseline}\n"
                                         "  - {id: 5, name: narrower MLP, mlp_ratio: 3}\n");
  auto [status, created] = d.post("/api/matrices", matrix);
  ASSERT_EQ(status, 201) << created.dump();
  const int64_t matrix_id = created["id"].get<int64_t>();
  ASSERT_EQ(created["jobs"].size(), 4u);
  ASSERT_TRUE(d.wait_for([&] { return d.matrix_done(matrix_id); }, 300, "the matrix to finish"));

  const json jobs = d.get("/api/jobs?matrix=" + std::to_string(matrix_id))["jobs"];
  ASSERT_EQ(jobs.size(), 6u) << jobs.dump();  // seed 3 of each step, never a fourth
  std::map<std::string, std::set<std::string>> seeds_by_step;  // from the names: "baseline (seed 3)"
  for (const json& job : jobs) {
    EXPECT_EQ(job["status"], "succeeded") << job.dump();
    const std::string name = job["name"].get<std::string>();
    seeds_by_step[job["step"].get<std::string>()].insert(name.substr(name.rfind("(seed ")));
  }
  const std::set<std::string> three = {"(seed 1)", "(seed 2)", "(seed 3)"};
  EXPECT_EQ(seeds_by_step["0"], three);
  EXPECT_EQ(seeds_by_step["5"], three);

  const json results = d.get("/api/matrices/" + std::to_string(matrix_id) + "/results");
  const json& row = results["rows"][1];
  ASSERT_TRUE(row["decision"].is_object()) << results.dump();
  const std::string outcome = row["decision"]["outcome"].get<std::string>();
  EXPECT_NE(outcome, "open") << "max_seeds is spent, so the step is decided or undecided";
  EXPECT_EQ(row["decision"]["seeds"], 3);
  EXPECT_EQ(row["seeds"], 3);
  ASSERT_EQ(row["decision"]["history"].size(), 1u);
  EXPECT_NE(row["decision"]["history"][0]["reason"].get<std::string>().find("seed 3 added: open"), std::string::npos);
  EXPECT_EQ(results["decide"]["open_steps"], 0);
  EXPECT_EQ(row["verdict"], outcome == "better" ? "KEEP" : outcome == "not_better" ? "REMOVE" : "INVESTIGATE")
      << row["verdict_reason"];

  // The CLI prints the same decision.
  const std::string cli =
      ratio::cli::test::run_ratio(
          {"results", std::to_string(matrix_id), "--server", "http://127.0.0.1:" + std::to_string(d.port())})
          .out;
  EXPECT_NE(cli.find("decide: max_seeds 3"), std::string::npos) << cli;
  EXPECT_NE(cli.find(outcome + " ["), std::string::npos) << cli;
  EXPECT_NE(cli.find("seed 3 added: open"), std::string::npos) << cli;

  // The same matrix again: its seeds 1 and 2 reuse finished results, so no attempt will end to ask
  // for seed 3; the submission itself queues it (here reused too) and the matrix is done at once.
  auto [again_status, again] = d.post("/api/matrices", matrix);
  ASSERT_EQ(again_status, 201) << again.dump();
  ASSERT_EQ(again["jobs"].size(), 6u) << again.dump();
  for (const json& job : again["jobs"]) EXPECT_EQ(job["status"], "succeeded") << job.dump();
  EXPECT_TRUE(d.matrix_done(again["id"].get<int64_t>()));
}

TEST_F(RatiodTest, LiveViewsReceiveMetricAndJobEventsWhileAJobRuns) {
  REQUIRE_WORKER();
  Daemon& d = start_daemon();
  std::atomic<bool> saw_metric{false}, saw_success{false};
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(180);  // see the test above
  std::string received;
  std::thread listener([&] {
    httplib::Client sse("127.0.0.1", d.port());
    sse.set_read_timeout(120);
    sse.Get("/api/events", [&](const char* data, size_t size) {
      received.append(data, size);
      if (received.find("event: metric\ndata: ") != std::string::npos &&
          received.find("\"train_loss\"") != std::string::npos) {
        saw_metric = true;
      }
      if (received.find("\"status\":\"succeeded\"") != std::string::npos) saw_success = true;
      return !(saw_metric && saw_success) && std::chrono::steady_clock::now() < deadline;
    });
  });
  d.wait_for_sse_subscriber();
  EXPECT_EQ(d.post("/api/matrices", tiny_matrix("live", 30, "  - {id: 0}\n")).first, 201);
  listener.join();
  EXPECT_TRUE(saw_metric) << received.substr(0, 2000);
  EXPECT_TRUE(saw_success) << received.substr(0, 2000);
}

TEST_F(RatiodTest, KilledWorkerIsRetriedAndResumesFromItsCheckpoint) {
  REQUIRE_WORKER();
  Daemon& d = start_daemon();
  auto [status, created] = d.post("/api/matrices", tiny_matrix("kill-worker", 400, "  - {id: 0}\n"));
  ASSERT_EQ(status, 201);
  int64_t job = created["jobs"][0]["id"].get<int64_t>();
  ASSERT_TRUE(d.wait_for([&] { return d.job(job)["job"]["iter"].get<int64_t>() >= 25; }, 120, "iteration 25"));
  int64_t pid = pid_of_running_attempt(d, job);
  ASSERT_GT(pid, 0);
  kill(static_cast<pid_t>(pid), SIGKILL);
  ASSERT_TRUE(d.wait_for([&] { return d.job_status(job) == "succeeded"; }, 300, "the retried job to succeed"));

  json attempts = d.job(job)["attempts"];
  ASSERT_EQ(attempts.size(), 2u);
  EXPECT_EQ(attempts[0]["status"], "lost");
  EXPECT_NE(attempts[0]["reason"].get<std::string>().find("signal 9"), std::string::npos);
  EXPECT_EQ(attempts[1]["status"], "succeeded");
  EXPECT_GT(attempts[1]["start_iter"].get<int64_t>(), 0) << "attempt 2 should resume from a checkpoint";
  // No gap and no duplicate: every logged iteration once (log_interval 5).
  json series = d.get("/api/jobs/" + std::to_string(job) + "/metrics?names=train_loss&max_points=100000")["series"];
  std::vector<int64_t> iters = iters_of(series["train_loss"]);
  ASSERT_FALSE(iters.empty());
  for (size_t i = 1; i < iters.size(); ++i) EXPECT_EQ(iters[i] - iters[i - 1], 5) << "at " << iters[i];
  EXPECT_GE(iters.back(), 395);
}


// A 2-rank job (train.gpus: 2) on a 2-slot CPU daemon: the attempt holds both slots; kill -9 of
// rank 1 ends it with that reason, the retry resumes from rank 0's checkpoint, the series has no gap.
TEST_F(RatiodTest, KilledRankEndsTheAttemptWithAReasonAndTheRetryResumes) {
  REQUIRE_WORKER();
  if (!ratio_test::kWorkerHasGloo) GTEST_SKIP() << ratio_test::kNoGloo;
  Daemon& d = start_daemon({"--slots", "cpu:2"});
  const std::string matrix =
      "name: dp\nmax_attempts: 3\nbase:\n"
      "  model: {n_layer: 1, n_head: 2, n_embd: 32, vocab_size: 256, block_size: 32}\n"
      "  train: {max_iters: 120, batch_size: 4, grad_accum: 2, gpus: 2, eval_interval: 10, eval_batches: 2,\n"
      "          checkpoint_interval: 10, log_interval: 5, grad_norm_interval: 10, warmup_iters: 5, device: cpu}\n"
      "  data: {dataset: fortunes, tokenizer: byte}\n"
      "steps:\n  - {id: 0}\n";
  auto [status, created] = d.post("/api/matrices", matrix);
  ASSERT_EQ(status, 201) << created;
  int64_t job = created["jobs"][0]["id"].get<int64_t>();
  ASSERT_TRUE(d.wait_for([&] { return d.job(job)["job"]["iter"].get<int64_t>() >= 25; }, 120, "iteration 25"));
  EXPECT_EQ(d.job(job)["attempts"][0]["slot"], "cpu:0,1");
  const pid_t rank0 = static_cast<pid_t>(pid_of_running_attempt(d, job));
  ASSERT_GT(rank0, 0);
  const std::vector<pid_t> others = children_of(rank0);
  ASSERT_EQ(others.size(), 1u);
  kill(others[0], SIGKILL);
  ASSERT_TRUE(d.wait_for([&] { return d.job_status(job) == "succeeded"; }, 300, "the retried job to succeed"));

  json attempts = d.job(job)["attempts"];
  ASSERT_EQ(attempts.size(), 2u);
  EXPECT_EQ(attempts[0]["status"], "failed");
  EXPECT_NE(attempts[0]["reason"].get<std::string>().find("rank 1 died: killed by signal 9"), std::string::npos)
      << attempts[0];
  EXPECT_EQ(attempts[1]["status"], "succeeded");
  EXPECT_GT(attempts[1]["start_iter"].get<int64_t>(), 0) << "attempt 2 should resume from a checkpoint";
  json series = d.get("/api/jobs/" + std::to_string(job) + "/metrics?names=train_loss&max_points=100000")["series"];
  std::vector<int64_t> iters = iters_of(series["train_loss"]);
  ASSERT_FALSE(iters.empty());
  EXPECT_EQ(iters.front(), 4);
  for (size_t i = 1; i < iters.size(); ++i) EXPECT_EQ(iters[i] - iters[i - 1], 5) << "at " << iters[i];
  EXPECT_EQ(iters.back(), 119);
}

// kill -9 of ratiod: its worker trains on (its log is a file, not a pipe to the dead daemon), the
// restarted daemon on the same address adopts it, and the worker's HTTP reports reach the new one.
// No progress is lost: the running job finishes in its first attempt.
TEST_F(RatiodTest, KilledDaemonRestartsAdoptsItsWorkerAndTheMatrixCompletesWithoutLostOrDuplicateMetrics) {
  REQUIRE_WORKER();
  Daemon& d = start_daemon();
  auto [status, created] = d.post("/api/matrices", tiny_matrix("kill-daemon", 300, "  - {id: 0}\n  - {id: 5, ra: true}\n"));
  ASSERT_EQ(status, 201);
  int64_t matrix = created["id"].get<int64_t>();
  int64_t first = created["jobs"][0]["id"].get<int64_t>();
  ASSERT_TRUE(d.wait_for([&] { return d.job(first)["job"]["iter"].get<int64_t>() >= 25; }, 120, "iteration 25"));
  const int port = d.port();
  const int64_t pid = pid_of_running_attempt(d, first);
  d.kill9();
  sleep_s(2);
  EXPECT_EQ(kill(static_cast<pid_t>(pid), 0), 0) << "the worker died with its daemon";

  d.start({"--listen", "127.0.0.1:" + std::to_string(port)});  // same database, work directory and port
  ASSERT_TRUE(d.wait_for([&] { return d.matrix_done(matrix); }, 400, "the matrix to complete after the restart"));
  for (const json& job : d.get("/api/jobs?matrix=" + std::to_string(matrix))["jobs"]) {
    EXPECT_EQ(job["status"], "succeeded") << job;
    json attempts = d.job(job["id"].get<int64_t>())["attempts"];
    EXPECT_EQ(attempts.size(), 1u) << "adopted, not retried: " << attempts;
    json series = d.get("/api/jobs/" + job["id"].dump() + "/metrics?names=train_loss&max_points=100000")["series"];
    std::vector<int64_t> iters = iters_of(series["train_loss"]);
    ASSERT_FALSE(iters.empty());
    EXPECT_LT(iters.front(), 5);  // the first logged iteration
    for (size_t i = 1; i < iters.size(); ++i) EXPECT_EQ(iters[i] - iters[i - 1], 5) << "at " << iters[i];
    EXPECT_GE(iters.back(), 295);
  }
  EXPECT_EQ(d.job(first)["attempts"][0]["pid"], pid);
  // Each metric row exists once per (job, name, iter) by construction; check nothing was applied twice.
  EXPECT_EQ(count_rows("SELECT COUNT(*) FROM (SELECT job_id, name, iter FROM metrics GROUP BY 1, 2, 3 HAVING COUNT(*) > 1)"), 0);
}

TEST_F(RatiodTest, SilentWorkerLosesItsLeaseAndIsRetried) {
  REQUIRE_WORKER();
  Daemon& d = start_daemon({"--lease-s", "8"});  // well above a loaded CI machine's worker start-up
  auto [status, created] = d.post("/api/matrices", tiny_matrix("lease", 300, "  - {id: 0}\n"));
  ASSERT_EQ(status, 201);
  int64_t job = created["jobs"][0]["id"].get<int64_t>();
  ASSERT_TRUE(d.wait_for([&] { return d.job(job)["job"]["iter"].get<int64_t>() >= 15; }, 120, "iteration 15"));
  int64_t pid = pid_of_running_attempt(d, job);
  ASSERT_GT(pid, 0);
  kill(static_cast<pid_t>(pid), SIGSTOP);  // a hang: alive, silent
  ASSERT_TRUE(d.wait_for([&] { return d.job_status(job) == "succeeded"; }, 300, "the job to succeed after the hang"));
  json attempts = d.job(job)["attempts"];
  ASSERT_GE(attempts.size(), 2u);
  EXPECT_EQ(attempts[0]["status"], "lost");
  EXPECT_NE(attempts[0]["reason"].get<std::string>().find("heartbeat lease"), std::string::npos) << attempts[0];
}

TEST_F(RatiodTest, HungWorkerThatStillBeatsIsCaughtByTheWatchdogAndResumes) {
  REQUIRE_WORKER();
  // The first attempt stops before iteration 16 (its last metric is at 14) while its heartbeat goes
  // on (every 2 s): the lease holds, so only the watchdog can end it. A resumed attempt does not hang.
  ::setenv("RATIO_DEBUG_HANG_AT_ITER", "16", 1);
  Daemon& d = start_daemon({"--lease-s", "8", "--stall-s", "12"});
  ::unsetenv("RATIO_DEBUG_HANG_AT_ITER");
  auto [status, created] = d.post("/api/matrices", tiny_matrix("hang", 40, "  - {id: 0}\n"));
  ASSERT_EQ(status, 201);
  int64_t job = created["jobs"][0]["id"].get<int64_t>();
  ASSERT_TRUE(d.wait_for([&] { return d.job_status(job) == "succeeded"; }, 300, "the job to succeed after the hang"));
  json attempts = d.job(job)["attempts"];
  ASSERT_EQ(attempts.size(), 2u) << attempts;
  EXPECT_EQ(attempts[0]["status"], "lost");
  EXPECT_NE(attempts[0]["reason"].get<std::string>().find("watchdog"), std::string::npos) << attempts[0];
  EXPECT_NE(attempts[0]["reason"].get<std::string>().find("no progress past iteration 14"), std::string::npos)
      << attempts[0];
  EXPECT_EQ(attempts[1]["status"], "succeeded");
  EXPECT_GT(attempts[1]["start_iter"].get<int64_t>(), 0) << "the retry resumes from the checkpoint at iteration 10";
}

TEST_F(RatiodTest, CancelStopsARunningJobAndGracefulShutdownRequeuesTheRest) {
  REQUIRE_WORKER();
  Daemon& d = start_daemon();
  auto [status, created] = d.post("/api/matrices", tiny_matrix("cancel", 3000, "  - {id: 0}\n  - {id: 5, ra: true}\n"));
  ASSERT_EQ(status, 201);
  int64_t first = created["jobs"][0]["id"].get<int64_t>();
  int64_t second = created["jobs"][1]["id"].get<int64_t>();
  ASSERT_TRUE(d.wait_for([&] { return d.job(first)["job"]["iter"].get<int64_t>() >= 10; }, 120, "iteration 10"));
  auto [cancel_status, cancelled] = d.post("/api/jobs/" + std::to_string(first) + "/cancel", "");
  EXPECT_EQ(cancel_status, 200);
  ASSERT_TRUE(d.wait_for([&] { return d.job_status(first) == "cancelled"; }, 60, "the cancel"));
  EXPECT_EQ(d.job(first)["attempts"][0]["status"], "cancelled");

  ASSERT_TRUE(d.wait_for([&] { return d.job(second)["job"]["iter"].get<int64_t>() >= 10; }, 120, "job 2 to run"));
  EXPECT_EQ(d.stop(), 0);  // SIGTERM: the worker checkpoints, the job goes back to the queue
  d.start({"--drain"});  // look at the queue before anything is dispatched again
  json detail = d.job(second);
  EXPECT_EQ(detail["attempts"][0]["status"], "interrupted") << detail["attempts"][0];
  EXPECT_EQ(detail["job"]["status"], "queued");
}

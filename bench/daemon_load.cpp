// ratiod under load (docs/performance.md, "ratiod at scale"). Builds a database through the daemon's
// own write path (Store::create_matrix, claim_next_job, ingest, end_attempt): 10 matrices x 1,000
// finished jobs with 1,000 metric points each (10M points), plus 990 one-job matrices (1,000 in all).
// Then starts ratiod on it (--drain: nothing runs) and prints p50/p99 per endpoint with 1 and 8
// concurrent clients, as a markdown table. Loopback only.
//
//   cmake --build build --target ratio-loadbench
//   build/bin/ratio-loadbench --ratiod build/bin/ratiod --db /tmp/ratio-load.db
//
// An existing --db is reused as it is (building it takes minutes on 2 cores).

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "daemon/api.h"
#include "db/store.h"
#include "matrix/matrix.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Options {
  std::string ratiod;
  std::string db;
  int big_matrices = 10;
  int small_matrices = 990;
  int requests = 200;  // per endpoint and concurrency level
};

// 100 steps (a baseline and 99 MLP widths) x 10 seeds = 1,000 jobs; seeds differ per matrix.
std::string big_matrix_text(int k) {
  std::string text = "name: load-" + std::to_string(k) +
                     "\nbase:\n  model: {n_layer: 2, n_head: 2, n_embd: 64, vocab_size: 256, block_size: 64}\n"
                     "  data: {dataset: fortunes, tokenizer: byte}\nsteps:\n  - {id: 0, name: baseline}\n";
  for (int s = 1; s < 100; ++s) {
    char ratio[16];
    std::snprintf(ratio, sizeof ratio, "%.2f", 2.0 + 0.04 * s);
    text += "  - {id: " + std::to_string(s) + ", mlp_ratio: " + ratio + "}\n";
  }
  text += "seeds: [";
  for (int i = 0; i < 10; ++i) text += (i ? ", " : "") + std::to_string(k * 100 + i + 1);
  return text + "]\n";
}

ratio::db::NewMatrix new_matrix(const std::string& text) {
  ratio::db::NewMatrix m = ratio::daemon::new_matrix_of(ratio::to_json(ratio::expand_matrix(text, "load")), text);
  m.force = true;
  return m;
}

// What a worker reports for one job: 200 metric events (4 series), and every 50 iterations an eval,
// 4 alphas and 5 gradient norms: 800 + 20 + 80 + 100 = 1,000 points, then `finished`.
std::vector<json> job_events(int64_t job_id) {
  std::vector<json> events;
  int64_t seq = 0;
  const double offset = 0.001 * static_cast<double>(job_id % 997);
  events.push_back({{"seq", seq++}, {"type", "started"}, {"iter", 0}, {"build_id", "load-bench"}});
  for (int64_t i = 0; i < 200; ++i) {
    const int64_t iter = i * 5;
    const double loss = 4.0 - 1.5 * static_cast<double>(i) / 200.0 + offset;
    events.push_back({{"seq", seq++}, {"type", "metric"}, {"iter", iter}, {"train_loss", loss}, {"lr", 6e-4},
                      {"tokens_per_s", 50000.0}, {"grad_norm", 1.0 + offset}});
    if (i % 10 == 9) {
      events.push_back({{"seq", seq++}, {"type", "eval"}, {"iter", iter}, {"val_loss", loss + 0.05}});
      events.push_back({{"seq", seq++}, {"type", "alphas"}, {"iter", iter},
                        {"values", {{"ra.0", 0.3}, {"ra.1", 0.31}, {"gate.0", 0.5}, {"gate.1", 0.52}}}});
      events.push_back({{"seq", seq++}, {"type", "grad_norms"}, {"iter", iter},
                        {"values", {{"attn", 0.2}, {"mlp", 0.3}, {"emb", 0.1}, {"ln", 0.01}, {"head", 0.4}}}});
    }
  }
  const double final_loss = 2.55 + offset;
  events.push_back({{"seq", seq++}, {"type", "finished"},
                    {"result", {{"final_val_loss", final_loss}, {"best_val_loss", final_loss}, {"tokens_per_s", 50000.0},
                                {"iters", 1000}}}});
  return events;
}

void build_database(const Options& o) {
  ratio::db::Store store(o.db, false);
  store.connection().exec("PRAGMA synchronous = OFF");  // building only; ratiod opens it normally
  const auto start = std::chrono::steady_clock::now();
  for (int k = 0; k < o.big_matrices; ++k) {
    const ratio::db::CreatedMatrix created = store.create_matrix(new_matrix(big_matrix_text(k)));
    int64_t claimed = 0;
    while (auto claim = store.claim_next_job("cpu:0", "load-" + std::to_string(created.id) + "-" + std::to_string(++claimed),
                                             "/tmp/ratio-load-jobs")) {
      const std::vector<json> events = job_events(claim->job_id);
      for (size_t at = 0; at < events.size(); at += 50) {  // the worker's batches
        const size_t end = std::min(events.size(), at + 50);
        store.ingest(claim->attempt_id, json(std::vector<json>(events.begin() + at, events.begin() + end)));
      }
      store.end_attempt(claim->attempt_id, {"succeeded", "", 0, ratio::db::Retry::kNever});
    }
    std::cerr << "matrix " << created.id << " of " << o.big_matrices << " built ("
              << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s)\n";
  }
  for (int k = 0; k < o.small_matrices; ++k) {  // queued, never claimed: ratiod runs with --drain
    store.create_matrix(new_matrix("name: small-" + std::to_string(k) + "\nseeds: [" + std::to_string(k + 1) +
                                   "]\nsteps:\n  - {id: 0, name: baseline}\n"));
  }
}

// ---- ratiod -------------------------------------------------------------------------------------

struct Daemon {
  pid_t pid = -1;
  int port = 0;
};

Daemon start_ratiod(const Options& o, const fs::path& scratch) {
  const fs::path log = scratch / "ratiod.log";
  std::vector<std::string> args = {o.ratiod, "--db", o.db, "--listen", "127.0.0.1:0", "--drain", "--slots", "cpu:1",
                                   "--workdir", (scratch / "work").string(), "--data-dir", (scratch / "data").string()};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  Daemon d;
  if (posix_spawn(&d.pid, argv[0], &actions, nullptr, argv.data(), environ) != 0) {
    throw std::runtime_error("cannot start " + o.ratiod);
  }
  posix_spawn_file_actions_destroy(&actions);
  const std::string marker = "listening on http://127.0.0.1:";
  for (int i = 0; i < 600 && d.port == 0; ++i) {
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = text.find(marker);
    if (at != std::string::npos && text.find('\n', at) != std::string::npos) d.port = std::stoi(text.substr(at + marker.size()));
    else std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (d.port == 0) throw std::runtime_error("ratiod did not start; see " + log.string());
  return d;
}

// ---- measuring ----------------------------------------------------------------------------------

struct Endpoint {
  std::string label;
  std::vector<std::string> urls;  // taken in turn
};

double percentile(std::vector<double> ms, double p) {
  std::sort(ms.begin(), ms.end());
  const size_t at = static_cast<size_t>(p * static_cast<double>(ms.size() - 1) + 0.5);
  return ms[std::min(at, ms.size() - 1)];
}

// `total` requests spread over `clients` threads, each with its own keep-alive connection.
std::vector<double> measure(int port, const Endpoint& e, int clients, int total) {
  std::vector<std::vector<double>> per_client(clients);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      httplib::Client client("127.0.0.1", port);
      client.set_keep_alive(true);
      client.set_read_timeout(60);
      for (int i = c; i < total; i += clients) {
        const std::string& url = e.urls[static_cast<size_t>(i) % e.urls.size()];
        const auto start = std::chrono::steady_clock::now();
        auto res = client.Get(url.c_str());
        const auto end = std::chrono::steady_clock::now();
        if (!res || res->status != 200) ++failures;
        per_client[c].push_back(std::chrono::duration<double, std::milli>(end - start).count());
      }
    });
  }
  for (auto& t : threads) t.join();
  if (failures > 0) throw std::runtime_error(e.label + ": " + std::to_string(failures.load()) + " requests failed");
  std::vector<double> all;
  for (const auto& ms : per_client) all.insert(all.end(), ms.begin(), ms.end());
  return all;
}

std::vector<Endpoint> endpoints(int big) {
  std::vector<Endpoint> list(7);
  list[0].label = "GET /api/matrices/{id}/results (1,000 jobs)";
  list[1].label = "GET /api/matrices?limit=100 (pages of 1,000)";
  for (int after : {0, 100, 500, 900}) list[1].urls.push_back("/api/matrices?limit=100&after_id=" + std::to_string(after));
  list[6].label = "GET /api/matrices (all 1,000, unpaged)";
  list[6].urls = {"/api/matrices"};
  list[2].label = "GET /api/matrices/{id} (1,000 jobs)";
  list[3].label = "GET /api/jobs?matrix={id}&limit=100";
  list[4].label = "GET /api/jobs/{id}/metrics?names=train_loss,val_loss";
  list[5].label = "GET /api/health";
  list[5].urls = {"/api/health"};
  for (int m = 1; m <= big; ++m) {
    const std::string id = std::to_string(m);
    list[0].urls.push_back("/api/matrices/" + id + "/results");
    list[2].urls.push_back("/api/matrices/" + id);
    list[3].urls.push_back("/api/jobs?matrix=" + id + "&limit=100");
    list[4].urls.push_back("/api/jobs/" + std::to_string((m - 1) * 1000 + 17) + "/metrics?names=train_loss,val_loss");
  }
  return list;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--ratiod") o.ratiod = value;
    else if (flag == "--db") o.db = value;
    else if (flag == "--big") o.big_matrices = std::stoi(value);
    else if (flag == "--small") o.small_matrices = std::stoi(value);
    else if (flag == "--requests") o.requests = std::stoi(value);
    else throw std::invalid_argument("unknown flag " + flag);
  }
  if (o.ratiod.empty() || o.db.empty()) {
    throw std::invalid_argument("usage: ratio-loadbench --ratiod PATH --db PATH [--big 10] [--small 990] [--requests 200]");
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    if (!fs::exists(o.db)) build_database(o);
    const fs::path scratch = fs::path(o.db).parent_path() / "ratio-loadbench-run";
    fs::create_directories(scratch);
    Daemon d = start_ratiod(o, scratch);
    std::cout << "| endpoint | clients | requests | first (max) ms | p50 ms | p99 ms |\n| --- | --: | --: | --: | --: | --: |\n";
    for (const Endpoint& e : endpoints(o.big_matrices)) {
      // The first answer per matrix after start is timed on its own: a cache would hide it.
      std::vector<double> first = measure(d.port, e, 1, static_cast<int>(e.urls.size()));
      const double first_ms = *std::max_element(first.begin(), first.end());
      for (int clients : {1, 8}) {
        const std::vector<double> ms = measure(d.port, e, clients, o.requests * (clients == 1 ? 1 : 2));
        char first_cell[32] = "";
        if (clients == 1) std::snprintf(first_cell, sizeof first_cell, "%.1f", first_ms);
        char row[256];
        std::snprintf(row, sizeof row, "| %s | %d | %zu | %s | %.1f | %.1f |\n", e.label.c_str(), clients, ms.size(),
                      first_cell, percentile(ms, 0.5), percentile(ms, 0.99));
        std::cout << row << std::flush;
      }
    }
    kill(d.pid, SIGTERM);
    waitpid(d.pid, nullptr, 0);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "ratio-loadbench: " << e.what() << "\n";
    return 1;
  }
}

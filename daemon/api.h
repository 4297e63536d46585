#pragma once
// The HTTP API of docs/api.md on cpp-httplib, plus the dashboard's static files.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include <nlohmann/json.hpp>

#include "daemon/event_bus.h"
#include "daemon/options.h"
#include "daemon/scheduler.h"
#include "daemon/store_access.h"
#include "matrix/job_spec.h"

namespace httplib {
class Server;
}

namespace ratio::daemon {

// What the results table needs of a job that never changes after submission.
struct FixedJob {
  int64_t id = 0;
  JobSpec spec;
  int64_t params_total = 0;
  int64_t params_added = 0;
};

// A job's spec never changes after submission, so the parsed specs of a matrix's jobs are kept
// after its first results request instead of parsing 1,000 spec JSONs per request. Jobs are never
// removed, but they can be added to a matrix (more seeds), so a caller that finds ids the cached
// list lacks calls forget() and loads again. Holds the most recently loaded kMaxMatrices matrices.
class FixedJobCache {
 public:
  using Jobs = std::shared_ptr<const std::vector<FixedJob>>;
  // The matrix's jobs in id order, from `load` ([{"id", "spec", "params"}], Store::matrix_job_specs) on a miss.
  Jobs get(int64_t matrix_id, const std::function<nlohmann::json()>& load);
  void forget(int64_t matrix_id);
  static constexpr size_t kMaxMatrices = 64;

 private:
  std::mutex mu_;
  std::map<int64_t, Jobs> by_matrix_;
  std::deque<int64_t> loaded_order_;  // oldest first, for eviction
};

struct ApiContext {
  const Options& options;
  WriteQueue& writer;
  ReadPool& reader;
  Scheduler& scheduler;
  EventBus& bus;
  // Counters for GET /metrics.
  std::atomic<int64_t> reports{0};         // POST /api/report batches answered 200
  std::atomic<int64_t> stale_reports{0};   // answered 409
  std::atomic<int64_t> rejected_bodies{0};  // 400 answers
  std::atomic<int64_t> internal_errors{0};  // 500 answers; also their request ids
  FixedJobCache fixed_jobs{};
};

void install_routes(httplib::Server& server, ApiContext& ctx);

// The store's NewMatrix for a resolved matrix (matrix/'s to_json(Expansion): "matrix", "jobs",
// "warnings"), every job as expanded; `source` is the submitted text.
db::NewMatrix new_matrix_of(const nlohmann::json& expanded, const std::string& source);

}  // namespace ratio::daemon

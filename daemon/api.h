#pragma once
// The HTTP API of docs/api.md on cpp-httplib, plus the dashboard's static files.

#include <atomic>
#include <cstdint>

#include "daemon/event_bus.h"
#include "daemon/options.h"
#include "daemon/scheduler.h"
#include "daemon/store_access.h"

namespace httplib {
class Server;
}

namespace ratio::daemon {

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
};

void install_routes(httplib::Server& server, ApiContext& ctx);

}  // namespace ratio::daemon

#pragma once
// Fan-out of live events to GET /api/events (server-sent events) subscribers. Each subscriber has
// its own bounded queue; a subscriber that falls far behind loses its oldest events, so a slow
// client never holds the daemon back. It is told: its next event is `resync` with {"dropped": n},
// and it re-reads the state it shows.

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

namespace ratio::daemon {

struct BusEvent {
  std::string type;  // job | matrix | metric | resync
  nlohmann::json data;
};

class EventBus {
 public:
  class Subscription {
   public:
    // Waits up to timeout_s for the next event; nullopt on timeout or when the bus closed. After
    // events were dropped, the next event is {"resync", {"dropped": n}}, then the queue goes on.
    std::optional<BusEvent> next(double timeout_s);
    bool closed();

   private:
    friend class EventBus;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<BusEvent> queue_;
    size_t dropped_ = 0;  // events dropped from the full queue since the last resync
    bool closed_ = false;
  };

  std::shared_ptr<Subscription> subscribe();
  void unsubscribe(const std::shared_ptr<Subscription>& sub);
  void publish(const std::string& type, const nlohmann::json& data);
  void close();  // wakes every subscriber for shutdown
  static constexpr size_t kMaxQueued = 1000;  // events per subscriber
  size_t subscribers();

 private:
  std::mutex mu_;
  std::set<std::shared_ptr<Subscription>> subs_;
};

// One SSE message: "event: TYPE\ndata: JSON\n\n".
std::string format_sse(const BusEvent& event);

}  // namespace ratio::daemon

#pragma once
// Fan-out of live events to GET /api/events (server-sent events) subscribers. Each subscriber has
// its own bounded queue; a subscriber that falls far behind loses its oldest events, so a slow
// client never holds the daemon back. It is told: its next event is `resync` with {"dropped": n},
// and it re-reads the state it shows.
//
// Every published event has an id "<run>-<n>" (SSE `id:`), and the bus keeps the last kReplay of
// them: a client that reconnects with Last-Event-ID gets the events it missed, or a `resync` when
// they are no longer kept (or the id is from an earlier daemon run, whose events are gone).

#include <condition_variable>
#include <cstdint>
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
  uint64_t seq = 0;  // 1, 2, ... per daemon run; 0 for a subscriber's own resync
  std::string id;    // "<run>-<seq>", the SSE id; empty for resync
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

  EventBus();
  // last_event_id: the Last-Event-ID of a reconnecting client (empty: a new one, which starts now).
  std::shared_ptr<Subscription> subscribe(const std::string& last_event_id = "");
  void unsubscribe(const std::shared_ptr<Subscription>& sub);
  void publish(const std::string& type, const nlohmann::json& data);
  void close();  // wakes every subscriber for shutdown
  static constexpr size_t kMaxQueued = 1000;  // events per subscriber
  static constexpr size_t kReplay = 1000;     // recent events kept for reconnecting clients
  size_t subscribers();

 private:
  void replay_since(const std::string& last_event_id, Subscription& sub);

  std::mutex mu_;
  std::set<std::shared_ptr<Subscription>> subs_;
  const std::string run_;  // tells this run's event ids from an earlier daemon's
  uint64_t next_seq_ = 1;
  std::deque<BusEvent> recent_;  // the last kReplay events, oldest first
};

// One SSE message: "id: ID\nevent: TYPE\ndata: JSON\n\n" (no id line for resync).
std::string format_sse(const BusEvent& event);

}  // namespace ratio::daemon

#include "daemon/event_bus.h"

#include <algorithm>
#include <chrono>

namespace ratio::daemon {

std::optional<BusEvent> EventBus::Subscription::next(double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
               [this] { return closed_ || dropped_ > 0 || !queue_.empty(); });
  if (dropped_ > 0) {
    BusEvent resync{"resync", {{"dropped", dropped_}}};
    dropped_ = 0;
    return resync;
  }
  if (queue_.empty()) return std::nullopt;
  BusEvent event = std::move(queue_.front());
  queue_.pop_front();
  return event;
}

bool EventBus::Subscription::closed() {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

EventBus::EventBus() : run_(std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::system_clock::now().time_since_epoch()).count())) {}

std::shared_ptr<EventBus::Subscription> EventBus::subscribe(const std::string& last_event_id) {
  auto sub = std::make_shared<Subscription>();
  std::lock_guard<std::mutex> lock(mu_);  // no event can slip between the replay and the live queue
  if (!last_event_id.empty()) replay_since(last_event_id, *sub);
  subs_.insert(sub);
  return sub;
}

// Queues the kept events after last_event_id, or a resync when some of the missed ones are gone.
void EventBus::replay_since(const std::string& last_event_id, Subscription& sub) {
  const size_t dash = last_event_id.rfind('-');
  uint64_t last_seq = 0;
  bool ours = dash != std::string::npos && last_event_id.compare(0, dash, run_) == 0;
  try {
    if (ours) last_seq = std::stoull(last_event_id.substr(dash + 1));
  } catch (const std::exception&) {
    ours = false;  // not an id this bus wrote
  }
  const uint64_t oldest_kept = recent_.empty() ? next_seq_ : recent_.front().seq;
  if (!ours || last_seq >= next_seq_ || last_seq + 1 < oldest_kept) {
    sub.dropped_ = ours && last_seq < next_seq_ ? oldest_kept - last_seq - 1 : std::max<uint64_t>(next_seq_ - 1, 1);
    return;
  }
  for (const BusEvent& event : recent_) {
    if (event.seq > last_seq) sub.queue_.push_back(event);
  }
}

void EventBus::unsubscribe(const std::shared_ptr<Subscription>& sub) {
  std::lock_guard<std::mutex> lock(mu_);
  subs_.erase(sub);
}

void EventBus::publish(const std::string& type, const nlohmann::json& data) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t seq = next_seq_++;
  recent_.push_back({type, data, seq, run_ + "-" + std::to_string(seq)});
  if (recent_.size() > kReplay) recent_.pop_front();
  const BusEvent& event = recent_.back();
  for (const auto& sub : subs_) {
    {
      std::lock_guard<std::mutex> sub_lock(sub->mu_);
      if (sub->queue_.size() >= kMaxQueued) {
        sub->queue_.pop_front();
        ++sub->dropped_;
      }
      sub->queue_.push_back(event);
    }
    sub->cv_.notify_one();
  }
}

void EventBus::close() {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& sub : subs_) {
    {
      std::lock_guard<std::mutex> sub_lock(sub->mu_);
      sub->closed_ = true;
    }
    sub->cv_.notify_all();
  }
}

size_t EventBus::subscribers() {
  std::lock_guard<std::mutex> lock(mu_);
  return subs_.size();
}

std::string format_sse(const BusEvent& event) {
  const std::string id = event.id.empty() ? "" : "id: " + event.id + "\n";
  return id + "event: " + event.type + "\ndata: " + event.data.dump() + "\n\n";
}

}  // namespace ratio::daemon

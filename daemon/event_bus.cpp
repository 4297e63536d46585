#include "daemon/event_bus.h"

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

std::shared_ptr<EventBus::Subscription> EventBus::subscribe() {
  auto sub = std::make_shared<Subscription>();
  std::lock_guard<std::mutex> lock(mu_);
  subs_.insert(sub);
  return sub;
}

void EventBus::unsubscribe(const std::shared_ptr<Subscription>& sub) {
  std::lock_guard<std::mutex> lock(mu_);
  subs_.erase(sub);
}

void EventBus::publish(const std::string& type, const nlohmann::json& data) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& sub : subs_) {
    {
      std::lock_guard<std::mutex> sub_lock(sub->mu_);
      if (sub->queue_.size() >= kMaxQueued) {
        sub->queue_.pop_front();
        ++sub->dropped_;
      }
      sub->queue_.push_back({type, data});
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
  return "event: " + event.type + "\ndata: " + event.data.dump() + "\n\n";
}

}  // namespace ratio::daemon

#include "daemon/store_access.h"

namespace ratio::daemon {

WriteQueue::WriteQueue(const std::string& db_path) : store_(db_path, false), thread_([this] { loop(); }) {}

WriteQueue::~WriteQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void WriteQueue::push(std::function<void(db::Store&)> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
}

void WriteQueue::loop() {
  for (;;) {
    std::function<void(db::Store&)> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stopping and drained
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task(store_);  // packaged_task keeps any exception for the caller
  }
}

std::unique_ptr<db::Store> ReadPool::acquire() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      std::unique_ptr<db::Store> store = std::move(idle_.back());
      idle_.pop_back();
      return store;
    }
  }
  return std::make_unique<db::Store>(path_, true);
}

void ReadPool::release(std::unique_ptr<db::Store> store) {
  std::lock_guard<std::mutex> lock(mu_);
  idle_.push_back(std::move(store));
}

}  // namespace ratio::daemon

#pragma once
// How the daemon's threads reach the database: every write goes through WriteQueue, which owns the
// one writable connection and runs tasks one at a time on its own thread (no "database is locked",
// and a write is acknowledged only after its transaction committed). Reads use ReadPool's
// read-only connections, which WAL lets run beside the writer.

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "db/store.h"

namespace ratio::daemon {

class WriteQueue {
 public:
  explicit WriteQueue(const std::string& db_path);  // opens (and migrates) the database
  ~WriteQueue();                                     // finishes queued tasks, then stops
  WriteQueue(const WriteQueue&) = delete;
  WriteQueue& operator=(const WriteQueue&) = delete;

  // Runs fn(store) on the writer thread and returns its result (or rethrows its exception).
  template <typename Fn>
  auto run(Fn&& fn) -> decltype(fn(std::declval<db::Store&>())) {
    using Result = decltype(fn(std::declval<db::Store&>()));
    auto task = std::make_shared<std::packaged_task<Result(db::Store&)>>(std::forward<Fn>(fn));
    std::future<Result> done = task->get_future();
    push([task](db::Store& store) { (*task)(store); });
    return done.get();
  }

 private:
  void push(std::function<void(db::Store&)> task);
  void loop();

  db::Store store_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void(db::Store&)>> tasks_;
  bool stopping_ = false;
  std::thread thread_;
};

class ReadPool {
 public:
  explicit ReadPool(std::string db_path) : path_(std::move(db_path)) {}

  // Runs fn(store) on a read-only connection borrowed for the call.
  template <typename Fn>
  auto run(Fn&& fn) -> decltype(fn(std::declval<db::Store&>())) {
    std::unique_ptr<db::Store> store = acquire();
    struct Return {  // gives the connection back even when fn throws
      ReadPool& pool;
      std::unique_ptr<db::Store>& store;
      ~Return() { pool.release(std::move(store)); }
    } give_back{*this, store};
    return fn(*store);
  }

 private:
  std::unique_ptr<db::Store> acquire();
  void release(std::unique_ptr<db::Store> store);

  std::string path_;
  std::mutex mu_;
  std::vector<std::unique_ptr<db::Store>> idle_;
};

}  // namespace ratio::daemon

#pragma once
// Events of docs/job-spec.md: one JSON object per line on stdout (always), and optionally the same
// objects POSTed in batches to the daemon by a background thread that never blocks training.
// No LibTorch here.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

namespace ratio::worker {

// Posts {"events": [...]} to URL with "Authorization: Bearer TOKEN", retrying with backoff.
// A 409 (the daemon declared this attempt lost) is logged once on stderr; posting stops, training goes on.
class HttpReporter {
 public:
  HttpReporter(const std::string& url, const std::string& token);  // throws std::invalid_argument on a bad URL
  ~HttpReporter();
  HttpReporter(const HttpReporter&) = delete;
  HttpReporter& operator=(const HttpReporter&) = delete;

  void push(const nlohmann::json& event);  // returns at once
  // Sends what is queued, waiting at most timeout_s, then stops the thread.
  void close(double timeout_s);

  int64_t delivered() const;  // events the server accepted (for tests and the final log line)

 private:
  void run();
  bool post(const std::string& body, int& status);  // false on a network error

  std::string base_, path_, token_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<nlohmann::json> queue_;
  bool closing_ = false;
  bool rejected_ = false;  // got 409
  int64_t delivered_ = 0;
  double close_deadline_ = 0;
  std::thread thread_;
};

class EventSink {
 public:
  explicit EventSink(std::ostream& out) : out_(out) {}
  void set_reporter(std::unique_ptr<HttpReporter> reporter) { reporter_ = std::move(reporter); }
  HttpReporter* reporter() { return reporter_.get(); }

  // Adds type, seq and time to `fields`, writes the line, forwards it; returns the event.
  // Thread-safe: the heartbeat thread emits beside the training loop.
  nlohmann::json emit(const std::string& type, nlohmann::json fields = nlohmann::json::object());

 private:
  std::mutex mu_;
  std::ostream& out_;
  int64_t seq_ = 0;
  std::unique_ptr<HttpReporter> reporter_;
};

double unix_time();

}  // namespace ratio::worker

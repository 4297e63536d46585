#include "worker/events.h"

#include <chrono>
#include <iostream>

#include <httplib.h>

namespace ratio::worker {

double unix_time() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

nlohmann::json EventSink::emit(const std::string& type, nlohmann::json fields) {
  std::lock_guard<std::mutex> lock(mu_);
  fields["type"] = type;
  fields["seq"] = seq_++;
  fields["time"] = unix_time();
  // Non-finite numbers (a diverged loss) would serialise as null; that is what the daemon expects.
  out_ << fields.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  out_.flush();
  if (reporter_) reporter_->push(fields);
  return fields;
}

HttpReporter::HttpReporter(const std::string& url, const std::string& token) : token_(token) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos || (url.compare(0, scheme, "http") != 0 && url.compare(0, scheme, "https") != 0))
    throw std::invalid_argument("--report URL '" + url + "' must start with http:// or https://");
  const size_t slash = url.find('/', scheme + 3);
  base_ = url.substr(0, slash);
  path_ = slash == std::string::npos ? "/api/report" : url.substr(slash);
  thread_ = std::thread([this] { run(); });
}

HttpReporter::~HttpReporter() { close(0); }

void HttpReporter::push(const nlohmann::json& event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (rejected_ || closing_) return;
    queue_.push_back(event);
  }
  cv_.notify_one();
}

int64_t HttpReporter::delivered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return delivered_;
}

void HttpReporter::close(double timeout_s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!thread_.joinable()) return;
    closing_ = true;
    close_deadline_ = unix_time() + timeout_s;
  }
  cv_.notify_one();
  thread_.join();
}

bool HttpReporter::post(const std::string& body, int& status) {
  httplib::Client client(base_);
  client.set_connection_timeout(2, 0);
  client.set_read_timeout(10, 0);
  client.set_write_timeout(10, 0);
  httplib::Headers headers = {{"Authorization", "Bearer " + token_}};
  auto res = client.Post(path_.c_str(), headers, body, "application/json");
  if (!res) return false;
  status = res->status;
  return true;
}

void HttpReporter::run() {
  constexpr size_t kMaxBatch = 500;
  double backoff_s = 0.5;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    // Batch what arrives within a second; close() wakes us at once.
    cv_.wait_for(lock, std::chrono::seconds(1), [this] { return closing_ || queue_.size() >= kMaxBatch; });
    if (queue_.empty()) {
      if (closing_) return;
      continue;
    }
    if (closing_ && unix_time() > close_deadline_) {
      std::cerr << "ratio-worker: report: gave up delivering " << queue_.size() << " events at exit\n";
      return;
    }
    const size_t n = std::min(queue_.size(), kMaxBatch);
    nlohmann::json batch = nlohmann::json::array();
    for (size_t i = 0; i < n; ++i) batch.push_back(queue_[i]);
    const std::string body =
        nlohmann::json{{"events", batch}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    lock.unlock();
    int status = 0;
    const bool reached = post(body, status);
    lock.lock();
    if (reached && status >= 200 && status < 300) {
      queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
      delivered_ += static_cast<int64_t>(n);
      backoff_s = 0.5;
    } else if (reached && status == 409) {
      std::cerr << "ratio-worker: report: daemon answered 409 (this attempt is no longer current); "
                   "continuing without reporting, stdout stays complete\n";
      rejected_ = true;
      queue_.clear();
      return;
    } else {
      if (reached && status >= 400 && status < 500 && status != 429) {
        // A request the server will never accept (bad token, bad body): drop it rather than loop forever.
        std::cerr << "ratio-worker: report: server answered " << status << "; dropping " << n << " events\n";
        queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
        continue;
      }
      // Network error or 5xx: keep the events, wait and retry (woken early only by close()).
      if (closing_) cv_.wait_for(lock, std::chrono::duration<double>(backoff_s));
      else cv_.wait_for(lock, std::chrono::duration<double>(backoff_s), [this] { return closing_; });
      backoff_s = std::min(backoff_s * 2, 30.0);
    }
  }
}

}  // namespace ratio::worker

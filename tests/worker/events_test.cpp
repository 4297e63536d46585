// Events on a stream and through the HTTP reporter, against a real cpp-httplib server.
#include <gtest/gtest.h>

#include <atomic>
#include <sstream>
#include <thread>

#include <httplib.h>

#include "worker/events.h"

using ratio::worker::EventSink;
using ratio::worker::HttpReporter;
using nlohmann::json;

namespace {

// A report endpoint that answers with the statuses in `script` (then 200) and records accepted events.
class FakeDaemon {
 public:
  explicit FakeDaemon(std::vector<int> script) : script_(std::move(script)) {
    server_.Post("/api/report", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      auth_ = req.get_header_value("Authorization");
      const size_t call = calls_++;
      res.status = call < script_.size() ? script_[call] : 200;
      if (res.status == 200) {
        const json body = json::parse(req.body);
        for (const auto& e : body.at("events")) seqs_.push_back(e.at("seq").get<int>());
      }
      res.set_content("{}", "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ~FakeDaemon() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/api/report"; }
  std::vector<int> seqs() {
    std::lock_guard<std::mutex> lock(mu_);
    return seqs_;
  }
  size_t calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  std::string auth() {
    std::lock_guard<std::mutex> lock(mu_);
    return auth_;
  }

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  std::mutex mu_;
  std::vector<int> script_;
  size_t calls_ = 0;
  std::vector<int> seqs_;
  std::string auth_;
};

}  // namespace

TEST(EventSink, JsonLinesWithSeqAndTime) {
  std::ostringstream out;
  EventSink sink(out);
  sink.emit("started", {{"iter", 0}});
  sink.emit("metric", {{"iter", 1}, {"train_loss", std::nan("")}});
  std::istringstream lines(out.str());
  std::string line;
  std::vector<json> events;
  while (std::getline(lines, line)) events.push_back(json::parse(line));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0]["type"], "started");
  EXPECT_EQ(events[0]["seq"], 0);
  EXPECT_EQ(events[1]["seq"], 1);
  EXPECT_GT(events[1]["time"].get<double>(), 1.7e9);
  EXPECT_TRUE(events[1]["train_loss"].is_null());  // NaN is written as null, still valid JSON
}

TEST(HttpReporter, DeliversEverythingInOrderDespiteServerErrors) {
  FakeDaemon daemon({503, 500});
  std::ostringstream out;
  EventSink sink(out);
  sink.set_reporter(std::make_unique<HttpReporter>(daemon.url(), "tok123"));
  for (int i = 0; i < 20; ++i) sink.emit("metric", {{"iter", i}});
  sink.reporter()->close(20);
  std::vector<int> expected(20);
  for (int i = 0; i < 20; ++i) expected[i] = i;
  EXPECT_EQ(daemon.seqs(), expected);
  EXPECT_GE(daemon.calls(), 3u);
  EXPECT_EQ(daemon.auth(), "Bearer tok123");
  EXPECT_EQ(sink.reporter()->delivered(), 20);
}

TEST(HttpReporter, StopsPostingAfter409) {
  FakeDaemon daemon({409});
  HttpReporter reporter(daemon.url(), "t");
  reporter.push({{"seq", 0}});
  for (int i = 0; i < 50 && daemon.calls() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  reporter.push({{"seq", 1}});  // ignored: this attempt is no longer current
  reporter.close(5);
  EXPECT_EQ(daemon.calls(), 1u);
  EXPECT_EQ(reporter.delivered(), 0);
}

TEST(HttpReporter, UnreachableDaemonNeverBlocksPush) {
  HttpReporter reporter("http://127.0.0.1:1/api/report", "t");
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 1000; ++i) reporter.push({{"seq", i}});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
  reporter.close(0.5);
  EXPECT_EQ(reporter.delivered(), 0);
}

TEST(HttpReporter, RejectsBadUrl) { EXPECT_THROW(HttpReporter("localhost:8080", "t"), std::invalid_argument); }

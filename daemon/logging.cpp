#include "daemon/logging.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace ratio::daemon {

namespace {

// spdlog's file sinks cannot reopen their file; this one can, under the sink's own lock.
class ReopenableFileSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit ReopenableFileSink(std::string path) : path_(std::move(path)) { file_ = open(); }
  ~ReopenableFileSink() override { std::fclose(file_); }

  void reopen() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::FILE* fresh = open();
    std::fclose(file_);
    file_ = fresh;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    std::fwrite(formatted.data(), 1, formatted.size(), file_);
    std::fflush(file_);  // a crash must not lose the lines that explain it
  }
  void flush_() override { std::fflush(file_); }

 private:
  std::FILE* open() const {
    std::FILE* file = std::fopen(path_.c_str(), "ae");  // append, close-on-exec: workers must not inherit it
    if (!file) throw std::runtime_error("cannot open --log-file '" + path_ + "': " + std::strerror(errno));
    return file;
  }

  std::string path_;
  std::FILE* file_ = nullptr;
};

std::shared_ptr<ReopenableFileSink> g_file_sink;

}  // namespace

void init_logging(const std::string& log_file) {
  if (log_file.empty()) {
    spdlog::set_default_logger(spdlog::stderr_color_mt("ratiod"));  // stdout carries only the listening line
    return;
  }
  g_file_sink = std::make_shared<ReopenableFileSink>(log_file);
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("ratiod", g_file_sink));
}

void reopen_log() {
  if (!g_file_sink) return;
  try {
    g_file_sink->reopen();
    spdlog::info("SIGHUP: reopened the log file");
  } catch (const std::exception& e) {  // keep logging to the old file rather than stop
    spdlog::error("SIGHUP: {}; still logging to the previous file", e.what());
  }
}

}  // namespace ratio::daemon

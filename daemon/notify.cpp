#include "daemon/notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>

#include <spdlog/spdlog.h>

namespace ratio::daemon {

namespace {

double monotonic_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string take_env(const char* name) {
  const char* value = std::getenv(name);
  std::string text = value ? value : "";
  ::unsetenv(name);
  return text;
}

}  // namespace

Notifier::Notifier() {
  socket_ = take_env("NOTIFY_SOCKET");
  const std::string usec = take_env("WATCHDOG_USEC");
  const std::string pid = take_env("WATCHDOG_PID");
  // WATCHDOG_PID names the process systemd watches; a ratiod started by another program ignores it.
  if (!usec.empty() && (pid.empty() || pid == std::to_string(::getpid()))) watchdog_s_ = std::atof(usec.c_str()) / 1e6;
  if (socket_.empty()) watchdog_s_ = 0;
}

void Notifier::ready(const std::string& status) {
  send("READY=1\nSTATUS=" + status + "\nMAINPID=" + std::to_string(::getpid()));
}

void Notifier::stopping() {
  std::lock_guard<std::mutex> lock(mu_);
  stopping_ = true;
  send("STOPPING=1\nSTATUS=stopping: workers checkpoint");
}

void Notifier::feed_watchdog() {
  if (watchdog_s_ <= 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return;
  const double now = monotonic_s();
  if (last_fed_s_ >= 0 && now - last_fed_s_ < watchdog_s_ / 3) return;
  last_fed_s_ = now;
  send("WATCHDOG=1");
}

void Notifier::send(const std::string& message) const {
  if (socket_.empty()) return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_.size() >= sizeof addr.sun_path) {
    spdlog::warn("NOTIFY_SOCKET {} is too long; systemd is not notified", socket_);
    return;
  }
  std::memcpy(addr.sun_path, socket_.data(), socket_.size());
  if (socket_[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace: no file, a leading NUL
  const socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_.size());
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::sendto(fd, message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
                         length) < 0)
    spdlog::warn("cannot notify systemd at {}: {}", socket_, std::strerror(errno));
  if (fd >= 0) ::close(fd);
}

}  // namespace ratio::daemon

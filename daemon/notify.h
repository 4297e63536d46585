#pragma once
// systemd's service notifications (sd_notify(3)): readiness, watchdog keep-alives and stopping, each
// one datagram of "KEY=VALUE" lines to the unix socket named by $NOTIFY_SOCKET. Written by hand
// rather than with libsystemd: the protocol is small, documented as stable, and this keeps ratiod
// free of a library that matters only under systemd. Without $NOTIFY_SOCKET every call does nothing.

#include <mutex>
#include <string>

namespace ratio::daemon {

class Notifier {
 public:
  // Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, then removes them from the environment so
  // the workers ratiod starts do not inherit them (call before any thread starts).
  Notifier();

  // READY=1 with a STATUS line: the database is open and the port bound.
  void ready(const std::string& status);
  // STOPPING=1: shutdown began (workers are checkpointing). No keep-alive follows it.
  void stopping();
  // WATCHDOG=1, at most every third of WATCHDOG_USEC; called by the scheduler thread after each
  // pass, so a hung scheduler stops feeding the watchdog and systemd restarts ratiod.
  void feed_watchdog();

  // The watchdog interval in seconds; 0 when systemd asked for none.
  double watchdog_s() const { return watchdog_s_; }

 private:
  void send(const std::string& message) const;

  std::string socket_;      // a path, or "@name" for the abstract namespace
  double watchdog_s_ = 0;
  double last_fed_s_ = -1;  // monotonic seconds of the last WATCHDOG=1 (scheduler thread only)
  std::mutex mu_;           // orders STOPPING=1 after every keep-alive
  bool stopping_ = false;
};

}  // namespace ratio::daemon

#pragma once
// ratiod's log: stderr by default (journald takes it under systemd), or --log-file, which SIGHUP
// reopens so that logrotate can move the file away.

#include <string>

namespace ratio::daemon {

// Makes the default spdlog logger write to `log_file` (appending), or to stderr when it is empty.
// Throws std::runtime_error when the file cannot be opened.
void init_logging(const std::string& log_file);

// Reopens the log file at its path (after a rotation); nothing when logging to stderr.
void reopen_log();

}  // namespace ratio::daemon

#pragma once
// `ratio` command line: parsing into a Command, the exit codes, and the help text.
// Pure (no I/O besides reading $RATIO_SERVER and $RATIO_TOKEN), so tests can drive it. CLI11 stays
// inside args.cpp: it is heavy and only that file parses options.

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace ratio::cli {

// Exit codes, listed in `ratio --help` (keep the two in sync).
enum ExitCode : int {
  kOk = 0,
  kServerError = 1,    // ratiod answered with an error (the message says what and how to fix)
  kUsage = 2,          // bad command line
  kUnreachable = 3,    // no ratiod at the server URL
  kInvalidMatrix = 4,  // the matrix file or preset does not expand (file:line:column: path: message)
  kJobsFailed = 5,     // --watch: the matrix finished with failed or cancelled jobs
  kLocalIo = 6,        // a local file could not be read or written
};

// Thrown for a bad command line; the message is one line naming the problem and the fix.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Command {
  std::string name;              // submit | status | results | rerun | cancel | logs | expand | presets | export
                                 // | help | version (both print `text`)
  std::string text;              // help, version: what to print
  std::string server;            // base URL of ratiod
  std::string token;             // bearer token for mutating calls; empty = none
  std::string file;              // submit/expand: matrix file
  std::string preset;            // submit/expand: --preset NAME
  std::string matrix;            // status/results/rerun/export, cancel --matrix
  std::string job;               // logs, cancel, rerun --job
  std::string dir;               // export
  std::string format = "table";  // results: table | json | csv; expand: table | json
  bool force = false;            // submit --force
  bool watch = false;            // submit/status --watch
  bool failed_only = false;      // rerun --failed
  bool follow = false;           // logs -f
  int tail = 200;                // logs --tail N
  double interval_s = 2.0;       // --watch / -f poll interval
};

// Parses argv (without the program name); --server and --token default to $RATIO_SERVER and
// $RATIO_TOKEN. Throws UsageError.
Command parse_args(const std::vector<std::string>& args);

constexpr const char* kDefaultServer = "http://127.0.0.1:8080";

// `ratio --help`: the commands, the global options and the exit codes.
std::string help_text();

}  // namespace ratio::cli

#pragma once
// ratiod's command line and config file (--config FILE, YAML: every flag is a key, flags override
// the file). CLI11 stays inside options.cpp: it is heavy and only that file parses options.

#include <stdexcept>
#include <string>
#include <vector>

namespace ratio::daemon {

struct Options {
  std::string db_path;
  std::string host = "127.0.0.1";
  int port = 8080;             // 0 = any free port (printed at startup)
  std::string slots = "auto";  // auto | gpu:0,1 | cpu:N
  std::string workdir;         // default: <directory of --db>/ratiod-work
  std::string data_dir;        // workers' --data-dir; default $RATIO_DATA_DIR, else ~/.cache/ratio/data
  std::vector<std::string> allow_paths;  // --allow-path DIR (repeatable): more folders jobs may read
  std::string worker_path;     // default: ratio-worker next to ratiod
  std::string token;           // read from --token-file; empty = no auth (loopback only)
  std::string web_root;        // default: <exe>/../share/ratio/web, else the build tree's copy
  std::string log_file;        // empty = stderr (journald under systemd); reopened on SIGHUP
  double lease_s = 600;        // no event from a running worker for this long -> lost
  double stall_s = 3600;       // iteration not advancing for this long -> lost (a hang)
  double grace_s = 30;         // SIGTERM -> SIGKILL delay for cancel and shutdown
  bool drain = false;          // start without dispatching (finish what runs, start nothing new)
  // Where jobs run: "local" (--slots on this machine) or "slurm" (docs/slurm.md).
  std::string executor = "local";
  std::string slurm_partition;             // --slurm-partition ("" = the cluster's default)
  std::string slurm_gres = "gpu:1";        // --slurm-gres ("none" = ask for no gres)
  std::string slurm_time;                  // --slurm-time (sbatch --time)
  std::vector<std::string> slurm_args;     // --slurm-arg (repeatable): more sbatch arguments
  std::string report_url;                  // --report-url: how workers reach ratiod ("" = from --listen)
};

// A bad command line or config file; the message is one line: what, where (the flag, or
// FILE:LINE:COLUMN: key), and how to fix it. ratiod exits 2.
class UsageError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// What the command line asks for: run with `options`, or, when `text` is not empty (--help,
// --version), print it and exit 0.
struct Invocation {
  Options options;
  std::string text;
};

// Parses argv (without the program name) and the --config file. exe_dir is the directory of the
// running ratiod (for the default worker path and web root). Throws UsageError.
Invocation parse_command_line(const std::vector<std::string>& args, const std::string& exe_dir);

// The flags' names without "--" (= the config file's keys), for the test that keeps the two equal.
std::vector<std::string> config_keys();

bool is_loopback(const std::string& host);

}  // namespace ratio::daemon

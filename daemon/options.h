#pragma once
// ratiod's command line.

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
  std::string web_root;        // default: compiled-in build tree path, else <exe>/../share/ratio/web
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

// Parses argv; throws std::invalid_argument with a message naming the flag and the fix.
// exe_path is argv[0] resolved (for the default worker path and web root).
Options parse_options(const std::vector<std::string>& args, const std::string& exe_dir);

std::string usage();

bool is_loopback(const std::string& host);

}  // namespace ratio::daemon

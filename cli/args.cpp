#include "cli/args.h"

#include <algorithm>
#include <map>
#include <set>

namespace ratio::cli {
namespace {

// Which flags each command accepts (global flags --server, --token, --help work everywhere).
const std::map<std::string, std::set<std::string>>& command_flags() {
  static const std::map<std::string, std::set<std::string>> flags = {
      {"submit", {"--preset", "--force", "--watch", "--interval"}},
      {"status", {"--watch", "--interval"}},
      {"results", {"--json", "--csv"}},
      {"rerun", {"--failed", "--job"}},
      {"cancel", {"--matrix"}},
      {"logs", {"-f", "--follow", "--tail", "--interval"}},
      {"expand", {"--preset", "--json"}},
      {"presets", {}},
      {"export", {}},
      {"help", {}},
  };
  return flags;
}

bool takes_value(const std::string& flag) {
  return flag == "--server" || flag == "--token" || flag == "--preset" || flag == "--job" || flag == "--matrix" ||
         flag == "--tail" || flag == "--interval";
}

double parse_number(const std::string& flag, const std::string& value, double min) {
  size_t used = 0;
  double number = 0.0;
  try {
    number = std::stod(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || number < min)
    throw UsageError(flag + " expects a number >= " + std::to_string(static_cast<int>(min)) + ", got '" + value + "'");
  return number;
}

void require_id(const std::string& what, const std::string& value) {
  if (value.empty() || !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; }))
    throw UsageError(what + " must be a numeric id (see `ratio status`), got '" + value + "'");
}

// Positional arguments per command: checks their count and stores them.
void take_positionals(Command& cmd, const std::vector<std::string>& pos) {
  auto want = [&](size_t min, size_t max, const char* usage) {
    if (pos.size() < min || pos.size() > max)
      throw UsageError(std::string("usage: ratio ") + usage + " (got " + std::to_string(pos.size()) +
                       " argument(s); see `ratio --help`)");
  };
  const std::string& n = cmd.name;
  if (n == "submit" || n == "expand") {
    const char* usage =
        n == "submit" ? "submit FILE|--preset NAME [--force] [--watch]" : "expand FILE|--preset NAME [--json]";
    want(cmd.preset.empty() ? 1 : 0, cmd.preset.empty() ? 1 : 0, usage);
    if (!pos.empty()) cmd.file = pos[0];
  } else if (n == "status") {
    want(0, 1, "status [MATRIX] [--watch]");
    if (!pos.empty()) cmd.matrix = pos[0];
  } else if (n == "results") {
    want(1, 1, "results MATRIX [--json|--csv]");
    cmd.matrix = pos[0];
  } else if (n == "rerun") {
    want(cmd.job.empty() ? 1 : 0, cmd.job.empty() ? 1 : 0, "rerun MATRIX [--failed] | rerun --job ID");
    if (!pos.empty()) cmd.matrix = pos[0];
    if (!cmd.job.empty() && cmd.failed_only)
      throw UsageError("rerun --job ID reruns one job; --failed applies to a MATRIX");
  } else if (n == "cancel") {
    want(cmd.matrix.empty() ? 1 : 0, cmd.matrix.empty() ? 1 : 0, "cancel JOB | cancel --matrix ID");
    if (!pos.empty()) cmd.job = pos[0];
  } else if (n == "logs") {
    want(1, 1, "logs JOB [-f] [--tail N]");
    cmd.job = pos[0];
  } else if (n == "export") {
    want(2, 2, "export MATRIX DIR");
    cmd.matrix = pos[0];
    cmd.dir = pos[1];
  } else {
    want(0, 0, "presets");
  }
  if (!cmd.matrix.empty()) require_id("MATRIX", cmd.matrix);
  if (!cmd.job.empty()) require_id("JOB", cmd.job);
}

}  // namespace

Command parse_args(const std::vector<std::string>& args, const char* env_server, const char* env_token) {
  Command cmd;
  cmd.server = env_server && *env_server ? env_server : kDefaultServer;
  cmd.token = env_token ? env_token : "";
  std::vector<std::string> positionals;
  std::vector<std::string> flags_seen;

  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg == "-h" || arg == "--help") {
      cmd.name = "help";
      return cmd;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      if (cmd.name.empty()) {
        if (!command_flags().count(arg))
          throw UsageError("unknown command '" + arg +
                           "'; commands: submit status results rerun cancel logs expand presets export (ratio --help)");
        cmd.name = arg;
      } else {
        positionals.push_back(arg);
      }
      continue;
    }
    std::string value;
    bool has_inline_value = false;
    if (size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_inline_value = true;
    }
    if (takes_value(arg) && !has_inline_value) {
      if (i + 1 >= args.size()) throw UsageError(arg + " needs a value (ratio --help)");
      value = args[++i];
    } else if (!takes_value(arg) && has_inline_value) {
      throw UsageError(arg + " takes no value");
    }
    flags_seen.push_back(arg);

    // clang-format off
    if (arg == "--server") cmd.server = value;
    else if (arg == "--token") cmd.token = value;
    else if (arg == "--preset") cmd.preset = value;
    else if (arg == "--job") cmd.job = value;
    else if (arg == "--matrix") cmd.matrix = value;
    else if (arg == "--tail") cmd.tail = static_cast<int>(parse_number(arg, value, 0));
    else if (arg == "--interval") cmd.interval_s = parse_number(arg, value, 0);
    else if (arg == "--force") cmd.force = true;
    else if (arg == "--watch") cmd.watch = true;
    else if (arg == "--failed") cmd.failed_only = true;
    else if (arg == "-f" || arg == "--follow") cmd.follow = true;
    else if (arg == "--json") cmd.format = "json";
    else if (arg == "--csv") cmd.format = "csv";
    else throw UsageError("unknown option '" + arg + "' (ratio --help)");
    // clang-format on
  }

  if (cmd.name.empty()) throw UsageError("no command given; try `ratio --help`");
  for (const std::string& flag : flags_seen) {
    if (flag == "--server" || flag == "--token") continue;
    if (!command_flags().at(cmd.name).count(flag))
      throw UsageError("option " + flag + " does not apply to `ratio " + cmd.name + "` (ratio --help)");
  }
  const auto seen = [&](const char* flag) {
    return std::find(flags_seen.begin(), flags_seen.end(), flag) != flags_seen.end();
  };
  if (seen("--json") && seen("--csv")) throw UsageError("choose one output format: --json or --csv");
  if (cmd.server.rfind("http://", 0) != 0 && cmd.server.rfind("https://", 0) != 0)
    throw UsageError("--server must be a URL like http://127.0.0.1:8080, got '" + cmd.server + "'");
  while (cmd.server.size() > 8 && cmd.server.back() == '/') cmd.server.pop_back();
  take_positionals(cmd, positionals);
  if (!cmd.preset.empty() && !cmd.file.empty()) throw UsageError("give a FILE or --preset NAME, not both");
  return cmd;
}

std::string help_text() {
  return R"(ratio: submit and follow RATIO ablation matrices on a ratiod daemon.

usage: ratio [--server URL] [--token TOKEN] COMMAND [ARGS]

Commands talking to ratiod:
  submit FILE|--preset NAME [--force] [--watch]
                         submit a matrix (YAML/JSON); prints the new matrix id as stdout's last line.
                         --force reruns configs whose results are cached; --watch follows progress.
  status [MATRIX] [--watch] [--interval S]
                         all matrices, or one matrix's jobs (status, iter/max_iters, last loss)
  results MATRIX [--json|--csv]
                         comparison table with deltas, efficiency and KEEP/REMOVE/INVESTIGATE verdicts;
                         --json prints the API's answer unchanged
  rerun MATRIX [--failed]
                         requeue the matrix's failed and cancelled jobs (--failed: failed only)
  rerun --job ID         requeue one job (a new attempt; earlier attempts are kept)
  cancel JOB | cancel --matrix ID
                         cancel one job, or every queued and running job of a matrix
  logs JOB [-f] [--tail N]
                         the job's current attempt log (last N lines, default 200); -f follows it
  export MATRIX DIR      write DIR/<matrix>_results_YYYYMMDD_HHMMSS/ with one JSON per step and summaries

Local commands (no daemon needed):
  expand FILE|--preset NAME [--json]
                         resolve a matrix into its jobs with parameter counts and lint warnings
  presets                list the built-in presets

Options:
  --server URL   ratiod's address (default $RATIO_SERVER, else http://127.0.0.1:8080)
  --token TOKEN  bearer token for mutating calls (default $RATIO_TOKEN)
  -h, --help     this text

Exit codes:
  0  success
  1  ratiod answered with an error
  2  bad command line
  3  ratiod not reachable at the server URL
  4  the matrix file or preset is invalid
  5  --watch: the matrix finished with failed or cancelled jobs
  6  a local file could not be read or written
)";
}

}  // namespace ratio::cli

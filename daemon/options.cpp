#include "daemon/options.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include <CLI/CLI.hpp>
#include <yaml-cpp/yaml.h>

#include "ratio/build_info.h"

namespace ratio::daemon {

namespace fs = std::filesystem;

namespace {

// The flags that only the command line takes: they are not settings of the daemon.
const std::set<std::string> kCommandLineOnly = {"help", "version", "config"};

void parse_listen(const std::string& value, Options& o) {
  size_t colon = value.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    throw UsageError("--listen expects HOST:PORT (e.g. 127.0.0.1:8080), got '" + value + "'");
  }
  std::string port = value.substr(colon + 1);
  try {
    size_t used = 0;
    o.port = std::stoi(port, &used);
    if (used != port.size() || o.port < 0 || o.port > 65535) throw std::out_of_range("port");
  } catch (const std::exception&) {
    throw UsageError("--listen: port must be 0..65535, got '" + port + "'");
  }
  o.host = value.substr(0, colon);
}

std::string read_token(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UsageError("--token-file: cannot read '" + path + "'");
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.size() < 16) {
    throw UsageError("--token-file '" + path + "': the token must be at least 16 characters on its first line");
  }
  return token;
}

// The worker's own default (worker/data.cpp default_data_dir), made explicit: ratiod confines the
// datasets of submitted matrices to this folder and passes it to every worker.
std::string default_data_dir() {
  if (const char* dir = std::getenv("RATIO_DATA_DIR"); dir && *dir) return dir;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/tmp") + "/.cache/ratio/data";
}

const CLI::Validator kPositiveSeconds(
    [](std::string& value) -> std::string {
      try {
        size_t used = 0;
        if (std::stod(value, &used) > 0 && used == value.size()) return "";
      } catch (const std::exception&) {
        // reported below
      }
      return "expects a positive number of seconds, got '" + value + "'";
    },
    "");

// Every flag of ratiod. The config file's keys are these names without "--", so a new option is one
// line here (and its field in Options); CLI11 converts and checks the value, from argv or the file.
void add_flags(CLI::App& app, Options& o) {
  app.add_option("--db", o.db_path, "SQLite database, created if missing (required)")->type_name("PATH");
  app.add_option_function<std::string>(
         "--listen", [&o](const std::string& v) { parse_listen(v, o); },
         "HOST:PORT for the API and dashboard; port 0 picks a free one (printed on stdout). A host beyond "
         "loopback needs --token-file")
      ->type_name("HOST:PORT")
      ->default_str("127.0.0.1:8080");
  app.add_option("--slots", o.slots, "where jobs run: auto (one slot per GPU, else one CPU slot), gpu:0,1, cpu:N")
      ->type_name("SLOTS")
      ->capture_default_str();
  app.add_option("--workdir", o.workdir, "jobs' folders (default: ratiod-work next to --db)")->type_name("DIR");
  app.add_option("--data-dir", o.data_dir,
                 "datasets, passed to every worker; matrices may read only here and in --allow-path folders "
                 "(default: $RATIO_DATA_DIR, else ~/.cache/ratio/data)")
      ->type_name("DIR");
  app.add_option("--allow-path", o.allow_paths, "one more folder jobs may read (repeatable; a list in --config)")
      ->type_name("DIR");
  app.add_option("--worker", o.worker_path, "the ratio-worker binary (default: the one next to ratiod)")
      ->type_name("PATH");
  app.add_option_function<std::string>(
         "--token-file", [&o](const std::string& path) { o.token = read_token(path); },
         "bearer token for mutating API calls, on the file's first line (at least 16 characters)")
      ->type_name("FILE");
  app.add_option("--web-root", o.web_root, "the dashboard's files (default: ../share/ratio/web next to ratiod)")
      ->type_name("DIR");
  app.add_option("--log-file", o.log_file, "log here instead of stderr; SIGHUP reopens it (for logrotate)")
      ->type_name("FILE");
  app.add_option("--lease-s", o.lease_s, "a running worker silent this long is lost")
      ->type_name("S")->check(kPositiveSeconds)->capture_default_str();
  app.add_option("--stall-s", o.stall_s, "a worker whose iteration has not advanced this long is hung, lost")
      ->type_name("S")->check(kPositiveSeconds)->capture_default_str();
  app.add_option("--grace-s", o.grace_s, "SIGTERM to SIGKILL delay for cancel and shutdown")
      ->type_name("S")->check(kPositiveSeconds)->capture_default_str();
  app.add_flag("--drain", o.drain, "start without dispatching: finish what runs, start nothing new");
  app.add_option("--executor", o.executor, "where attempts run: local (this machine's --slots) or slurm")
      ->type_name("local|slurm")->check(CLI::IsMember({"local", "slurm"}))->capture_default_str();
  app.add_option("--slurm-partition", o.slurm_partition, "sbatch --partition (default: the cluster's)")
      ->type_name("P");
  app.add_option_function<std::string>(
         "--slurm-gres", [&o](const std::string& v) { o.slurm_gres = v == "none" ? "" : v; },
         "sbatch --gres per attempt; a job of train.gpus N asks for gpu:N; none: no gres")
      ->type_name("G|none")
      ->default_str("gpu:1");
  app.add_option("--slurm-time", o.slurm_time, "sbatch --time (the worker checkpoints 120 s before it)")
      ->type_name("T");
  app.add_option("--slurm-arg", o.slurm_args, "one more sbatch argument (repeatable; a list in --config)")
      ->type_name("ARG");
  app.add_option("--report-url", o.report_url,
                 "the URL the SLURM nodes reach ratiod at, e.g. http://head-node:8080 (default: from --listen)")
      ->type_name("URL");
}

const char* kFooter = R"(
Config file: --config FILE (YAML) takes every flag above as a key without its leading --, e.g.
  db: /var/lib/ratio/ratio.db
  listen: 127.0.0.1:8080
  allow-path: [/srv/models, /srv/corpora]
  drain: false
A flag given on the command line overrides the file's key.

Environment: RATIO_DATA_DIR (the default --data-dir). Under systemd: NOTIFY_SOCKET (readiness once the
database is open and the port bound, STOPPING on shutdown) and WATCHDOG_USEC (the scheduler thread feeds
the watchdog).

Signals: SIGTERM/SIGINT stop workers (they checkpoint) and exit; SIGHUP reopens --log-file.

Exit codes: 0 stopped cleanly; 1 the HTTP server failed; 2 bad command line or config file, or start-up
failed (port in use, database locked by another ratiod).
)";

// "FILE:LINE:COLUMN: key: message", as matrix errors are written (matrix/matrix.h).
UsageError located(const std::string& file, const YAML::Mark& mark, const std::string& key, const std::string& what) {
  std::string where = file;
  if (!mark.is_null()) where += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
  return UsageError(where + ": " + (key.empty() ? "" : key + ": ") + what);
}

// CLI11's message names the option ("--lease-s: ..."); in a config file the key already says it.
std::string without_flag_prefix(const std::string& message, const std::string& flag) {
  return message.rfind(flag + ": ", 0) == 0 ? message.substr(flag.size() + 2) : message;
}

// Sets every key of the config file that the command line did not give, through the flag's own
// conversion and checks, so a bad value fails as it would on the command line, located in the file.
void apply_config_file(CLI::App& app, const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw UsageError("--config: cannot read '" + path + "'");
  } catch (const YAML::ParserException& e) {
    throw located(path, e.mark, "", e.msg + "; fix the YAML syntax");
  }
  if (root.IsNull()) return;  // an empty file sets nothing
  if (!root.IsMap())
    throw located(path, root.Mark(), "", "expected keys and values, like `db: /var/lib/ratio/ratio.db`");
  std::set<std::string> seen;
  for (const auto& kv : root) {
    const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "";
    CLI::Option* option = kCommandLineOnly.count(key) ? nullptr : app.get_option_no_throw("--" + key);
    if (!option)
      throw located(path, kv.first.Mark(), key, "unknown key; the keys are ratiod's flags without -- (ratiod --help)");
    if (!seen.insert(key).second) throw located(path, kv.first.Mark(), key, "duplicate key; keep only one");
    if (option->count() > 0) continue;  // the command line wins

    const YAML::Node& value = kv.second;
    std::vector<std::string> values;
    if (value.IsScalar()) {
      values.push_back(value.Scalar());
    } else if (value.IsSequence() && option->get_expected_max() > 1) {
      for (const YAML::Node& item : value) {
        if (!item.IsScalar()) throw located(path, item.Mark(), key, "expected a plain value in the list");
        values.push_back(item.Scalar());
      }
    } else {
      throw located(path, value.Mark(), key,
                    option->get_expected_max() > 1 ? "expected a value or a list of values" : "expected one value");
    }
    try {
      for (const std::string& v : values) option->add_result(v);
      option->run_callback();
    } catch (const std::exception& e) {  // CLI11's conversion and checks, or our callbacks' UsageError
      throw located(path, value.Mark(), key, without_flag_prefix(e.what(), "--" + key));
    }
  }
}

// Derived defaults, checks across options, absolute paths: the same for flags and file.
void finish(Options& o, const std::string& exe_dir) {
  if (o.db_path.empty())
    throw UsageError("--db PATH is required (or `db: PATH` in the --config file); ratiod --help");
  if (!is_loopback(o.host) && o.token.empty()) {
    throw UsageError("listening on " + o.host +
                     " (beyond loopback) requires --token-file with a bearer token for mutating calls");
  }
  if (!o.report_url.empty() && o.report_url.rfind("http://", 0) != 0 && o.report_url.rfind("https://", 0) != 0) {
    throw UsageError("--report-url '" + o.report_url +
                     "' must be an http:// URL of this ratiod, e.g. http://head-node:8080");
  }
  for (std::string& path : o.allow_paths) path = fs::absolute(path).string();
  fs::path db_dir = fs::absolute(o.db_path).parent_path();
  if (o.workdir.empty()) o.workdir = (db_dir / "ratiod-work").string();
  o.workdir = fs::absolute(o.workdir).string();
  o.data_dir = fs::absolute(o.data_dir.empty() ? default_data_dir() : o.data_dir).string();
  if (o.worker_path.empty()) o.worker_path = (fs::path(exe_dir) / "ratio-worker").string();
  if (o.web_root.empty()) {
    // Installed (bin/ and share/ratio/web/ side by side), and in the build tree, which has the
    // same layout; the baked path serves a ratiod copied elsewhere from a build tree.
    const fs::path installed = fs::path(exe_dir).parent_path() / "share/ratio/web";
    o.web_root = fs::is_directory(installed) ? installed.string() : RATIO_DEFAULT_WEB_ROOT;
  }
}

}  // namespace

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

Invocation parse_command_line(const std::vector<std::string>& args, const std::string& exe_dir) {
  Invocation invocation;
  Options& o = invocation.options;
  CLI::App app("ratiod: the RATIO scheduler daemon. Stores ablation matrices in SQLite, runs their jobs as "
               "ratio-worker processes on GPU or CPU slots, and serves the HTTP API and the dashboard.",
               "ratiod");
  app.set_version_flag("--version", version_text("ratiod"), "print the version and build id, then exit");
  std::string config_path;
  app.add_option("--config", config_path, "read settings from this YAML file (keys: the flags below without --)")
      ->type_name("FILE");
  add_flags(app, o);
  app.footer(kFooter);
  app.allow_extras();  // unknown arguments are reported below, in our words
  try {
    std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 consumes argv from the back
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    invocation.text = app.help();
    return invocation;
  } catch (const CLI::CallForVersion&) {
    invocation.text = version_text("ratiod");
    return invocation;
  } catch (const CLI::ParseError& e) {
    throw UsageError(std::string(e.what()) + " (ratiod --help)");
  }
  if (const std::vector<std::string> extra = app.remaining(); !extra.empty()) {
    const std::string& first = extra.front();
    throw UsageError(first.rfind("-", 0) == 0 ? "unknown flag " + first + " (ratiod --help lists them)"
                                              : "unexpected argument '" + first + "'; ratiod takes only flags");
  }
  if (!config_path.empty()) apply_config_file(app, config_path);
  finish(o, exe_dir);
  return invocation;
}

std::vector<std::string> config_keys() {
  Options o;
  CLI::App app;
  add_flags(app, o);
  std::vector<std::string> keys;
  for (const CLI::Option* option : app.get_options()) {
    const std::string name = option->get_name();
    if (name.rfind("--", 0) == 0 && !kCommandLineOnly.count(name.substr(2))) keys.push_back(name.substr(2));
  }
  return keys;
}

}  // namespace ratio::daemon

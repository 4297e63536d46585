#include "daemon/options.h"

#include <filesystem>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace ratio::daemon {

namespace fs = std::filesystem;

namespace {

double parse_seconds(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    double s = std::stod(value, &used);
    if (used == value.size() && s > 0) return s;
  } catch (const std::exception&) {
    // reported below
  }
  throw std::invalid_argument(flag + " expects a positive number of seconds, got '" + value + "'");
}

void parse_listen(const std::string& value, Options& o) {
  size_t colon = value.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    throw std::invalid_argument("--listen expects HOST:PORT (e.g. 127.0.0.1:8080), got '" + value + "'");
  }
  o.host = value.substr(0, colon);
  std::string port = value.substr(colon + 1);
  try {
    size_t used = 0;
    o.port = std::stoi(port, &used);
    if (used != port.size() || o.port < 0 || o.port > 65535) throw std::out_of_range("port");
  } catch (const std::exception&) {
    throw std::invalid_argument("--listen: port must be 0..65535, got '" + port + "'");
  }
}

std::string read_token(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("--token-file: cannot read '" + path + "'");
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.size() < 16) {
    throw std::invalid_argument("--token-file '" + path + "': the token must be at least 16 characters on its first line");
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

}  // namespace

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

std::string usage() {
  return "usage: ratiod --db PATH [--listen HOST:PORT] [--slots auto|gpu:0,1|cpu:N] [--workdir DIR]\n"
         "              [--data-dir DIR] [--allow-path DIR]... [--worker PATH] [--token-file F] [--web-root DIR]\n"
         "              [--lease-s S] [--stall-s S] [--grace-s S] [--drain]\n"
         "              [--executor local|slurm] [--slurm-partition P] [--slurm-gres G|none] [--slurm-time T]\n"
         "              [--slurm-arg ARG]... [--report-url URL]\n";
}

Options parse_options(const std::vector<std::string>& args, const std::string& exe_dir) {
  Options o;
  std::string token_file;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& flag = args[i];
    if (flag == "--drain") {
      o.drain = true;
      continue;
    }
    if (i + 1 >= args.size()) throw std::invalid_argument("unknown flag or missing value: " + flag + "\n" + usage());
    const std::string& value = args[++i];
    if (flag == "--db") o.db_path = value;
    else if (flag == "--listen") parse_listen(value, o);
    else if (flag == "--slots") o.slots = value;
    else if (flag == "--workdir") o.workdir = value;
    else if (flag == "--data-dir") o.data_dir = value;
    else if (flag == "--allow-path") o.allow_paths.push_back(fs::absolute(value).string());
    else if (flag == "--worker") o.worker_path = value;
    else if (flag == "--token-file") token_file = value;
    else if (flag == "--web-root") o.web_root = value;
    else if (flag == "--lease-s") o.lease_s = parse_seconds(flag, value);
    else if (flag == "--stall-s") o.stall_s = parse_seconds(flag, value);
    else if (flag == "--grace-s") o.grace_s = parse_seconds(flag, value);
    else if (flag == "--executor") o.executor = value;
    else if (flag == "--slurm-partition") o.slurm_partition = value;
    else if (flag == "--slurm-gres") o.slurm_gres = value == "none" ? "" : value;
    else if (flag == "--slurm-time") o.slurm_time = value;
    else if (flag == "--slurm-arg") o.slurm_args.push_back(value);
    else if (flag == "--report-url") o.report_url = value;
    else throw std::invalid_argument("unknown flag " + flag + "\n" + usage());
  }
  if (o.db_path.empty()) throw std::invalid_argument("--db PATH is required\n" + usage());
  if (o.executor != "local" && o.executor != "slurm") {
    throw std::invalid_argument("--executor '" + o.executor + "': choose local (this machine's --slots) or slurm");
  }
  if (!o.report_url.empty() && o.report_url.rfind("http://", 0) != 0 && o.report_url.rfind("https://", 0) != 0) {
    throw std::invalid_argument("--report-url '" + o.report_url +
                                "' must be an http:// URL of this ratiod, e.g. http://head-node:8080");
  }
  if (!token_file.empty()) o.token = read_token(token_file);
  if (!is_loopback(o.host) && o.token.empty()) {
    throw std::invalid_argument("listening on " + o.host +
                                " (beyond loopback) requires --token-file with a bearer token for mutating calls");
  }
  fs::path db_dir = fs::absolute(o.db_path).parent_path();
  if (o.workdir.empty()) o.workdir = (db_dir / "ratiod-work").string();
  o.workdir = fs::absolute(o.workdir).string();
  o.data_dir = fs::absolute(o.data_dir.empty() ? default_data_dir() : o.data_dir).string();
  if (o.worker_path.empty()) o.worker_path = (fs::path(exe_dir) / "ratio-worker").string();
  if (o.web_root.empty()) {
    fs::path baked = RATIO_DEFAULT_WEB_ROOT;
    o.web_root = fs::is_directory(baked) ? baked.string() : (fs::path(exe_dir) / ".." / "share/ratio/web").string();
  }
  return o;
}

}  // namespace ratio::daemon

#include "cli/commands.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <ostream>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/client.h"
#include "cli/render.h"
#include "matrix/matrix.h"

namespace ratio::cli {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// A local failure (file unreadable, directory not writable): message plus exit code kLocalIo.
class LocalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LocalError("cannot read matrix file '" + path + "': " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw LocalError("cannot write '" + path.string() + "': " + std::strerror(errno));
}

// A job in one of these states will not change again unless rerun.
bool has_ended(const std::string& status) {
  return status == "succeeded" || status == "failed" || status == "cancelled";
}

void sleep_s(double seconds) { std::this_thread::sleep_for(std::chrono::duration<double>(seconds)); }

// ---- local commands ------------------------------------------------------------------------------

int cmd_expand(const Command& cmd, std::ostream& out) {
  if (!cmd.file.empty() && !fs::exists(cmd.file)) throw LocalError("matrix file '" + cmd.file + "' does not exist");
  const json expansion = to_json(cmd.preset.empty() ? expand_matrix_file(cmd.file) : expand_preset(cmd.preset));
  out << (cmd.format == "json" ? expansion.dump(2) + "\n" : render_expansion(expansion));
  return kOk;
}

int cmd_presets(std::ostream& out) {
  std::vector<std::vector<std::string>> cells;
  for (const PresetInfo& p : list_presets())
    cells.push_back({p.name, std::to_string(p.steps), std::to_string(p.jobs), p.description});
  out << format_table({"preset", "steps", "jobs", "description"}, cells, {false, true, true, false});
  return kOk;
}

// ---- watching --------------------------------------------------------------------------------------

// Width of the terminal on fd; 0 when unknown. Redraws clip to it (render.h, clip_lines).
int terminal_columns(int fd) {
  winsize size{};
  return ::ioctl(fd, TIOCGWINSZ, &size) == 0 ? size.ws_col : 0;
}

// Shows a matrix's jobs with the last train loss of the running ones, once (poll) or until every
// job has ended (run): redrawn in place on a terminal, one summary line per change otherwise.
class MatrixWatcher {
 public:
  MatrixWatcher(ApiClient& api, std::string matrix_id) : api_(api), id_(std::move(matrix_id)) {}

  // Fetches the matrix and renders its status; remembers whether every job has ended.
  std::string poll() {
    const json matrix = api_.get("/api/matrices/" + id_);
    update_losses(matrix.at("jobs"));
    all_done_ = true;
    any_bad_ = false;
    for (const json& job : matrix.at("jobs")) {
      const std::string status = job.value("status", "");
      all_done_ = all_done_ && has_ended(status);
      any_bad_ = any_bad_ || status == "failed" || status == "cancelled";
    }
    return render_matrix_status(matrix, last_loss_);
  }

  // tty_fd: the terminal `os` writes to, for in-place redraws; -1 when it is not a terminal.
  // Returns kJobsFailed when any job ended failed or cancelled.
  int run(std::ostream& os, int tty_fd, double interval_s) {
    const bool tty = tty_fd >= 0;
    os << "watching matrix " << id_ << " on " << api_.server() << " (Ctrl-C stops watching; jobs keep running)\n";
    int drawn_lines = 0;
    std::string last_summary;
    while (true) {
      std::string view = poll();
      if (tty) {
        view = clip_lines(view, terminal_columns(tty_fd));
        if (drawn_lines > 0) os << "\033[" << drawn_lines << "F\033[J";  // back to the first line, clear below
        os << view << std::flush;
        drawn_lines = static_cast<int>(std::count(view.begin(), view.end(), '\n'));
      } else if (const std::string summary = view.substr(0, view.find('\n')); summary != last_summary) {
        os << summary << '\n' << std::flush;  // counts per status
        last_summary = summary;
      }
      if (all_done_) {
        if (!tty) os << view.substr(view.find('\n') + 1);  // the table below the summary just printed
        return any_bad_ ? kJobsFailed : kOk;
      }
      sleep_s(interval_s);
    }
  }

 private:
  // The newest train_loss of each job, fetched incrementally with ?after=: every poll while a job
  // runs, and once more after it has ended, so the final table shows each job's last value rather
  // than the last one seen while it ran.
  void update_losses(const json& jobs) {
    for (const json& job : jobs) {
      const int64_t id = job.at("id").get<int64_t>();
      const std::string status = job.value("status", "");
      const json iter = job.value("iter", json());
      const bool started = iter.is_number() && iter.get<int64_t>() > 0;
      const bool ended = has_ended(status);
      if (!ended) read_after_end_.erase(id);  // requeued by a rerun: it will end again
      const bool fetch = status == "running" || (ended && started && read_after_end_.insert(id).second);
      if (!fetch) continue;
      const std::string path =
          "/api/jobs/" + std::to_string(id) + "/metrics?names=train_loss&after=" + std::to_string(after_[id]);
      const json metrics = api_.get(path);
      if (!metrics.contains("series") || !metrics["series"].contains("train_loss")) continue;
      const json& points = metrics["series"]["train_loss"];
      if (points.empty()) continue;
      after_[id] = points.back().at(0).get<int64_t>();
      last_loss_[id] = points.back().at(1).get<double>();
    }
  }

  ApiClient& api_;
  std::string id_;
  std::map<int64_t, int64_t> after_;
  std::map<int64_t, double> last_loss_;
  std::set<int64_t> read_after_end_;  // ended jobs whose final train_loss was fetched
  bool all_done_ = false;
  bool any_bad_ = false;
};

// ---- daemon commands ---------------------------------------------------------------------------

int cmd_submit(const Command& cmd, ApiClient& api, std::ostream& out, std::ostream& err, bool err_is_tty) {
  // Expand locally first: a bad file fails here with file:line:column, before anything is queued.
  const std::string text = cmd.preset.empty() ? read_file(cmd.file) : preset_text(cmd.preset);
  const std::string source = cmd.preset.empty() ? cmd.file : "preset " + cmd.preset;
  expand_matrix(text, source);
  const bool is_json = cmd.file.size() > 5 && cmd.file.compare(cmd.file.size() - 5, 5, ".json") == 0;

  const json answer = api.post_text(std::string("/api/matrices") + (cmd.force ? "?force=1" : ""), text,
                                    is_json ? "application/json" : "application/yaml");
  const std::string id = answer.at("id").dump();
  int reused = 0;
  for (const json& job : answer.value("jobs", json::array()))
    if (job.contains("reused_from") && !job["reused_from"].is_null()) ++reused;
  err << "submitted matrix " << answer.value("name", "") << " as id " << id << ": "
      << answer.value("jobs", json::array()).size() << " jobs";
  if (reused) err << " (" << reused << " reuse cached results; --force reruns them)";
  err << "\n";
  for (const json& warning : answer.value("warnings", json::array()))
    err << "warning: " << (warning.is_object() ? warning.value("message", warning.dump()) : warning.dump()) << '\n';

  int code = kOk;
  if (cmd.watch) code = MatrixWatcher(api, id).run(err, err_is_tty ? STDERR_FILENO : -1, cmd.interval_s);
  out << id << '\n';
  return code;
}

int cmd_status(const Command& cmd, ApiClient& api, std::ostream& out, bool out_is_tty) {
  if (cmd.matrix.empty()) {
    out << render_matrix_list(api.get("/api/matrices"));
    return kOk;
  }
  if (cmd.watch) return MatrixWatcher(api, cmd.matrix).run(out, out_is_tty ? STDOUT_FILENO : -1, cmd.interval_s);
  out << MatrixWatcher(api, cmd.matrix).poll();
  return kOk;
}

int cmd_results(const Command& cmd, ApiClient& api, std::ostream& out) {
  const json results = api.get("/api/matrices/" + cmd.matrix + "/results");
  if (cmd.format == "json")
    out << results.dump(2) << '\n';
  else if (cmd.format == "csv")
    out << render_results_csv(results);
  else
    out << render_results_table(results);
  return kOk;
}

void print_ids(std::ostream& out, const char* what, const json& ids) {
  out << what << ' ' << ids.size() << " job(s)";
  for (const json& id : ids) out << ' ' << id.dump();
  out << '\n';
}

int cmd_rerun(const Command& cmd, ApiClient& api, std::ostream& out) {
  json answer;
  if (!cmd.job.empty()) {
    answer = api.post_json("/api/jobs/" + cmd.job + "/rerun", json::object());
  } else {
    const json statuses = cmd.failed_only ? json::array({"failed"}) : json::array({"failed", "cancelled"});
    answer = api.post_json("/api/matrices/" + cmd.matrix + "/rerun", {{"status", statuses}});
  }
  print_ids(out, "requeued", answer.value("requeued", json::array()));
  return kOk;
}

int cmd_cancel(const Command& cmd, ApiClient& api, std::ostream& out) {
  json cancelled = json::array();
  if (!cmd.job.empty()) {
    cancelled.push_back(api.post_json("/api/jobs/" + cmd.job + "/cancel", json::object()).value("cancelled", json()));
  } else {
    for (const json& job : api.get("/api/jobs?matrix=" + cmd.matrix).at("jobs")) {
      const std::string status = job.value("status", "");
      if (status != "queued" && status != "running") continue;
      const std::string id = job.at("id").dump();
      cancelled.push_back(api.post_json("/api/jobs/" + id + "/cancel", json::object()).value("cancelled", json()));
    }
  }
  print_ids(out, "cancelled", cancelled);
  return kOk;
}

int cmd_logs(const Command& cmd, ApiClient& api, std::ostream& out) {
  const std::string log_path = "/api/jobs/" + cmd.job + "/log?tail=";
  if (!cmd.follow) {
    out << api.get_text(log_path + std::to_string(cmd.tail)) << std::flush;
    return kOk;
  }
  // Follow: print the last --tail lines, then whatever the log grows by. The log is the current
  // attempt's, so when it gets shorter a new attempt started; it is then printed whole after a marker.
  out << api.get_text(log_path + std::to_string(cmd.tail)) << std::flush;
  std::string full = api.get_text(log_path + "100000000");
  size_t printed = full.size();
  while (true) {
    const std::string status = api.get("/api/jobs/" + cmd.job).at("job").value("status", "");
    full = api.get_text(log_path + "100000000");
    if (full.size() < printed) {
      out << "--- a new attempt started ---\n";
      printed = 0;
    }
    out << full.substr(printed) << std::flush;
    printed = full.size();
    if (has_ended(status)) {
      out << "--- job " << cmd.job << " " << status << " ---\n";
      return kOk;
    }
    sleep_s(cmd.interval_s);
  }
}

// Step ids may hold '/', '=' or spaces ("2/mlp_ratio=3"): keep file names portable.
std::string file_safe(const std::string& name) {
  std::string safe;
  for (char c : name)
    safe += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_') ? c : '_';
  return safe.empty() ? "_" : safe;
}

std::string timestamp_now() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y%m%d_%H%M%S", &local);
  return buffer;
}

int cmd_export(const Command& cmd, ApiClient& api, std::ostream& out) {
  const json results = api.get("/api/matrices/" + cmd.matrix + "/results");
  const json matrix = api.get("/api/matrices/" + cmd.matrix);
  const std::string name = matrix.at("matrix").value("name", "matrix");
  const fs::path dir = fs::path(cmd.dir) / (file_safe(name) + "_results_" + timestamp_now());
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw LocalError("cannot create '" + dir.string() + "': " + ec.message());

  for (const json& row : results.at("rows")) {
    json jobs = json::array();
    for (const json& summary : matrix.at("jobs")) {
      if (summary.value("step", "") != row.value("step", "")) continue;
      const std::string id = summary.at("id").dump();
      json detail = api.get("/api/jobs/" + id);
      detail["metrics"] = api.get("/api/jobs/" + id + "/metrics?names=train_loss,val_loss&max_points=1000")
                              .value("series", json::object());
      jobs.push_back(detail);
    }
    const json step_file = {{"matrix", results.value("matrix", json::object())}, {"row", row}, {"jobs", jobs}};
    write_file(dir / ("step_" + file_safe(row.value("step", "")) + ".json"), step_file.dump(2) + "\n");
  }
  write_file(dir / "summary.json", results.dump(2) + "\n");
  write_file(dir / "summary.csv", render_results_csv(results));
  write_file(dir / "summary.txt", render_results_table(results));
  if (matrix.at("matrix").contains("yaml") && matrix["matrix"]["yaml"].is_string())
    write_file(dir / "matrix.yaml", matrix["matrix"]["yaml"].get<std::string>());
  out << dir.string() << '\n';
  return kOk;
}

int dispatch(const Command& cmd, std::ostream& out, std::ostream& err, bool out_is_tty, bool err_is_tty) {
  if (cmd.name == "help" || cmd.name == "version") {
    out << cmd.text;
    return kOk;
  }
  if (cmd.name == "expand") return cmd_expand(cmd, out);
  if (cmd.name == "presets") return cmd_presets(out);
  ApiClient api(cmd.server, cmd.token);
  if (cmd.name == "submit") return cmd_submit(cmd, api, out, err, err_is_tty);
  if (cmd.name == "status") return cmd_status(cmd, api, out, out_is_tty);
  if (cmd.name == "results") return cmd_results(cmd, api, out);
  if (cmd.name == "rerun") return cmd_rerun(cmd, api, out);
  if (cmd.name == "cancel") return cmd_cancel(cmd, api, out);
  if (cmd.name == "logs") return cmd_logs(cmd, api, out);
  return cmd_export(cmd, api, out);
}

}  // namespace

int run(const Command& cmd, std::ostream& out, std::ostream& err, bool out_is_tty, bool err_is_tty) {
  try {
    return dispatch(cmd, out, err, out_is_tty, err_is_tty);
  } catch (const ApiError& e) {
    err << "ratio: " << e.what() << '\n';
    return e.exit_code();
  } catch (const MatrixError& e) {
    for (const MatrixProblem& problem : e.problems()) err << "ratio: " << problem.to_string() << '\n';
    return kInvalidMatrix;
  } catch (const std::invalid_argument& e) {  // unknown preset: the message lists the known ones
    err << "ratio: " << e.what() << '\n';
    return kInvalidMatrix;
  } catch (const LocalError& e) {
    err << "ratio: " << e.what() << '\n';
    return kLocalIo;
  } catch (const json::exception& e) {
    err << "ratio: unexpected answer from ratiod (" << e.what() << "); are the CLI and daemon the same build?\n";
    return kServerError;
  }
}

}  // namespace ratio::cli

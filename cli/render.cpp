#include "cli/render.h"

#include <cmath>
#include <cstdio>
#include <ctime>
#include <sstream>

#include <nlohmann/json.hpp>

namespace ratio::cli {
namespace {

using nlohmann::json;

// Display width of UTF-8 text: code points, not bytes (names may hold "α" or "Δ").
size_t display_width(const std::string& s) {
  size_t width = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++width;
  return width;
}

std::string fmt(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

// A number field of an API object, or "-" when null or absent.
std::string num(const json& obj, const char* key, const char* format) {
  if (!obj.contains(key) || !obj[key].is_number()) return "-";
  return fmt(format, obj[key].get<double>());
}

std::string str(const json& obj, const char* key) {
  if (!obj.contains(key) || obj[key].is_null()) return "-";
  if (obj[key].is_string()) return obj[key].get<std::string>();
  return obj[key].dump();
}

// Failure reasons can be long; the status view is for watching, `ratio results` shows them whole.
constexpr size_t kMaxReasonChars = 60;

// API times are unix seconds (numbers) or already formatted strings.
std::string time_of(const json& obj, const char* key) {
  if (!obj.contains(key) || !obj[key].is_number()) return str(obj, key);
  const std::time_t t = static_cast<std::time_t>(obj[key].get<double>());
  std::tm local{};
  localtime_r(&t, &local);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%d %H:%M", &local);
  return buffer;
}

int64_t int_of(const json& obj, const char* key) {
  return obj.contains(key) && obj[key].is_number() ? obj[key].get<int64_t>() : 0;
}

// "3.5740 ± 0.0120" with seeds, else the mean alone.
std::string loss_with_std(const json& row) {
  std::string text = num(row, "final_val_loss", "%.4f");
  if (row.contains("val_loss_std") && row["val_loss_std"].is_number())
    text += " ± " + fmt("%.4f", row["val_loss_std"].get<double>());
  return text;
}

// "0.213 (12)": mean of the final mixing alphas and how many there are.
std::string alphas_summary(const json& row) {
  if (!row.contains("alphas") || !row["alphas"].is_object() || row["alphas"].empty()) return "-";
  double sum = 0.0;
  for (const auto& entry : row["alphas"].items()) sum += entry.value().get<double>();
  return fmt("%.3f", sum / static_cast<double>(row["alphas"].size())) + " (" + std::to_string(row["alphas"].size()) +
         ")";
}

std::string verdict_cell(const json& row) {
  std::string verdict = str(row, "verdict");
  if (row.contains("dead_params") && row["dead_params"].is_array() && !row["dead_params"].empty()) verdict += " !grad";
  return verdict;
}

}  // namespace

std::string human_count(int64_t n) {
  const double a = std::abs(static_cast<double>(n));
  if (a >= 1e6) return fmt("%.2fM", static_cast<double>(n) / 1e6);
  if (a >= 1e4) return fmt("%.1fK", static_cast<double>(n) / 1e3);
  return std::to_string(n);
}

std::string clip_lines(const std::string& text, int columns) {
  if (columns <= 1) return text;
  std::string clipped;
  int column = 0;
  for (char c : text) {
    if (c == '\n') {
      column = 0;
      clipped += c;
      continue;
    }
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++column;  // a code point starts
    if (column < columns) clipped += c;
  }
  return clipped;
}

std::string format_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                         const std::vector<bool>& right_aligned) {
  std::vector<size_t> widths(header.size(), 0);
  auto measure = [&](const std::vector<std::string>& cells) {
    for (size_t c = 0; c < cells.size() && c < widths.size(); ++c)
      widths[c] = std::max(widths[c], display_width(cells[c]));
  };
  measure(header);
  for (const auto& row : rows) measure(row);

  std::ostringstream out;
  auto emit = [&](const std::vector<std::string>& cells) {
    std::string line;
    for (size_t c = 0; c < widths.size(); ++c) {
      const std::string cell = c < cells.size() ? cells[c] : "";
      const std::string pad(widths[c] - display_width(cell), ' ');
      const bool right = c < right_aligned.size() && right_aligned[c];
      line += right ? pad + cell : cell + pad;
      if (c + 1 < widths.size()) line += "  ";
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << '\n';
  };
  emit(header);
  std::vector<std::string> rule;
  for (size_t w : widths) rule.push_back(std::string(w, '-'));
  emit(rule);
  for (const auto& row : rows) emit(row);
  return out.str();
}

std::string csv_cell(const std::string& cell) {
  if (cell.find_first_of(",\"\r\n") == std::string::npos) return cell;
  std::string quoted = "\"";
  for (char c : cell) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

// `decide` matrices: "better [-0.052, -0.031]", "open [-0.09, +0.04]"; "-" for the baseline.
std::string decision_cell(const json& row) {
  if (!row.contains("decision") || !row["decision"].is_object()) return "-";
  const json& d = row["decision"];
  std::string cell = str(d, "outcome");
  if (d.contains("lower") && d["lower"].is_number())
    cell += " [" + fmt("%+.4f", d["lower"].get<double>()) + ", " + fmt("%+.4f", d["upper"].get<double>()) + "]";
  return cell;
}

// "decide: max_seeds 8, confidence 0.95, min_effect 0.01; 2 steps open, at most 1.4 GPU-hours to go"
std::string decide_line(const json& decide) {
  std::string line = "decide: max_seeds " + str(decide, "max_seeds") + ", confidence " +
                     num(decide, "confidence", "%.4g") + ", min_effect " + num(decide, "min_effect", "%.4g") + "; ";
  const int64_t open = int_of(decide, "open_steps");
  if (open == 0) return line + "every step decided\n";
  line += std::to_string(open) + (open == 1 ? " step open" : " steps open");
  if (decide.contains("gpu_seconds_left_at_most") && decide["gpu_seconds_left_at_most"].is_number())
    line += ", at most " + fmt("%.2f", decide["gpu_seconds_left_at_most"].get<double>() / 3600.0) + " GPU-hours to go";
  return line + "\n";
}

std::string render_results_table(const json& results) {
  const json& rows = results.at("rows");
  const bool deciding = results.contains("decide") && results["decide"].is_object();
  std::vector<std::vector<std::string>> cells;
  for (const json& row : rows) {
    cells.push_back({str(row, "step"), str(row, "name"), str(row, "status"), loss_with_std(row),
                     num(row, "best_val_loss", "%.4f"), num(row, "delta", "%+.4f"), num(row, "delta_pct", "%+.2f%%"),
                     human_count(int_of(row, "params_total")), human_count(int_of(row, "params_added")),
                     num(row, "efficiency", "%.4g"), num(row, "tokens_per_s", "%.0f"), str(row, "seeds"),
                     alphas_summary(row), verdict_cell(row)});
    if (deciding) cells.back().insert(cells.back().end() - 1, decision_cell(row));
  }
  std::ostringstream out;
  const json& matrix = results.contains("matrix") ? results["matrix"] : json::object();
  out << "matrix " << str(matrix, "id") << " (" << str(matrix, "name") << "), baseline step "
      << str(results, "baseline_step");
  if (results.contains("plain_scaling") && results["plain_scaling"].is_object()) {
    const json& plain = results["plain_scaling"];
    out << ", plain scaling step " << str(plain, "step");
    if (plain.contains("efficiency") && plain["efficiency"].is_number())
      out << " (efficiency " << num(plain, "efficiency", "%.4g") << ")";
    else
      out << " (its gain is within noise: no efficiency yardstick)";
  }
  out << "\n";
  if (deciding) out << decide_line(results["decide"]);
  out << "\n";
  std::vector<std::string> header = {"step", "name",  "status", "val_loss", "best",  "delta", "delta%",
                                     "params", "added", "eff/M",  "tok/s",    "seeds", "alpha", "verdict"};
  std::vector<bool> right = {false, false, false, true, true, true, true, true, true, true, true, true, true, false};
  if (deciding) {
    header.insert(header.end() - 1, "decision [interval]");
    right.insert(right.end() - 1, false);
  }
  out << format_table(header, cells, right);
  out << '\n';
  for (const json& row : rows) {
    const std::string reason = str(row, "verdict_reason");
    if (reason == "-" || reason.empty()) continue;
    std::string label = str(row, "verdict");
    if (label == "-") label = str(row, "status") == "failed" ? "failed" : "pending";
    out << "step " << str(row, "step") << ": " << label << ": " << reason << '\n';
    if (row.contains("dead_params") && row["dead_params"].is_array() && !row["dead_params"].empty()) {
      out << "  no gradient:";
      for (const json& name : row["dead_params"]) out << ' ' << name.get<std::string>();
      out << '\n';
    }
    if (row.contains("decision") && row["decision"].is_object())
      for (const json& added : row["decision"].value("history", json::array()))
        out << "  job " << str(added, "job_id") << ": " << str(added, "reason") << '\n';
  }
  return out.str();
}

std::string render_results_csv(const json& results) {
  const std::vector<std::string> columns = {
      "job_id",       "step",    "name",           "status",       "final_val_loss", "best_val_loss", "val_loss_std",
      "seeds",        "delta",   "delta_pct",      "within_noise", "params_total",   "params_added",  "efficiency",
      "tokens_per_s", "verdict", "verdict_reason", "alphas",       "dead_params",    "decision",      "decision_lower",
      "decision_upper"};
  std::ostringstream out;
  for (size_t c = 0; c < columns.size(); ++c) out << (c ? "," : "") << columns[c];
  out << '\n';
  for (const json& row : results.at("rows")) {
    for (size_t c = 0; c < columns.size(); ++c) {
      const std::string& key = columns[c];
      std::string cell;
      json value = row.contains(key) ? row[key] : json(nullptr);
      if (key.rfind("decision", 0) == 0) {  // the decision object's outcome, lower and upper
        const json& d = row.contains("decision") ? row["decision"] : json(nullptr);
        const std::string field = key == "decision" ? "outcome" : key.substr(9);
        value = d.is_object() && d.contains(field) ? d[field] : json(nullptr);
      }
      if (key == "alphas" && value.is_object()) {
        for (const auto& entry : value.items())
          cell += (cell.empty() ? "" : ";") + entry.key() + "=" + fmt("%.6g", entry.value().get<double>());
      } else if (key == "dead_params" && value.is_array()) {
        for (const json& name : value) cell += (cell.empty() ? "" : ";") + name.get<std::string>();
      } else if (value.is_string()) {
        cell = value.get<std::string>();
      } else if (value.is_number_float()) {
        cell = fmt("%.6g", value.get<double>());
      } else if (!value.is_null()) {
        cell = value.dump();
      }
      out << (c ? "," : "") << csv_cell(cell);
    }
    out << '\n';
  }
  return out.str();
}

std::string render_matrix_status(const json& matrix, const std::map<int64_t, double>& last_loss) {
  const json& info = matrix.at("matrix");
  const json& jobs = matrix.at("jobs");
  std::map<std::string, int> counts;
  std::vector<std::vector<std::string>> cells;
  for (const json& job : jobs) {
    const std::string status = str(job, "status");
    ++counts[status];
    const int64_t id = int_of(job, "id");
    const auto loss = last_loss.find(id);
    std::string progress = num(job, "iter", "%.0f") + "/" + num(job, "max_iters", "%.0f");
    std::string note = status == "failed" ? str(job, "reason") : "";
    if (note == "-") note = "";
    if (note.size() > kMaxReasonChars) note = note.substr(0, kMaxReasonChars - 3) + "...";
    cells.push_back({std::to_string(id), str(job, "step"), str(job, "name"), status, progress,
                     loss == last_loss.end() ? "-" : fmt("%.4f", loss->second), num(job, "final_val_loss", "%.4f"),
                     str(job, "attempts"), note});
  }
  std::ostringstream out;
  out << "matrix " << str(info, "id") << " (" << str(info, "name") << "): " << jobs.size() << " jobs";
  for (const char* status : {"succeeded", "running", "queued", "failed", "cancelled"})
    if (counts[status]) out << ", " << counts[status] << ' ' << status;
  out << '\n';
  out << format_table({"job", "step", "name", "status", "iter", "train_loss", "val_loss", "attempts", "reason"}, cells,
                      {true, false, false, false, true, true, true, true, false});
  return out.str();
}

std::string render_matrix_list(const json& matrices) {
  std::vector<std::vector<std::string>> cells;
  for (const json& m : matrices.at("matrices")) {
    const json counts = m.contains("counts") ? m["counts"] : json::object();
    std::string builds = "-";
    if (m.contains("build_ids") && m["build_ids"].is_array()) {
      builds = std::to_string(m["build_ids"].size());
      if (m["build_ids"].size() > 1) builds += " (mixed!)";
    }
    cells.push_back({str(m, "id"), str(m, "name"), time_of(m, "created_at"), str(m, "total"), str(counts, "succeeded"),
                     str(counts, "running"), str(counts, "queued"), str(counts, "failed"), str(counts, "cancelled"),
                     builds});
  }
  if (cells.empty()) return "no matrices yet; submit one with `ratio submit FILE` or `ratio submit --preset demo`\n";
  return format_table({"id", "name", "created", "jobs", "done", "running", "queued", "failed", "cancelled", "builds"},
                      cells, {true, false, false, true, true, true, true, true, true, false});
}

std::string render_expansion(const json& expansion) {
  const json& matrix = expansion.at("matrix");
  std::vector<std::vector<std::string>> cells;
  for (const json& job : expansion.at("jobs")) {
    const json& params = job.at("params");
    const json& tags = job.at("config").contains("tags") ? job["config"]["tags"] : json::array();
    std::string tag_text;
    for (const json& tag : tags) tag_text += (tag_text.empty() ? "" : " ") + tag.get<std::string>();
    cells.push_back({str(job, "step"), str(job, "name"), human_count(int_of(params, "total")),
                     human_count(int_of(params, "added")), str(job, "config_hash"), tag_text});
  }
  std::ostringstream out;
  out << "matrix " << str(matrix, "name") << ": " << cells.size() << " jobs\n";
  out << format_table({"step", "name", "params", "added", "config_hash", "tags"}, cells,
                      {false, false, true, true, false, false});
  for (const json& warning : expansion.at("warnings")) {
    std::string steps;
    for (const json& s : warning.at("steps")) steps += (steps.empty() ? "" : ",") + s.get<std::string>();
    out << "warning [" << str(warning, "rule") << "] steps " << steps << ": " << str(warning, "message") << '\n';
  }
  return out.str();
}

}  // namespace ratio::cli

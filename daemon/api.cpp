#include "daemon/api.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "daemon/seeding.h"
#include "daemon/verdict.h"
#include "matrix/matrix.h"
#include "ratio/build_info.h"

namespace ratio::daemon {

using nlohmann::json;
using httplib::Request;
using httplib::Response;

namespace {

constexpr double kSseKeepAliveSeconds = 15;
const char* kVersion = "1";

// Error texts quote what the client sent (query values, paths, matrix text), which may be any
// bytes: invalid UTF-8 is written as U+FFFD so every answer is valid JSON and dump() never throws.
std::string json_text(const json& body) { return body.dump(-1, ' ', false, json::error_handler_t::replace); }

void reply(Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(json_text(body), "application/json");
}

void error(Response& res, int status, const std::string& message) { reply(res, status, {{"error", message}}); }

// A request that cannot be served, with the status to answer; thrown by the parsing helpers below
// and answered by the guard in install_routes.
struct HttpError : std::runtime_error {
  int status;
  HttpError(int code, const std::string& message) : std::runtime_error(message), status(code) {}
};

// The numeric id the route matched. The route's (\d+) admits any digits; an id beyond int64 names
// nothing that can exist, so it is a 404 like any other unknown id.
int64_t path_id(const Request& req) {
  const std::string digits = req.matches[1].str();
  try {
    return std::stoll(digits);
  } catch (const std::out_of_range&) {
    throw HttpError(404, req.path + ": no such resource (the id is beyond the largest possible id)");
  }
}

// Integer query parameter with a default; a value that is not an integer is a 400 naming it.
int64_t query_int(const Request& req, const char* name, int64_t fallback) {
  if (!req.has_param(name)) return fallback;
  std::string value = req.get_param_value(name);
  try {
    size_t used = 0;
    int64_t v = std::stoll(value, &used);
    if (used == value.size()) return v;
  } catch (const std::exception&) {
    // reported below
  }
  throw HttpError(400, std::string("query parameter '") + name + "' must be an integer (64-bit), got '" + value + "'");
}

// ?limit= of a keyset-paged list (/api/jobs, /api/matrices); none: the whole list.
std::optional<int64_t> page_limit(const Request& req) {
  if (!req.has_param("limit")) return std::nullopt;
  const int64_t limit = query_int(req, "limit", 0);
  if (limit < 1 || limit > 10000) throw HttpError(400, "limit must be between 1 and 10000; page with after_id");
  return limit;
}

// Drops the one row fetched past the page; returns the next page's after_id (null on the last page).
json cut_to_page(json& rows, std::optional<int64_t> limit) {
  if (!limit || static_cast<int64_t>(rows.size()) <= *limit) return nullptr;
  rows.erase(rows.end() - 1);
  return rows.back()["id"];
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, sep)) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// The last `lines` lines of a file, reading at most the final 4 MiB.
std::string tail_file(const std::string& path, int64_t lines) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  std::streamoff size = in.tellg();
  std::streamoff start = std::max<std::streamoff>(0, size - (4 << 20));
  in.seekg(start);
  std::string text(static_cast<size_t>(size - start), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  size_t pos = text.size();
  if (pos > 0 && text[pos - 1] == '\n') --pos;
  for (int64_t n = 0; n < lines && pos != std::string::npos && pos > 0; ++n) {
    pos = text.rfind('\n', pos - 1);
  }
  return pos == std::string::npos || pos == 0 ? text : text.substr(pos + 1);
}

bool constant_time_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string bearer(const Request& req) {
  std::string auth = req.get_header_value("Authorization");
  const std::string prefix = "Bearer ";
  return auth.rfind(prefix, 0) == 0 ? auth.substr(prefix.size()) : "";
}

// Expands a submitted matrix; on a bad matrix answers 400 with its location and returns nullopt.
std::optional<Expansion> expand_or_400(const Request& req, Response& res, ApiContext& ctx) {
  if (req.body.find_first_not_of(" \t\r\n") == std::string::npos) {
    ++ctx.rejected_bodies;
    reply(res, 400, {{"error", "empty body: send a matrix as YAML or JSON (see docs/matrix.md)"},
                     {"line", 0}, {"column", 0}, {"path", ""}});
    return std::nullopt;
  }
  try {
    const PathRoots roots = make_path_roots(ctx.options.data_dir, ctx.options.allow_paths);
    return expand_matrix(req.body, "request", &roots);
  } catch (const MatrixError& e) {
    ++ctx.rejected_bodies;
    reply(res, 400, to_json(e));
  } catch (const std::exception& e) {
    ++ctx.rejected_bodies;
    reply(res, 400, {{"error", std::string("invalid matrix: ") + e.what()}, {"line", 0}, {"column", 0}, {"path", ""}});
  }
  return std::nullopt;
}

db::NewMatrix new_matrix(const Request& req, const Expansion& expansion) {
  db::NewMatrix m = new_matrix_of(to_json(expansion), req.body);
  m.force = req.get_param_value("force") == "1";
  if (req.has_header("Idempotency-Key")) m.idempotency_key = req.get_header_value("Idempotency-Key");
  return m;
}

// What verdict.h needs about each job of a matrix: the fixed part from the cache, the rest in three
// indexed queries (job states with results, last alphas, last gradient norms) whatever the matrix size.
std::vector<JobOutcome> job_outcomes(db::Store& store, int64_t matrix_id, FixedJobCache& cache) {
  const std::vector<db::JobState> states = store.matrix_job_states(matrix_id);
  const auto load = [&] { return store.matrix_job_specs(matrix_id); };
  FixedJobCache::Jobs fixed = cache.get(matrix_id, load);
  const auto same_jobs = [&] {
    if (fixed->size() != states.size()) return false;
    for (size_t i = 0; i < states.size(); ++i) {
      if ((*fixed)[i].id != states[i].id) return false;
    }
    return true;
  };
  if (!same_jobs()) {  // jobs were added since the specs were cached
    cache.forget(matrix_id);
    fixed = cache.get(matrix_id, load);
  }
  // A job added between the two reads shows in the specs, not the states: pairing by id skips it.
  auto alphas = store.matrix_last_values(matrix_id, "alpha/");
  auto grad_norms = store.matrix_last_values(matrix_id, "grad/");
  std::vector<JobOutcome> outcomes;
  outcomes.reserve(states.size());
  size_t next_fixed = 0;  // both lists are in job id order
  for (const db::JobState& state : states) {
    while (next_fixed < fixed->size() && (*fixed)[next_fixed].id < state.id) ++next_fixed;
    if (next_fixed == fixed->size() || (*fixed)[next_fixed].id != state.id) {
      throw std::logic_error("job " + std::to_string(state.id) + " has no spec in matrix " + std::to_string(matrix_id));
    }
    const FixedJob& job = (*fixed)[next_fixed];
    JobOutcome o;
    o.job_id = job.id;
    o.spec = job.spec;
    o.status = state.status;
    o.reason = state.reason;
    o.final_val_loss = state.final_val_loss;
    o.best_val_loss = state.best_val_loss;
    o.tokens_per_s = state.tokens_per_s;
    o.params_total = job.params_total;
    o.params_added = job.params_added;
    o.alphas = std::move(alphas[job.id]);
    o.grad_norms = std::move(grad_norms[job.id]);
    outcomes.push_back(std::move(o));
  }
  return outcomes;
}

std::string prometheus_text(ApiContext& ctx) {
  auto [jobs, attempts, applied, stale] = ctx.reader.run([](db::Store& s) {
    return std::make_tuple(s.job_counts_by_status(), s.attempt_counts_by_status(), s.event_count(true),
                           s.event_count(false));
  });
  std::ostringstream out;
  out << "# HELP ratio_jobs Jobs by status.\n# TYPE ratio_jobs gauge\n";
  for (auto it = jobs.begin(); it != jobs.end(); ++it) {
    out << "ratio_jobs{status=\"" << it.key() << "\"} " << it.value().get<int64_t>() << "\n";
  }
  out << "# HELP ratio_attempts Attempts by status.\n# TYPE ratio_attempts gauge\n";
  for (auto it = attempts.begin(); it != attempts.end(); ++it) {
    out << "ratio_attempts{status=\"" << it.key() << "\"} " << it.value().get<int64_t>() << "\n";
  }
  out << "# HELP ratio_events_total Worker events stored.\n# TYPE ratio_events_total counter\n"
      << "ratio_events_total{applied=\"true\"} " << applied << "\n"
      << "ratio_events_total{applied=\"false\"} " << stale << "\n"
      << "# HELP ratio_reports_total POST /api/report batches.\n# TYPE ratio_reports_total counter\n"
      << "ratio_reports_total{answer=\"accepted\"} " << ctx.reports.load() << "\n"
      << "ratio_reports_total{answer=\"stale\"} " << ctx.stale_reports.load() << "\n"
      << "# HELP ratio_rejected_bodies_total Requests answered 400.\n# TYPE ratio_rejected_bodies_total counter\n"
      << "ratio_rejected_bodies_total " << ctx.rejected_bodies.load() << "\n"
      << "# HELP ratio_internal_errors_total Requests answered 500 (each logged with its request id).\n"
      << "# TYPE ratio_internal_errors_total counter\n"
      << "ratio_internal_errors_total " << ctx.internal_errors.load() << "\n"
      << "# HELP ratio_sse_subscribers Open /api/events streams.\n# TYPE ratio_sse_subscribers gauge\n"
      << "ratio_sse_subscribers " << ctx.bus.subscribers() << "\n"
      << "# HELP ratio_draining 1 while the daemon starts no new jobs.\n# TYPE ratio_draining gauge\n"
      << "ratio_draining " << (ctx.scheduler.draining() ? 1 : 0) << "\n";
  return out.str();
}

void install_matrix_routes(httplib::Server& server, ApiContext& ctx) {
  server.Post("/api/expand", [&ctx](const Request& req, Response& res) {
    if (auto expansion = expand_or_400(req, res, ctx)) reply(res, 200, to_json(*expansion));
  });

  server.Post("/api/matrices", [&ctx](const Request& req, Response& res) {
    auto expansion = expand_or_400(req, res, ctx);
    if (!expansion) return;
    db::NewMatrix m = new_matrix(req, *expansion);
    auto [created, jobs] = ctx.writer.run([&](db::Store& s) {
      // One change: a `decide` matrix whose seeds all reuse finished results needs its next seeds
      // now, since no attempt of it will end to ask for them.
      db::Transaction tx(s.connection());
      db::CreatedMatrix c = s.create_matrix(m);
      if (!c.existed) add_decided_seeds(s, c.id);
      tx.commit();
      return std::make_pair(c, s.list_jobs(c.id, ""));
    });
    json job_list = json::array();
    for (const json& job : jobs) {
      job_list.push_back({{"id", job["id"]}, {"step", job["step"]}, {"name", job["name"]},
                          {"status", job["status"]}, {"reused_from", job["reused_from"]}});
      if (!created.existed) ctx.bus.publish("job", job);
    }
    if (!created.existed) {
      if (auto summary = ctx.reader.run([&](db::Store& s) { return s.matrix_summary(created.id); })) {
        ctx.bus.publish("matrix", *summary);
      }
      ctx.scheduler.wake();
    }
    reply(res, created.existed ? 200 : 201,
          {{"id", created.id}, {"name", m.name}, {"jobs", job_list}, {"warnings", m.warnings}});
  });

  server.Get("/api/matrices", [&ctx](const Request& req, Response& res) {
    const int64_t after_id = query_int(req, "after_id", 0);
    const std::optional<int64_t> limit = page_limit(req);
    // One row past the page tells whether another page follows, without a count.
    json matrices = ctx.reader.run([&](db::Store& s) {
      return s.list_matrices(after_id, limit ? std::optional<int64_t>(*limit + 1) : std::nullopt);
    });
    const json next = cut_to_page(matrices, limit);
    reply(res, 200, {{"matrices", matrices}, {"next_after_id", next}});
  });

  server.Get(R"(/api/matrices/(\d+))", [&ctx](const Request& req, Response& res) {
    auto detail = ctx.reader.run([&](db::Store& s) { return s.matrix_detail(path_id(req)); });
    if (!detail) return error(res, 404, "no matrix " + req.matches[1].str() + "; GET /api/matrices lists them");
    reply(res, 200, *detail);
  });

  server.Get(R"(/api/matrices/(\d+)/results)", [&ctx](const Request& req, Response& res) {
    int64_t id = path_id(req);
    auto table = ctx.reader.run([&](db::Store& s) -> std::optional<json> {
      auto name = s.matrix_name(id);
      if (!name) return std::nullopt;
      VerdictOptions options;
      options.decide = matrix_decide_options(s, id);
      json out = to_json(judge_matrix(job_outcomes(s, id, ctx.fixed_jobs), "", options));
      out["matrix"] = {{"id", id}, {"name", *name}};
      return out;
    });
    if (!table) return error(res, 404, "no matrix " + std::to_string(id) + "; GET /api/matrices lists them");
    reply(res, 200, *table);
  });

  server.Post(R"(/api/matrices/(\d+)/rerun)", [&ctx](const Request& req, Response& res) {
    std::set<std::string> statuses = {"failed"};
    if (req.body.find_first_not_of(" \t\r\n") != std::string::npos) {
      json body = json::parse(req.body, nullptr, false);
      if (body.is_discarded() || !body.is_object() || (body.contains("status") && !body["status"].is_array())) {
        ++ctx.rejected_bodies;
        return error(res, 400, "rerun body must be JSON like {\"status\": [\"failed\", \"cancelled\"]}");
      }
      if (body.contains("status")) {
        statuses.clear();
        for (const json& s : body["status"]) {
          std::string status = s.is_string() ? s.get<std::string>() : s.dump();
          if (status != "failed" && status != "cancelled" && status != "succeeded") {
            ++ctx.rejected_bodies;
            return error(res, 400, "rerun status '" + status + "': choose among failed, cancelled, succeeded");
          }
          statuses.insert(status);
        }
      }
    }
    int64_t id = path_id(req);
    auto requeued = ctx.writer.run([&](db::Store& s) -> std::optional<std::vector<int64_t>> {
      if (!s.matrix_summary(id)) return std::nullopt;
      return s.rerun_matrix(id, statuses);
    });
    if (!requeued) return error(res, 404, "no matrix " + std::to_string(id));
    ctx.scheduler.requeued(*requeued);
    reply(res, 200, {{"requeued", *requeued}});
  });

  server.Post(R"(/api/matrices/(\d+)/cancel)", [&ctx](const Request& req, Response& res) {
    int64_t id = path_id(req);
    json active = ctx.reader.run([&](db::Store& s) { return s.list_jobs(id, ""); });
    std::vector<int64_t> cancelled;
    for (const json& job : active) {
      std::string status = job["status"].get<std::string>();
      if (status != "queued" && status != "running") continue;
      ctx.scheduler.cancel(job["id"].get<int64_t>());
      cancelled.push_back(job["id"].get<int64_t>());
    }
    reply(res, 200, {{"cancelled", cancelled}});
  });
}

void install_job_routes(httplib::Server& server, ApiContext& ctx) {
  server.Get("/api/jobs", [&ctx](const Request& req, Response& res) {
    std::optional<int64_t> matrix;
    if (req.has_param("matrix")) matrix = query_int(req, "matrix", 0);
    std::string status = req.get_param_value("status");
    const int64_t after_id = query_int(req, "after_id", 0);
    const std::optional<int64_t> limit = page_limit(req);
    // One row past the page tells whether another page follows, without a count.
    json jobs = ctx.reader.run([&](db::Store& s) {
      return s.list_jobs(matrix, status, after_id, limit ? std::optional<int64_t>(*limit + 1) : std::nullopt);
    });
    const json next = cut_to_page(jobs, limit);
    reply(res, 200, {{"jobs", jobs}, {"next_after_id", next}});
  });

  server.Get(R"(/api/jobs/(\d+))", [&ctx](const Request& req, Response& res) {
    auto detail = ctx.reader.run([&](db::Store& s) { return s.job_detail(path_id(req)); });
    if (!detail) return error(res, 404, "no job " + req.matches[1].str() + "; GET /api/jobs lists them");
    reply(res, 200, *detail);
  });

  server.Get(R"(/api/jobs/(\d+)/metrics)", [&ctx](const Request& req, Response& res) {
    int64_t id = path_id(req);
    int max_points = static_cast<int>(std::clamp<int64_t>(query_int(req, "max_points", 500), 1, 100000));
    int64_t after = query_int(req, "after", -1);
    std::vector<std::string> names = split(req.get_param_value("names"), ',');
    auto out = ctx.reader.run([&](db::Store& s) -> std::optional<json> {
      if (!s.job_summary(id)) return std::nullopt;
      return s.metrics(id, names, max_points, after);
    });
    if (!out) return error(res, 404, "no job " + std::to_string(id));
    reply(res, 200, *out);
  });

  server.Get(R"(/api/jobs/(\d+)/log)", [&ctx](const Request& req, Response& res) {
    int64_t id = path_id(req);
    int64_t lines = std::max<int64_t>(1, query_int(req, "tail", 200));
    std::optional<int64_t> attempt;
    if (req.has_param("attempt")) attempt = query_int(req, "attempt", 0);
    auto path = ctx.reader.run([&](db::Store& s) { return s.log_path(id, attempt); });
    if (!path) {
      return error(res, 404, "job " + std::to_string(id) + " has no " +
                                 (attempt ? "attempt " + std::to_string(*attempt) : std::string("attempt yet")) +
                                 " (or does not exist)");
    }
    res.set_content(tail_file(*path, lines), "text/plain; charset=utf-8");
  });

  server.Post(R"(/api/jobs/(\d+)/rerun)", [&ctx](const Request& req, Response& res) {
    int64_t id = path_id(req);
    auto status = ctx.reader.run([&](db::Store& s) { return s.job_summary(id); });
    if (!status) return error(res, 404, "no job " + std::to_string(id));
    if (!ctx.writer.run([&](db::Store& s) { return s.rerun_job(id); })) {
      return error(res, 409, "job " + std::to_string(id) + " is running; cancel it first or wait for it to end");
    }
    ctx.scheduler.requeued({id});
    reply(res, 200, {{"requeued", {id}}});
  });

  server.Post(R"(/api/jobs/(\d+)/cancel)", [&ctx](const Request& req, Response& res) {
    int64_t id = path_id(req);
    std::string status = ctx.scheduler.cancel(id);
    if (status.empty()) return error(res, 404, "no job " + std::to_string(id));
    reply(res, 200, {{"cancelled", id}, {"status", status}});
  });
}

void install_worker_routes(httplib::Server& server, ApiContext& ctx) {
  server.Post("/api/report", [&ctx](const Request& req, Response& res) {
    std::string token = bearer(req);
    auto attempt = token.empty() ? std::nullopt : ctx.reader.run([&](db::Store& s) { return s.attempt_by_token(token); });
    if (!attempt) return error(res, 401, "POST /api/report needs 'Authorization: Bearer <attempt token>' of a known attempt");
    json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object() || !body.contains("events") || !body["events"].is_array()) {
      ++ctx.rejected_bodies;
      return error(res, 400, "report body must be JSON {\"events\": [...]} (docs/job-spec.md)");
    }
    db::IngestOutcome out;
    try {
      out = ctx.scheduler.ingest(*attempt, body["events"]);
    } catch (const std::invalid_argument& e) {
      ++ctx.rejected_bodies;
      return error(res, 400, e.what());
    }
    if (out.stale) {
      ++ctx.stale_reports;
      return reply(res, 409, {{"error", "this attempt is no longer current (the daemon ended it); events recorded, not applied"},
                              {"accepted", out.accepted}});
    }
    ++ctx.reports;
    reply(res, 200, {{"accepted", out.accepted}});
  });
}

void install_live_routes(httplib::Server& server, ApiContext& ctx) {
  server.Get("/api/health", [&ctx](const Request&, Response& res) {
    json counts = ctx.reader.run([](db::Store& s) { return s.job_counts_by_status(); });
    reply(res, 200, {{"ok", true}, {"version", kVersion}, {"build_id", build_id()},
                     {"slots", ctx.scheduler.slots_json()}, {"queued", counts["queued"]},
                     {"running", counts["running"]}, {"draining", ctx.scheduler.draining()}});
  });

  server.Post("/api/drain", [&ctx](const Request& req, Response& res) {
    json body = json::parse(req.body.empty() ? "{}" : req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object() || (body.contains("drain") && !body["drain"].is_boolean())) {
      ++ctx.rejected_bodies;
      return error(res, 400, "drain body must be JSON {\"drain\": true|false}");
    }
    ctx.scheduler.set_draining(body.value("drain", true));
    reply(res, 200, {{"draining", ctx.scheduler.draining()}});
  });

  server.Get("/api/events", [&ctx](const Request& req, Response& res) {
    // Browsers' EventSource sends Last-Event-ID when it reconnects: replay what it missed.
    auto sub = ctx.bus.subscribe(req.get_header_value("Last-Event-ID"));
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [sub](size_t, httplib::DataSink& sink) {
          if (sub->closed()) return false;
          auto event = sub->next(kSseKeepAliveSeconds);
          std::string text = event ? format_sse(*event) : ": keep-alive\n\n";
          return sink.write(text.data(), text.size());
        },
        [&ctx, sub](bool) { ctx.bus.unsubscribe(sub); });
  });

  server.Get("/metrics", [&ctx](const Request&, Response& res) {
    res.set_content(prometheus_text(ctx), "text/plain; version=0.0.4");
  });

  server.Get("/api/presets", [](const Request&, Response& res) {
    json presets = json::array();
    for (const PresetInfo& p : list_presets()) {
      presets.push_back({{"name", p.name}, {"description", p.description}, {"steps", p.steps}, {"jobs", p.jobs}});
    }
    reply(res, 200, {{"presets", presets}});
  });

  server.Get(R"(/api/presets/([A-Za-z0-9_.-]+))", [](const Request& req, Response& res) {
    std::string name = req.matches[1].str();
    if (!has_preset(name)) return error(res, 404, "no preset '" + name + "'; GET /api/presets lists them");
    res.set_content(preset_text(name), "text/yaml; charset=utf-8");
  });
}

// Logs the request (method, target, the start of the body) under a fresh id and answers 500 with it.
void internal_error(const Request& req, Response& res, ApiContext& ctx, const std::string& what) {
  const int64_t id = ++ctx.internal_errors;
  std::string target = req.target.empty() ? req.path : req.target;
  spdlog::error("request {}: {} {} ({} body bytes, starting {}) failed: {}", id, req.method, target, req.body.size(),
                json_text(req.body.substr(0, 200)), what);
  reply(res, 500, {{"error", "internal error (request " + std::to_string(id) +
                                 "); the daemon log has the details, please report it"},
                   {"request_id", id}});
}

}  // namespace

FixedJobCache::Jobs FixedJobCache::get(int64_t matrix_id, const std::function<json()>& load) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = by_matrix_.find(matrix_id); it != by_matrix_.end()) return it->second;
  }
  auto jobs = std::make_shared<std::vector<FixedJob>>();
  for (const json& job : load()) {  // outside the lock: two first requests may both load, harmlessly
    jobs->push_back({job["id"].get<int64_t>(), job_spec_from_json(job["spec"]), job["params"].value("total", int64_t{0}),
                     job["params"].value("added", int64_t{0})});
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (by_matrix_.emplace(matrix_id, jobs).second) loaded_order_.push_back(matrix_id);
  while (loaded_order_.size() > kMaxMatrices) {
    by_matrix_.erase(loaded_order_.front());
    loaded_order_.pop_front();
  }
  return by_matrix_.at(matrix_id);
}

void FixedJobCache::forget(int64_t matrix_id) {
  std::lock_guard<std::mutex> lock(mu_);
  by_matrix_.erase(matrix_id);
  loaded_order_.erase(std::remove(loaded_order_.begin(), loaded_order_.end(), matrix_id), loaded_order_.end());
}

db::NewMatrix new_matrix_of(const json& expanded, const std::string& source) {
  const json& matrix = expanded["matrix"];
  db::NewMatrix m;
  m.name = matrix["name"].get<std::string>();
  m.source = source;
  m.expanded = matrix;
  m.warnings = expanded["warnings"];
  m.priority = matrix["priority"].get<int>();
  m.max_attempts = matrix["max_attempts"].get<int>();
  for (const json& job : expanded["jobs"]) {
    db::NewJob j;
    j.step = job["step"].get<std::string>();
    j.name = job["name"].get<std::string>();
    j.spec = job["config"];
    j.config_hash = job["config_hash"].get<std::string>();
    j.params = job["params"];
    j.max_iters = job["config"]["train"]["max_iters"].get<int64_t>();
    m.jobs.push_back(std::move(j));
  }
  return m;
}

void install_routes(httplib::Server& server, ApiContext& ctx) {
  // Mutating calls need the daemon token when one is configured; workers authenticate with their
  // attempt token instead.
  server.set_pre_routing_handler([&ctx](const Request& req, Response& res) {
    bool mutating = req.method != "GET" && req.method != "HEAD" && req.method != "OPTIONS";
    if (ctx.options.token.empty() || !mutating || req.path == "/api/report") {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    if (constant_time_equal(bearer(req), ctx.options.token)) return httplib::Server::HandlerResponse::Unhandled;
    error(res, 401, "this daemon requires 'Authorization: Bearer <token>' (the token of its --token-file) for " +
                        req.method + " " + req.path);
    return httplib::Server::HandlerResponse::Handled;
  });
  // The one guard every handler runs behind: HttpError is an answer; anything else is a bug,
  // logged with the request under an id the client is given to quote.
  server.set_exception_handler([&ctx](const Request& req, Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const HttpError& e) {
      if (e.status == 400) ++ctx.rejected_bodies;
      error(res, e.status, e.what());
    } catch (const std::exception& e) {
      internal_error(req, res, ctx, e.what());
    } catch (...) {
      internal_error(req, res, ctx, "an exception that is not a std::exception");
    }
  });
  server.set_error_handler([](const Request& req, Response& res) {
    if (res.body.empty()) error(res, res.status, req.method + " " + req.path + ": no such resource (see docs/api.md)");
  });

  install_matrix_routes(server, ctx);
  install_job_routes(server, ctx);
  install_worker_routes(server, ctx);
  install_live_routes(server, ctx);

  if (std::filesystem::is_directory(ctx.options.web_root)) {
    server.set_mount_point("/", ctx.options.web_root);
  } else {
    spdlog::warn("web root {} does not exist; the dashboard is not served (pass --web-root DIR)", ctx.options.web_root);
  }
}

}  // namespace ratio::daemon

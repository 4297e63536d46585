#include "daemon/verdict.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include <nlohmann/json.hpp>

namespace ratio {
namespace {

// All jobs of one step: its seeds.
struct StepGroup {
  std::string step;
  std::vector<const JobOutcome*> jobs;
};

struct Stats {
  int n = 0;
  double mean = 0.0;
  std::optional<double> std;  // sample std, n >= 2
};

Stats stats_of(const std::vector<double>& values) {
  Stats s;
  s.n = static_cast<int>(values.size());
  if (s.n == 0) return s;
  s.mean = std::accumulate(values.begin(), values.end(), 0.0) / s.n;
  if (s.n >= 2) {
    double squares = 0.0;
    for (double v : values) squares += (v - s.mean) * (v - s.mean);
    s.std = std::sqrt(squares / (s.n - 1));
  }
  return s;
}

std::vector<StepGroup> group_by_step(const std::vector<JobOutcome>& jobs) {
  std::vector<StepGroup> groups;
  for (const JobOutcome& job : jobs) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const StepGroup& g) { return g.step == job.spec.step; });
    if (it == groups.end()) {
      groups.push_back({job.spec.step, {}});
      it = groups.end() - 1;
    }
    it->jobs.push_back(&job);
  }
  return groups;
}

bool finished(const JobOutcome& job) { return job.status == "succeeded" && job.final_val_loss.has_value(); }

std::vector<double> final_losses(const StepGroup& g) {
  std::vector<double> losses;
  for (const JobOutcome* job : g.jobs)
    if (finished(*job)) losses.push_back(*job->final_val_loss);
  return losses;
}

// The step's status over its seeds: the one that most needs attention wins.
std::string step_status(const StepGroup& g) {
  for (const char* status : {"failed", "running", "queued", "cancelled"})
    for (const JobOutcome* job : g.jobs)
      if (job->status == status) return status;
  return "succeeded";
}

// Mixing alphas only: learned ratios and gate scale/bias means are reported but are not "alphas".
bool is_mixing_alpha(const std::string& name) { return name.find("alpha") != std::string::npos; }

std::string fmt(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

// Plain scaling: the same model and training as the baseline except a wider MLP (seed aside).
bool is_plain_scaling(const JobSpec& step, const JobSpec& baseline) {
  if (step.model.mlp_ratio <= baseline.model.mlp_ratio) return false;
  nlohmann::json step_model = to_json(step.model), base_model = to_json(baseline.model);
  step_model.erase("mlp_ratio");
  base_model.erase("mlp_ratio");
  nlohmann::json step_train = to_json(step.train), base_train = to_json(baseline.train);
  step_train.erase("seed");
  base_train.erase("seed");
  return step_model == base_model && step_train == base_train && to_json(step.data) == to_json(baseline.data);
}

struct Noise {
  double threshold = 0.0;
  std::string how;  // for the reason text
};

Noise noise_threshold(const Stats& step, const Stats& baseline, const VerdictOptions& options) {
  if (step.std && baseline.std) {
    double combined = std::sqrt(*step.std * *step.std + *baseline.std * *baseline.std);
    return {options.noise_sigmas * combined,
            fmt("%g", options.noise_sigmas) + "x combined seed std " + fmt("%.4f", combined)};
  }
  return {options.single_run_noise, "single-seed run-to-run noise " + fmt("%.3f", options.single_run_noise)};
}

std::optional<double> efficiency_of(double delta, int64_t params_added) {
  if (params_added <= 0) return std::nullopt;
  return -delta / (static_cast<double>(params_added) / 1e6);
}

// Fills everything but the verdict: aggregates, delta against the baseline, noise and health.
ResultRow aggregate(const StepGroup& g, const Stats* baseline, const VerdictOptions& options, Noise* noise) {
  ResultRow row;
  row.step = g.step;
  const JobOutcome& first = **std::min_element(
      g.jobs.begin(), g.jobs.end(), [](const JobOutcome* a, const JobOutcome* b) { return a->job_id < b->job_id; });
  row.job_id = first.job_id;
  row.name = first.spec.name;
  row.status = step_status(g);
  row.params_total = first.params_total;
  row.params_added = first.params_added;

  std::vector<double> finals = final_losses(g), bests, speeds;
  std::map<std::string, std::vector<double>> alpha_values;
  for (const JobOutcome* job : g.jobs) {
    if (!finished(*job)) continue;
    if (job->best_val_loss) bests.push_back(*job->best_val_loss);
    if (job->tokens_per_s) speeds.push_back(*job->tokens_per_s);
    for (const auto& [name, value] : job->alphas)
      if (is_mixing_alpha(name)) alpha_values[name].push_back(value);
    for (const auto& [name, norm] : job->grad_norms)
      if (std::abs(norm) < options.dead_grad_norm &&
          std::find(row.dead_params.begin(), row.dead_params.end(), name) == row.dead_params.end())
        row.dead_params.push_back(name);
  }
  for (const auto& [name, values] : alpha_values) row.alphas[name] = stats_of(values).mean;

  Stats loss = stats_of(finals);
  row.seeds = loss.n;
  if (loss.n == 0) return row;
  row.final_val_loss = loss.mean;
  row.val_loss_std = loss.std;
  if (!bests.empty()) row.best_val_loss = stats_of(bests).mean;
  if (!speeds.empty()) row.tokens_per_s = stats_of(speeds).mean;
  if (baseline && baseline->n > 0) {
    row.delta = loss.mean - baseline->mean;
    row.delta_pct = 100.0 * *row.delta / baseline->mean;
    row.efficiency = efficiency_of(*row.delta, row.params_added);
    *noise = noise_threshold(loss, *baseline, options);
    row.within_noise = std::abs(*row.delta) < noise->threshold;
  }
  return row;
}

std::vector<SeedAdded> seeds_added_to(const StepGroup& g) {
  std::vector<SeedAdded> added;
  for (const JobOutcome* job : g.jobs)
    for (const std::string& tag : job->spec.tags)
      if (tag.rfind(kDecideTag, 0) == 0) added.push_back({job->job_id, job->spec.train.seed, tag.substr(kDecideTag.size())});
  return added;
}

// Seconds one more seed of the step costs, from its measured speed; none before a seed finished.
std::optional<double> seconds_per_seed(const StepGroup& g, const ResultRow& row) {
  if (!row.tokens_per_s || *row.tokens_per_s <= 0) return std::nullopt;
  const JobSpec& spec = g.jobs.front()->spec;
  const double tokens = double(spec.train.max_iters) * spec.train.batch_size * spec.train.grad_accum * spec.model.block_size;
  return tokens / *row.tokens_per_s;
}

std::string missing_reason(const StepGroup& g, const ResultRow& row) {
  for (const JobOutcome* job : g.jobs)
    if (job->status == "failed")
      return "job " + std::to_string(job->job_id) + " failed" + (job->reason.empty() ? "" : ": " + job->reason) +
             "; rerun it with `ratio rerun --job " + std::to_string(job->job_id) + "`";
  return "waiting for results (" + std::to_string(row.seeds) + " of " + std::to_string(g.jobs.size()) +
         " runs finished)";
}

struct PlainScaling {
  std::string step;
  std::optional<double> efficiency;  // only when its gain is beyond noise: otherwise no usable reference
};

bool below_plain_scaling(const ResultRow& row, const PlainScaling& plain) {
  return row.efficiency && plain.efficiency && row.step != plain.step && *row.efficiency < *plain.efficiency;
}

std::string plain_scaling_text(const ResultRow& row, const PlainScaling& plain) {
  return "efficiency " + fmt("%.4f", *row.efficiency) + " loss/M params is below plain scaling (step " + plain.step +
         ": " + fmt("%.4f", *plain.efficiency) + ")";
}

// With `decide`: the sequential decision settles better / not better; the health and efficiency
// rules still apply on top of "better".
void verdict_from_decision(ResultRow& row, const PlainScaling& plain) {
  const Decision& d = *row.decision;
  if (d.outcome == "open") {
    row.verdict_reason = "deciding: " + d.reason;
  } else if (d.outcome == "not_better") {
    row.verdict = "REMOVE";
    row.verdict_reason = "not better than the baseline: " + d.reason;
  } else if (d.outcome == "undecided") {
    row.verdict = "INVESTIGATE";
    row.verdict_reason = d.reason;
  } else if (below_plain_scaling(row, plain)) {
    row.verdict = "REMOVE";
    row.verdict_reason = plain_scaling_text(row, plain) + "; " + d.reason;
  } else if (!row.dead_params.empty()) {
    row.verdict = "INVESTIGATE";
    row.verdict_reason = std::to_string(row.dead_params.size()) + " key parameter(s) get no gradient (" +
                         row.dead_params.front() + (row.dead_params.size() > 1 ? ", ..." : "") + "); " + d.reason;
  } else {
    row.verdict = "KEEP";
    row.verdict_reason = d.reason + ", with healthy gradients";
  }
}

void decide(ResultRow& row, const Noise& noise, const PlainScaling& plain, const VerdictOptions& options) {
  const double delta = *row.delta;
  const std::string delta_text = fmt("%+.4f", delta) + " vs baseline (" + noise.how + ")";

  // REMOVE: the model switched the mechanism off.
  if (!row.alphas.empty()) {
    double mean_abs = 0.0;
    for (const auto& entry : row.alphas) mean_abs += std::abs(entry.second);
    mean_abs /= static_cast<double>(row.alphas.size());
    if (mean_abs < options.dead_alpha) {
      row.verdict = "REMOVE";
      row.verdict_reason = "learned alphas went to ~0 (mean |alpha| " + fmt("%.4f", mean_abs) + " over " +
                           std::to_string(row.alphas.size()) + "): training switched the mechanism off";
      return;
    }
  }
  if (row.decision) return verdict_from_decision(row, plain);
  // REMOVE: worse beyond noise.
  if (delta >= noise.threshold) {
    row.verdict = "REMOVE";
    row.verdict_reason = "worse than baseline beyond noise: " + delta_text;
    return;
  }
  // REMOVE: parameters buy less than plain MLP scaling would.
  if (below_plain_scaling(row, plain)) {
    row.verdict = "REMOVE";
    row.verdict_reason = plain_scaling_text(row, plain) + "; " + delta_text;
    return;
  }
  const bool better = delta <= -noise.threshold;
  if (better && row.dead_params.empty()) {
    row.verdict = "KEEP";
    row.verdict_reason = "better than baseline beyond noise with healthy gradients: " + delta_text;
    return;
  }
  row.verdict = "INVESTIGATE";
  if (!row.dead_params.empty())
    row.verdict_reason = std::to_string(row.dead_params.size()) + " key parameter(s) get no gradient (" +
                         row.dead_params.front() + (row.dead_params.size() > 1 ? ", ..." : "") + "); " + delta_text;
  else
    row.verdict_reason = "within noise: " + delta_text;
}

// "forced_gates_twin_of:12" -> "12"; empty when the step is no forced-open-gates twin.
std::string twin_of(const StepGroup& g) {
  const std::string prefix = "forced_gates_twin_of:";
  for (const std::string& tag : g.jobs.front()->spec.tags)
    if (tag.rfind(prefix, 0) == 0) return tag.substr(prefix.size());
  return "";
}

// A forced-open twin isolates whether learning the gates helps: its reason also compares it with
// the step whose gates are learned, under the same noise rule.
void add_twin_comparison(ResultRow& twin, const ResultRow& gated, const Noise& noise) {
  if (!twin.final_val_loss || !gated.final_val_loss) return;
  const double delta = *twin.final_val_loss - *gated.final_val_loss;
  twin.verdict_reason += "; vs step " + gated.step + " with learned gates: " + fmt("%+.4f", delta) +
                         (std::abs(delta) < noise.threshold ? " (within noise: learning the gates shows no effect)"
                          : delta > 0                       ? " (learned gates help)"
                                                            : " (forcing the gates open is better)");
}

std::string resolve_baseline(const std::vector<StepGroup>& groups, const std::string& declared) {
  const std::string wanted = declared.empty() ? "0" : declared;
  for (const StepGroup& g : groups)
    if (g.step == wanted) return wanted;
  return "";
}

// The wider-MLP-only step with the largest ratio that has a result; its efficiency is the reference
// only when its own gain is beyond noise (an efficiency computed from noise is no yardstick).
PlainScaling find_plain_scaling(const std::vector<StepGroup>& groups, const std::vector<ResultRow>& rows,
                                const StepGroup& baseline) {
  PlainScaling plain;
  double widest = 0.0;
  for (size_t i = 0; i < groups.size(); ++i) {
    const JobSpec& spec = groups[i].jobs.front()->spec;
    if (!rows[i].final_val_loss || !is_plain_scaling(spec, baseline.jobs.front()->spec)) continue;
    if (spec.model.mlp_ratio <= widest) continue;
    widest = spec.model.mlp_ratio;
    plain.step = rows[i].step;
    plain.efficiency = rows[i].within_noise.value_or(true) ? std::nullopt : rows[i].efficiency;
  }
  return plain;
}

template <typename T>
nlohmann::json or_null(const std::optional<T>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

}  // namespace

std::vector<double> paired_differences(const std::vector<const JobOutcome*>& step,
                                       const std::vector<const JobOutcome*>& baseline) {
  std::map<uint64_t, double> baseline_by_seed;
  for (const JobOutcome* job : baseline)
    if (finished(*job)) baseline_by_seed[job->spec.train.seed] = *job->final_val_loss;
  std::vector<double> differences;
  for (const JobOutcome* job : step) {
    if (!finished(*job)) continue;
    auto it = baseline_by_seed.find(job->spec.train.seed);
    if (it != baseline_by_seed.end()) differences.push_back(*job->final_val_loss - it->second);
  }
  return differences;
}

ResultsTable judge_matrix(const std::vector<JobOutcome>& jobs, const std::string& baseline_step,
                          const VerdictOptions& options) {
  const std::vector<StepGroup> groups = group_by_step(jobs);
  ResultsTable table;
  table.baseline_step = resolve_baseline(groups, baseline_step);

  const StepGroup* baseline_group = nullptr;
  Stats baseline;
  for (const StepGroup& g : groups)
    if (g.step == table.baseline_step) {
      baseline_group = &g;
      baseline = stats_of(final_losses(g));
    }

  std::vector<Noise> noises(groups.size());
  for (size_t i = 0; i < groups.size(); ++i)
    table.rows.push_back(aggregate(groups[i], baseline_group ? &baseline : nullptr, options, &noises[i]));

  PlainScaling plain;
  if (baseline_group) {
    plain = find_plain_scaling(groups, table.rows, *baseline_group);
    table.plain_scaling_step = plain.step;
    table.plain_scaling_efficiency = plain.efficiency;
  }

  table.decide = options.decide;
  double seconds_left = 0;
  bool seconds_known = true;
  for (size_t i = 0; i < groups.size(); ++i) {
    ResultRow& row = table.rows[i];
    if (baseline_group && row.step == table.baseline_step) {
      row.verdict = "BASELINE";
      row.verdict_reason = "the reference every other step is compared with";
      row.within_noise.reset();
      continue;
    }
    if (options.decide && baseline_group) {
      row.decision = decide_paired(paired_differences(groups[i].jobs, baseline_group->jobs), *options.decide);
      row.seeds_added = seeds_added_to(groups[i]);
      if (row.decision->outcome == "open") {
        ++table.open_steps;
        const auto per_seed = seconds_per_seed(groups[i], row);
        seconds_known = seconds_known && per_seed.has_value();
        if (per_seed) seconds_left += (options.decide->max_seeds - row.seeds) * *per_seed;
        if (row.status != "succeeded" && row.status != "failed") {
          row.verdict_reason = "deciding: " + row.decision->reason + "; the next seed is " + row.status;
          continue;
        }
      }
    }
    if (row.status != "succeeded" || !row.final_val_loss) {
      row.verdict_reason = missing_reason(groups[i], row);
      continue;
    }
    if (!row.delta) {
      row.verdict_reason = baseline_group ? "waiting for the baseline (step " + table.baseline_step + ")"
                                          : "no baseline step in this matrix (declare one, or name a step \"0\")";
      continue;
    }
    decide(row, noises[i], plain, options);
  }
  if (table.open_steps > 0 && seconds_known) table.gpu_seconds_left = seconds_left;
  for (size_t i = 0; i < groups.size(); ++i) {
    const std::string gated_step = twin_of(groups[i]);
    if (gated_step.empty() || table.rows[i].verdict.empty()) continue;
    for (size_t k = 0; k < groups.size(); ++k)
      if (groups[k].step == gated_step) {
        const Noise noise =
            noise_threshold(stats_of(final_losses(groups[i])), stats_of(final_losses(groups[k])), options);
        add_twin_comparison(table.rows[i], table.rows[k], noise);
      }
  }
  return table;
}

namespace {

nlohmann::json decision_json(const ResultRow& row) {
  if (!row.decision) return nullptr;
  const Decision& d = *row.decision;
  nlohmann::json history = nlohmann::json::array();
  for (const SeedAdded& s : row.seeds_added) history.push_back({{"job_id", s.job_id}, {"seed", s.seed}, {"reason", s.reason}});
  return {{"outcome", d.outcome},   {"seeds", d.n},
          {"mean", or_null(d.mean)}, {"lower", or_null(d.lower)},
          {"upper", or_null(d.upper)}, {"look_confidence", d.look_confidence},
          {"reason", d.reason},      {"history", history}};
}

}  // namespace

nlohmann::json to_json(const ResultRow& row) {
  return {{"job_id", row.job_id},
          {"step", row.step},
          {"name", row.name},
          {"status", row.status},
          {"final_val_loss", or_null(row.final_val_loss)},
          {"best_val_loss", or_null(row.best_val_loss)},
          {"delta", or_null(row.delta)},
          {"delta_pct", or_null(row.delta_pct)},
          {"params_total", row.params_total},
          {"params_added", row.params_added},
          {"efficiency", or_null(row.efficiency)},
          {"tokens_per_s", or_null(row.tokens_per_s)},
          {"verdict", row.verdict.empty() ? nlohmann::json(nullptr) : nlohmann::json(row.verdict)},
          {"verdict_reason", row.verdict_reason},
          {"alphas", row.alphas},
          {"seeds", row.seeds},
          {"val_loss_std", or_null(row.val_loss_std)},
          {"within_noise", or_null(row.within_noise)},
          {"dead_params", row.dead_params},
          {"decision", decision_json(row)}};
}

nlohmann::json to_json(const ResultsTable& table) {
  nlohmann::json rows = nlohmann::json::array();
  for (const ResultRow& row : table.rows) rows.push_back(to_json(row));
  nlohmann::json plain = nullptr;
  if (!table.plain_scaling_step.empty())
    plain = {{"step", table.plain_scaling_step}, {"efficiency", or_null(table.plain_scaling_efficiency)}};
  nlohmann::json decide = nullptr;
  if (table.decide)
    decide = {{"max_seeds", table.decide->max_seeds},
              {"confidence", table.decide->confidence},
              {"min_effect", table.decide->min_effect},
              {"open_steps", table.open_steps},
              {"gpu_seconds_left_at_most", or_null(table.gpu_seconds_left)}};
  return {
      {"baseline_step", table.baseline_step.empty() ? nlohmann::json(nullptr) : nlohmann::json(table.baseline_step)},
      {"plain_scaling", plain},
      {"decide", decide},
      {"rows", rows}};
}

}  // namespace ratio

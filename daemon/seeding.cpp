#include "daemon/seeding.h"

#include <algorithm>
#include <map>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "matrix/job_spec.h"

namespace ratio::daemon {

using nlohmann::json;

namespace {

bool succeeded(const JobOutcome& job) { return job.status == "succeeded" && job.final_val_loss.has_value(); }

std::map<std::string, std::vector<const JobOutcome*>> by_step(const std::vector<JobOutcome>& jobs) {
  std::map<std::string, std::vector<const JobOutcome*>> steps;
  for (const JobOutcome& job : jobs) steps[job.spec.step].push_back(&job);
  for (auto& [step, list] : steps)
    std::sort(list.begin(), list.end(), [](const JobOutcome* a, const JobOutcome* b) { return a->job_id < b->job_id; });
  return steps;
}

// Every seed of the step has succeeded, and so has the baseline's seed of the same number.
bool ready_to_decide(const std::vector<const JobOutcome*>& step, const std::vector<const JobOutcome*>& baseline) {
  std::set<uint64_t> baseline_done;
  for (const JobOutcome* job : baseline)
    if (succeeded(*job)) baseline_done.insert(job->spec.train.seed);
  return std::all_of(step.begin(), step.end(), [&](const JobOutcome* job) {
    return succeeded(*job) && baseline_done.count(job->spec.train.seed) > 0;
  });
}

// The template's spec with another seed: train.seed, the "seed:N" tag and the name's "(seed N)".
db::NewJob seed_job(const json& template_row, const SeedRequest& request) {
  json spec = template_row["spec"];
  spec["train"]["seed"] = request.seed;
  const std::string seed = std::to_string(request.seed);
  json tags = json::array();
  for (const json& tag : spec.value("tags", json::array())) {
    const std::string text = tag.get<std::string>();
    if (text.rfind("seed:", 0) != 0 && text.rfind(kDecideTag, 0) != 0) tags.push_back(text);
  }
  tags.push_back("seed:" + seed);
  tags.push_back(kDecideTag + request.reason);
  spec["tags"] = tags;
  static const std::regex seed_suffix(R"( \(seed \d+\)$)");
  spec["name"] = std::regex_replace(spec["name"].get<std::string>(), seed_suffix, "") + " (seed " + seed + ")";
  const JobSpec parsed = job_spec_from_json(spec);
  return {request.step, spec["name"], spec, config_hash(parsed), template_row["params"], parsed.train.max_iters};
}

}  // namespace

std::vector<SeedRequest> seeds_to_add(const std::vector<JobOutcome>& jobs, const std::string& baseline_step,
                                      const DecideOptions& options) {
  const auto steps = by_step(jobs);
  const std::string base = baseline_step.empty() ? "0" : baseline_step;
  auto baseline = steps.find(base);
  if (baseline == steps.end()) return {};
  std::set<uint64_t> baseline_seeds;
  for (const JobOutcome* job : baseline->second) baseline_seeds.insert(job->spec.train.seed);

  std::vector<SeedRequest> requests;
  for (const auto& [step, list] : steps) {
    if (step == base || int(list.size()) >= options.max_seeds) continue;
    if (!ready_to_decide(list, baseline->second)) continue;
    const Decision decision = decide_paired(paired_differences(list, baseline->second), options);
    if (decision.outcome != "open") continue;
    uint64_t next = 0;
    for (const JobOutcome* job : list) next = std::max(next, job->spec.train.seed + 1);
    requests.push_back({step, next, list.front()->job_id, "seed " + std::to_string(next) + " added: " + decision.reason});
    if (baseline_seeds.insert(next).second) {
      requests.push_back({base, next, baseline->second.front()->job_id,
                          "seed " + std::to_string(next) + " added to pair with step " + step + "'s"});
    }
  }
  return requests;
}

std::optional<DecideOptions> matrix_decide_options(db::Store& store, int64_t matrix_id) {
  const auto expanded = store.matrix_expanded(matrix_id);
  if (!expanded || !expanded->contains("decide") || (*expanded)["decide"].is_null()) return std::nullopt;
  const json& decide = (*expanded)["decide"];
  DecideOptions options;
  options.max_seeds = decide.value("max_seeds", options.max_seeds);
  options.confidence = decide.value("confidence", options.confidence);
  options.min_effect = decide.value("min_effect", options.min_effect);
  return options;
}

namespace {

// One look at the matrix: the seeds it needs now, queued. A seed whose config ran before comes back
// already succeeded (reused), so add_decided_seeds looks again until a look adds nothing.
std::vector<int64_t> add_seeds_once(db::Store& store, int64_t matrix_id, const DecideOptions& options) {
  const json specs = store.matrix_job_specs(matrix_id);  // [{"id", "spec", "params"}], in id order
  std::map<int64_t, const db::JobState*> state_of;
  const std::vector<db::JobState> states = store.matrix_job_states(matrix_id);
  for (const db::JobState& state : states) state_of[state.id] = &state;
  std::vector<JobOutcome> outcomes;
  std::map<int64_t, const json*> row_of;
  for (const json& row : specs) {
    JobOutcome o;
    o.job_id = row["id"].get<int64_t>();
    const auto state = state_of.find(o.job_id);
    if (state == state_of.end()) continue;
    o.spec = job_spec_from_json(row["spec"]);
    o.status = state->second->status;
    o.final_val_loss = state->second->final_val_loss;
    row_of[o.job_id] = &row;
    outcomes.push_back(std::move(o));
  }
  std::vector<db::NewJob> jobs;
  for (const SeedRequest& request : seeds_to_add(outcomes, "", options))
    jobs.push_back(seed_job(*row_of.at(request.template_job_id), request));
  if (jobs.empty()) return {};
  return store.add_jobs(matrix_id, jobs);
}

}  // namespace

std::vector<int64_t> add_decided_seeds(db::Store& store, int64_t matrix_id) {
  const std::optional<DecideOptions> options = matrix_decide_options(store, matrix_id);
  if (!options) return {};
  std::vector<int64_t> added;
  // Each look adds at most one seed per step, and no step goes past max_seeds: this ends.
  for (int look = 0; look <= options->max_seeds; ++look) {
    const std::vector<int64_t> ids = add_seeds_once(store, matrix_id, *options);
    if (ids.empty()) break;
    added.insert(added.end(), ids.begin(), ids.end());
  }
  return added;
}

}  // namespace ratio::daemon

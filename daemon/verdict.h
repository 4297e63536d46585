#pragma once
// Verdicts: the per-job results of one matrix -> the comparison rows of GET /api/matrices/{id}/results.
//
// A pure function: no I/O, no database. The daemon gathers each job's spec, status, final metrics,
// last alphas and last gradient norms into JobOutcome, calls judge_matrix, and serves to_json(table)
// with "matrix" added. The rules are those of ../shared/spec/mechanisms.md §Judging:
//   efficiency = (baseline_val_loss - val_loss) / added_params_in_millions, compared with plain scaling
//   (a step of the same matrix whose only change from the baseline is a wider MLP);
//   KEEP when better than the baseline beyond noise with healthy gradients;
//   REMOVE when the learned alphas went to ~0, or efficiency is below plain scaling, or worse beyond noise;
//   otherwise INVESTIGATE.
// Noise: jobs of the same step are seeds (tagged seed:N). With >= 2 finished seeds on both sides a
// difference is "within noise" when |delta| < noise_sigmas * sqrt(std_step^2 + std_baseline^2); with a
// single seed on either side, when |delta| < single_run_noise (the study measured 0.03 between identical runs).

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "daemon/decide.h"
#include "matrix/job_spec.h"

namespace ratio {

// What the daemon knows about one job of the matrix.
struct JobOutcome {
  int64_t job_id = 0;
  JobSpec spec;                          // step, name, tags (seed:N), model and train config
  std::string status;                    // queued | running | succeeded | failed | cancelled
  std::string reason;                    // why the last attempt failed, when it did
  std::optional<double> final_val_loss;  // from the `finished` result
  std::optional<double> best_val_loss;
  std::optional<double> tokens_per_s;
  int64_t params_total = 0;                  // ParamCounts.total of the job
  int64_t params_added = 0;                  // ParamCounts.added (negative when the step removes parameters)
  std::map<std::string, double> alphas;      // the last `alphas` event: full name -> value
  std::map<std::string, double> grad_norms;  // the last `grad_norms` event: parameter -> L2 norm of its gradient
};

struct VerdictOptions {
  double single_run_noise = 0.03;  // val-loss spread between identical single-seed runs
  double noise_sigmas = 2.0;       // with seeds: within noise when |delta| < noise_sigmas * combined std
  double dead_alpha = 0.01;        // mixing alphas with mean |value| below this count as switched off
  double dead_grad_norm = 1e-8;    // a key parameter whose final gradient norm is below this gets no gradient
  // The matrix's `decide:`: each step's Δ is then judged by the sequential rule of daemon/decide.h on
  // seeds paired with the baseline's, and that decision replaces the noise rule above.
  std::optional<DecideOptions> decide;
};

// A seed ratiod added to a step because its effect was still open (its job carries the tag
// "decide:<reason>").
struct SeedAdded {
  int64_t job_id = 0;
  uint64_t seed = 0;
  std::string reason;
};

// One row per step (its seeds aggregated). Optional fields are JSON null when unknown.
struct ResultRow {
  int64_t job_id = 0;  // the step's first job (lowest id)
  std::string step;
  std::string name;
  std::string status;  // the step's status: failed > running > queued > cancelled > succeeded over its jobs
  std::optional<double> final_val_loss;  // mean over finished seeds
  std::optional<double> best_val_loss;   // mean over finished seeds
  std::optional<double> delta;           // final_val_loss - baseline's (negative = better)
  std::optional<double> delta_pct;       // delta as % of the baseline's final val loss
  int64_t params_total = 0;
  int64_t params_added = 0;
  std::optional<double> efficiency;    // loss improvement per million added parameters (null when added <= 0)
  std::optional<double> tokens_per_s;  // mean over finished seeds
  std::string verdict;         // KEEP | REMOVE | INVESTIGATE | BASELINE; empty (JSON null) while results are missing
  std::string verdict_reason;  // one sentence with the numbers behind the verdict
  std::map<std::string, double> alphas;  // final mixing alphas (mean over seeds)
  int seeds = 0;                         // finished runs aggregated into this row
  std::optional<double> val_loss_std;    // sample std of final val loss over seeds (>= 2 seeds)
  std::optional<bool> within_noise;      // |delta| below the noise threshold
  std::vector<std::string> dead_params;  // key parameters with ~0 final gradient norm (any seed)
  std::optional<Decision> decision;      // with `decide`: the sequential decision on the paired seeds
  std::vector<SeedAdded> seeds_added;    // with `decide`: why each added seed was added
};

struct ResultsTable {
  std::string baseline_step;       // empty when the matrix has no baseline step
  std::string plain_scaling_step;  // the wider-MLP reference step, empty when none
  std::optional<double> plain_scaling_efficiency;
  std::vector<ResultRow> rows;  // in order of first appearance of each step in `jobs`
  std::optional<DecideOptions> decide;
  int open_steps = 0;                     // with `decide`: steps still deciding
  std::optional<double> gpu_seconds_left;  // at most, for their remaining seeds, from measured tokens/s
};

// The tag ratiod puts on a seed it added: "decide:" + the reason.
inline const std::string kDecideTag = "decide:";

// Paired differences step − baseline of final val loss, over the seed numbers both finished.
std::vector<double> paired_differences(const std::vector<const JobOutcome*>& step,
                                       const std::vector<const JobOutcome*>& baseline);

// baseline_step: the matrix's declared baseline; empty = step "0".
ResultsTable judge_matrix(const std::vector<JobOutcome>& jobs, const std::string& baseline_step = "",
                          const VerdictOptions& options = {});

// The row object of docs/api.md.
nlohmann::json to_json(const ResultRow& row);
// {"baseline_step", "plain_scaling": {"step", "efficiency"} or null, "rows": [...]}; the daemon adds "matrix".
nlohmann::json to_json(const ResultsTable& table);

}  // namespace ratio

#pragma once
// `decide:` matrices: which seeds ratiod adds while a step's effect is open (daemon/decide.h), and
// adding them. Called on the writer thread in the transaction that submits a matrix and in the one
// that ends each attempt, so a decide matrix is never left finished with a step still open.
//
// A step gets one more seed when every job it has succeeded, each of its seeds has a finished
// baseline seed of the same number, the decision on those pairs is "open", and it has fewer than
// max_seeds jobs. The new seed is 1 + the step's highest seed; the baseline gets that seed too when
// it lacks it (one baseline seed serves every step). A step with a failed or cancelled seed waits:
// that seed is retried or rerun under the usual rules before any decision uses it.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "daemon/decide.h"
#include "daemon/verdict.h"
#include "db/store.h"

namespace ratio::daemon {

struct SeedRequest {
  std::string step;
  uint64_t seed = 0;
  int64_t template_job_id = 0;  // the step's first job: the new one copies its spec but the seed
  std::string reason;
};

// baseline_step as in judge_matrix ("" = step "0").
std::vector<SeedRequest> seeds_to_add(const std::vector<JobOutcome>& jobs, const std::string& baseline_step,
                                      const DecideOptions& options);

// The matrix's `decide` options, stored with it at submit; none when it has no `decide`.
std::optional<DecideOptions> matrix_decide_options(db::Store& store, int64_t matrix_id);

// Queues the seeds the matrix of `matrix_id` needs now (none unless it has `decide`). Returns the new job ids.
std::vector<int64_t> add_decided_seeds(db::Store& store, int64_t matrix_id);

}  // namespace ratio::daemon

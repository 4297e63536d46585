#pragma once
// Ablation matrices: a YAML (or JSON, same structure) file of named steps -> one resolved JobSpec per
// job, with its config hash, parameter counts and lint warnings. Used by the daemon (POST /api/expand,
// POST /api/matrices), the `ratio` CLI (`ratio expand`, `ratio submit`) and, through the daemon, the web
// submit page. The file format, presets and lint rules are documented in docs/matrix.md.
//
//   Expansion e = expand_matrix(text, "demo.yaml");   // throws MatrixError, nothing partial
//   nlohmann::json j = to_json(e);                    // {"matrix": {...}, "jobs": [...], "warnings": [...]}
//   e.jobs[0].spec                                    // a valid `ratio-worker run --job` once saved as JSON
//
//   Expansion d = expand_preset("demo");              // built-in presets, embedded at build time
//   for (const PresetInfo& p : list_presets()) ...    // name, description, steps, jobs
//   preset_text("demo")                               // the preset's YAML, for GET /api/presets/{name}
//
// Errors carry file, line and column (1-based) and the key path inside the file, e.g.
//   demo.yaml:14:23: steps[2].mla.latent_dim: expected an integer, got "big"; write a value like 128

#include <stdexcept>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "matrix/job_spec.h"
#include "matrix/params.h"

namespace ratio {

// ---- errors -------------------------------------------------------------------------------------

// One problem in a matrix file. line/column are 1-based; 0 when the file as a whole is meant.
// path is the key path inside the file ("steps[2].mla.latent_dim"); empty for syntax errors.
struct MatrixProblem {
  std::string file;
  int line = 0;
  int column = 0;
  std::string path;
  std::string message;  // what is wrong and how to fix it

  std::string to_string() const;  // "file:line:column: path: message"
};

// Thrown for any invalid matrix: YAML syntax, unknown keys, wrong types, out-of-range values,
// impossible combinations, duplicate step ids. Lists every problem found; the first is primary.
class MatrixError : public std::runtime_error {
 public:
  explicit MatrixError(std::vector<MatrixProblem> problems);
  const std::vector<MatrixProblem>& problems() const { return problems_; }
  const MatrixProblem& primary() const { return problems_.front(); }

 private:
  std::vector<MatrixProblem> problems_;
};

// For the API's 400 answer: {"error": primary as one line, "file", "line", "column", "path",
// "errors": [{"error", "file", "line", "column", "path"}, ...every problem]}.
nlohmann::json to_json(const MatrixError& error);

// ---- expansion ----------------------------------------------------------------------------------

struct ExpandedJob {
  JobSpec spec;             // fully resolved; spec.step is the job's step id ("3", "19", "ratio-2.5", "2/mlp_ratio=3")
  std::string config_hash;  // config_hash(spec)
  ParamCounts params;       // param_formula(spec.model)
};

// A lint finding: the matrix is valid but probably not what was meant.
struct LintWarning {
  std::string rule;                // duplicate_config | same_model | no_effect | option_on_disabled | forced_twin_without_gates
  std::vector<std::string> steps;  // the step ids concerned
  std::string message;
};

// `decide:` — ratiod adds seeds to a step until its effect on val loss against the baseline is
// settled (daemon/decide.h has the rule). Absent: the listed seeds only.
struct DecideConfig {
  int max_seeds = 8;         // seeds per step at most, the listed ones included
  double confidence = 0.95;  // for the whole sequence of looks
  double min_effect = 0.01;  // the smallest val-loss gain (nats) that counts as better
};

struct Expansion {
  std::string name;
  std::string description;
  int max_attempts = 3;  // attempts per job before it counts as failed (retryable causes only)
  int priority = 0;      // higher runs first
  std::string source;    // the file name the matrix came from (as given to expand_matrix)
  std::optional<DecideConfig> decide;
  int steps = 0;         // steps including derived forced-gates twins, before the seeds and grid axes
  std::vector<ExpandedJob> jobs;  // in step order; per step: grid values, then seeds
  std::vector<LintWarning> warnings;
};

// ---- file confinement ---------------------------------------------------------------------------

// The folders jobs may read files from. ratiod passes its --data-dir and every --allow-path, so a
// matrix submitted over HTTP cannot make a worker open /etc/shadow: data.dataset and
// train.init_from are resolved as the worker resolves them (named datasets under data_dir,
// relative paths from the current directory, symlinks followed) and must land inside one of them.
struct PathRoots {
  std::string data_dir;              // the workers' --data-dir, absolute
  std::vector<std::string> allowed;  // data_dir, then each --allow-path; absolute, symlinks resolved
};

PathRoots make_path_roots(const std::string& data_dir, const std::vector<std::string>& allow_paths);
// {"data.dataset", "'/etc' resolves to /etc, outside ..."} per escaping key; empty when confined.
std::vector<SpecError> confinement_errors(const JobSpec& spec, const PathRoots& roots);

// Parses and expands a matrix. `text` is YAML or JSON; `source` names it in error messages. With
// `confine`, a job whose files lie outside its roots is an error at the key that names them.
Expansion expand_matrix(const std::string& text, const std::string& source, const PathRoots* confine = nullptr);
// Reads the file and expands it (source = the path as given).
Expansion expand_matrix_file(const std::string& path);

// {"matrix": {"name", "description", "max_attempts", "priority", "source", "steps", "jobs",
//             "decide": {"max_seeds", "confidence", "min_effect"} or null},
//  "jobs": [{"step", "name", "config": <full JobSpec JSON>, "config_hash", "params"}],
//  "warnings": [{"rule", "steps", "message"}]}
nlohmann::json to_json(const Expansion& expansion);
nlohmann::json to_json(const LintWarning& warning);
// {"total", "baseline", "added", "effective", "by_mechanism": {category: count}}
nlohmann::json param_counts_to_json(const ParamCounts& params);

// ---- presets ------------------------------------------------------------------------------------

struct PresetInfo {
  std::string name;
  std::string description;
  int steps = 0;  // steps after deriving forced-gates twins
  int jobs = 0;   // jobs after the seeds and grid axes
};

std::vector<PresetInfo> list_presets();  // in a fixed order, the study's full matrix first
bool has_preset(const std::string& name);
// The preset's YAML text; throws std::invalid_argument naming the known presets.
const std::string& preset_text(const std::string& name);
Expansion expand_preset(const std::string& name);

}  // namespace ratio

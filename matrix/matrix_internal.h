#pragma once
// Shared between matrix.cpp (parse + expand), lint.cpp and presets.cpp; not part of the public API.

#include <map>
#include <string>
#include <vector>

#include "matrix/matrix.h"

namespace ratio::matrix_detail {

// Where a value of a resolved job came from in the matrix file.
struct Origin {
  int line = 0;         // 1-based, of the value
  int column = 0;
  int key_line = 0;     // 1-based, of its key (same as the value inside a list)
  int key_column = 0;
  std::string path;     // key path in the file: "steps[2].mla.latent_dim"
  bool from_step = false;  // set by a step, a grid value or a seed (not by `base`)
};

// Job spec path ("model.mla.latent_dim") -> where its value was written.
using Origins = std::map<std::string, Origin>;

// A job before and after resolution, with what lint needs to know about it.
struct ResolvedJob {
  ExpandedJob job;
  std::string step_id;  // the step (or twin) it was expanded from, without grid suffix
  Origins origins;
};

// Lint over the resolved jobs of one matrix (docs/matrix.md, "Lint rules").
std::vector<LintWarning> lint(const std::vector<ResolvedJob>& jobs);

// True when the model has a learnable sigmoid gate that force_gates_open would replace:
// mechanism 1, RA-CT, or mechanism 3 with per_head_scalar tying.
bool has_learnable_gate(const ModelConfig& model);

// Embedded preset files (generated from matrix/presets/*.yaml at build time).
struct EmbeddedPreset {
  const char* name;  // file stem
  const char* text;  // YAML
};
const std::vector<EmbeddedPreset>& embedded_presets();

}  // namespace ratio::matrix_detail

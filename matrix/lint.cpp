// Lint: a valid matrix that probably does not say what was meant. Warnings, never errors.
// The rules (docs/matrix.md) come from the study's silent failures: step 2 trained the same model
// as step 8, and switches were set that the built model ignored.

#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "matrix/matrix_internal.h"

namespace ratio::matrix_detail {

namespace {

std::string steps_text(const std::vector<std::string>& steps) {
  std::string s;
  for (size_t i = 0; i < steps.size(); ++i) {
    s += (i == 0 ? "" : i + 1 == steps.size() ? " and " : ", ") + steps[i];
  }
  return s;
}

// The model a job actually trains: options that cannot change the result are reset to their
// defaults, so two jobs differing only there compare equal.
JobSpec effective_spec(JobSpec s) {
  ModelConfig& m = s.model;
  const ModelConfig d;
  if (m.force_gates_open) {
    // Mechanism 1 and RA-CT become the identity (docs/architecture.md), and per_head_scalar's head
    // gates the constant 1, which leaves the untied coupler.
    m.mlp_gate.enabled = false;
    m.ra_ct.enabled = false;
    if (m.mlp_latent.tying == "per_head_scalar") m.mlp_latent.tying = "untied";
    m.force_gates_open = false;
  }
  if (m.ra.enabled && m.ra.alpha == 0.0 && !m.ra.learnable) m.ra.enabled = false;
  // Only the rounded width is built: ratios 2.667 and 2.6667 both give 2048 units at C = 768.
  m.mlp_ratio = m.learned_ratio.enabled ? d.mlp_ratio : double(m.mlp_hidden()) / m.n_embd;
  if (m.mla.enabled) m.mlp_latent.latent_dim = d.mlp_latent.latent_dim;
  if (m.ra_ct.mode != "topk") m.ra_ct.k = d.ra_ct.k;
  if (m.ra_ct.apply == "output") m.ra_ct.alpha = d.ra_ct.alpha;
  if (m.mlp_cross.sparsify != "topk") m.mlp_cross.k = d.mlp_cross.k;
  if (!m.learned_ratio.enabled) m.learned_ratio = d.learned_ratio;
  if (!m.mla.enabled) m.mla = d.mla;
  if (!m.ra.enabled) m.ra = d.ra;
  if (!m.ra_ct.enabled) m.ra_ct = d.ra_ct;
  if (!m.mlp_gate.enabled) m.mlp_gate = d.mlp_gate;
  if (!m.mlp_cross.enabled) m.mlp_cross = d.mlp_cross;
  if (!m.mlp_latent.enabled) m.mlp_latent = d.mlp_latent;
  const TrainConfig td;
  if (!s.train.prune.enabled) s.train.prune = td.prune;
  if (!s.train.spam.enabled) s.train.spam = td.spam;
  return s;
}

// Leaf paths ("model.ra_ct.enabled") whose values differ between two JSON objects.
void differing_paths(const nlohmann::json& a, const nlohmann::json& b, const std::string& path,
                     std::vector<std::string>& out) {
  if (a.is_object() && b.is_object()) {
    for (const auto& [key, value] : a.items()) {
      if (b.contains(key)) differing_paths(value, b[key], path.empty() ? key : path + "." + key, out);
    }
  } else if (a != b) {
    out.push_back(path);
  }
}

// Rules 1 and 2: identical configs, and configs that differ only in switches without effect.
void same_config(const std::vector<ResolvedJob>& jobs, std::vector<LintWarning>& out) {
  std::map<std::string, std::vector<size_t>> by_hash, by_model;
  for (size_t i = 0; i < jobs.size(); ++i) {
    by_hash[jobs[i].job.config_hash].push_back(i);
    by_model[config_hash(effective_spec(jobs[i].job.spec))].push_back(i);
  }
  for (const auto& [hash, group] : by_hash) {
    if (group.size() < 2) continue;
    std::vector<std::string> steps;
    for (size_t i : group) steps.push_back(jobs[i].job.spec.step);
    out.push_back({"duplicate_config", steps,
                   "steps " + steps_text(steps) + " resolve to the same config (hash " + hash +
                       "): they train the same model twice; change or remove all but one"});
  }
  for (const auto& [hash, group] : by_model) {
    std::set<std::string> configs;
    for (size_t i : group) configs.insert(jobs[i].job.config_hash);
    if (configs.size() < 2) continue;  // identical configs were reported above
    std::vector<std::string> steps;
    for (size_t i : group) steps.push_back(jobs[i].job.spec.step);
    const JobSpec& a = jobs[group[0]].job.spec;
    const JobSpec* b = &a;
    for (size_t i : group) {
      if (jobs[i].job.config_hash != jobs[group[0]].job.config_hash) b = &jobs[i].job.spec;
    }
    std::vector<std::string> diff;
    for (const char* section : {"model", "train", "data"}) {
      differing_paths(to_json(a)[section], to_json(*b)[section], section, diff);
    }
    out.push_back({"same_model", steps,
                   "steps " + steps_text(steps) + " train the same model: they differ only in settings without effect here, " +
                       steps_text(diff) + " (forced-open gates make mechanism 1 and RA-CT the identity; "
                       "options of a disabled mechanism are unused); make them differ or drop one"});
  }
}

bool set_in_step(const ResolvedJob& r, const std::string& path) {
  auto it = r.origins.find(path);
  return it != r.origins.end() && it->second.from_step;
}

// Rule 3: switches that have no effect in this step.
void no_effect(const ResolvedJob& r, std::vector<LintWarning>& out) {
  const ModelConfig& m = r.job.spec.model;
  const std::string& step = r.step_id;
  auto warn = [&](const std::string& message) { out.push_back({"no_effect", {step}, "step " + step + ": " + message}); };
  if (m.ra.enabled && m.ra.alpha == 0.0) {
    warn(m.ra.learnable ? "ra.alpha is 0: the reciprocal term starts switched off and only grows if training moves it; "
                          "use `ra: false` for no RA, or a non-zero alpha"
                        : "ra.alpha is 0 and not learnable: RA adds nothing; use `ra: false` or a non-zero alpha");
  }
  if (m.force_gates_open && m.mlp_gate.enabled) {
    warn("mlp_gate with force_gates_open is the identity ((1-a)*y + a*y = y): this trains the model without "
         "mechanism 1");
  }
  if (m.force_gates_open && m.ra_ct.enabled) {
    warn("ra_ct with force_gates_open is the identity (every gate is 1): this trains the model without RA-CT");
  }
  if (m.force_gates_open && !m.mlp_gate.enabled && !m.ra_ct.enabled &&
      !(m.mlp_latent.enabled && m.mlp_latent.tying == "per_head_scalar")) {
    warn("force_gates_open has no effect: no mechanism with a learnable gate is enabled");
  }
  if (m.mlp_gate.enabled && m.mlp_gate.alpha == 0.0) warn("mlp_gate.alpha is 0: mechanism 1 starts with no effect");
  if (m.mlp_cross.enabled && m.mlp_cross.alpha == 0.0) warn("mlp_cross.alpha is 0: mechanism 2 starts with no effect");
  if (m.mlp_latent.enabled && m.mlp_latent.alpha_mlp == 0.0 && m.mlp_latent.alpha_attn == 0.0) {
    warn("mlp_latent.alpha_mlp and alpha_attn are 0: mechanism 3 starts with no effect");
  }
  if (m.ra_ct.enabled && m.ra_ct.apply == "weights" && m.ra_ct.alpha == 0.0) {
    warn("ra_ct.alpha is 0 with apply: weights: the gate is not mixed in");
  }
  if (m.learned_ratio.enabled && set_in_step(r, "model.mlp_ratio")) {
    warn("mlp_ratio is ignored with learned_ratio (the width is learned up to learned_ratio.max_ratio)");
  }
  if (m.mla.enabled && m.mlp_latent.enabled && set_in_step(r, "model.mlp_latent.latent_dim")) {
    warn("mlp_latent.latent_dim is ignored with MLA (mechanism 3 uses MLA's latent; set mla.latent_dim)");
  }
  if (m.ra_ct.enabled && m.ra_ct.mode != "topk" && set_in_step(r, "model.ra_ct.k")) {
    warn("ra_ct.k is only used by mode topk, not " + m.ra_ct.mode);
  }
  if (m.ra_ct.enabled && m.ra_ct.apply == "output" && set_in_step(r, "model.ra_ct.alpha")) {
    warn("ra_ct.alpha is only used with apply: weights");
  }
  if (m.mlp_cross.enabled && m.mlp_cross.sparsify != "topk" && set_in_step(r, "model.mlp_cross.k")) {
    warn("mlp_cross.k is only used by sparsify: topk, not " + m.mlp_cross.sparsify);
  }
}

// Rule 4: options a step sets on a mechanism that is off.
void option_on_disabled(const ResolvedJob& r, std::vector<LintWarning>& out) {
  const nlohmann::json spec = to_json(r.job.spec);
  const std::vector<std::string> mechanisms = {"model.mla",       "model.ra",         "model.ra_ct",
                                               "model.mlp_gate",  "model.mlp_cross",  "model.mlp_latent",
                                               "model.learned_ratio", "train.spam",   "train.prune"};
  for (const auto& mechanism : mechanisms) {
    const size_t dot = mechanism.find('.');
    const auto& section = spec[mechanism.substr(0, dot)][mechanism.substr(dot + 1)];
    if (section["enabled"].get<bool>()) continue;
    for (const auto& [key, value] : section.items()) {
      if (key == "enabled" || !set_in_step(r, mechanism + "." + key)) continue;
      const Origin& o = r.origins.at(mechanism + "." + key);
      out.push_back({"option_on_disabled", {r.step_id},
                     "step " + r.step_id + ": " + o.path + " (line " + std::to_string(o.line) + ") is set but " +
                         mechanism.substr(dot + 1) + " is disabled; enable it or remove the option"});
    }
  }
}

}  // namespace

std::vector<LintWarning> lint(const std::vector<ResolvedJob>& jobs) {
  std::vector<LintWarning> all;
  same_config(jobs, all);
  for (const auto& r : jobs) {
    no_effect(r, all);
    option_on_disabled(r, all);
  }
  // Seeds and grid values repeat a step's findings; keep each message once.
  std::vector<LintWarning> unique;
  std::set<std::string> seen;
  for (auto& w : all) {
    if (seen.insert(w.rule + "\n" + w.message).second) unique.push_back(std::move(w));
  }
  return unique;
}

}  // namespace ratio::matrix_detail

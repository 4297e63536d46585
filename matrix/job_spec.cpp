#include "matrix/job_spec.h"

#include <cmath>
#include <cstdio>
#include <set>

#include <nlohmann/json.hpp>

namespace ratio {

using nlohmann::json;

namespace {

std::string join_path(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

// Reads one JSON object strictly: every key read is remembered, and finish() reports the rest
// as unknown. Errors accumulate so the user sees all of them at once.
class Reader {
 public:
  Reader(const json& j, std::string path, std::vector<SpecError>& errors)
      : j_(j), path_(std::move(path)), errors_(errors) {
    if (!j_.is_object()) error(path_, "expected an object, got " + std::string(j_.type_name()));
  }

  void boolean(const char* key, bool& out) {
    const json* v = find(key);
    if (!v) return;
    if (!v->is_boolean()) return type_error(key, "true or false", *v);
    out = v->get<bool>();
  }

  void string(const char* key, std::string& out, std::set<std::string> allowed = {}) {
    const json* v = find(key);
    if (!v) return;
    if (!v->is_string()) return type_error(key, "a string", *v);
    std::string s = v->get<std::string>();
    if (!allowed.empty() && !allowed.count(s)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      error(join_path(path_, key), "'" + s + "' is not one of: " + list);
      return;
    }
    out = s;
  }

  template <typename Int>
  void integer(const char* key, Int& out, int64_t lo, int64_t hi) {
    const json* v = find(key);
    if (!v) return;
    if (!v->is_number_integer() && !v->is_number_unsigned()) return type_error(key, "an integer", *v);
    int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) {
      error(join_path(path_, key),
            std::to_string(x) + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
      return;
    }
    out = static_cast<Int>(x);
  }

  void number(const char* key, double& out, double lo, double hi) {
    const json* v = find(key);
    if (!v) return;
    if (!v->is_number()) return type_error(key, "a number", *v);
    double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "%g is out of range [%g, %g]", x, lo, hi);
      error(join_path(path_, key), buf);
      return;
    }
    out = x;
  }

  // A nested object handed to `parse`, which gets (json, path).
  template <typename Fn>
  void object(const char* key, Fn parse) {
    const json* v = find(key);
    if (!v) return;
    parse(*v, join_path(path_, key));
  }

  void string_list(const char* key, std::vector<std::string>& out) {
    const json* v = find(key);
    if (!v) return;
    if (!v->is_array()) return type_error(key, "a list of strings", *v);
    out.clear();
    for (const auto& item : *v) {
      if (!item.is_string()) return type_error(key, "a list of strings", *v);
      out.push_back(item.get<std::string>());
    }
  }

  // Reports keys nobody asked for, with the known ones as the fix.
  void finish() {
    if (!j_.is_object()) return;
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (seen_.count(it.key())) continue;
      std::string known;
      for (const auto& k : seen_) known += (known.empty() ? "" : ", ") + k;
      error(join_path(path_, it.key()), "unknown key; known keys here: " + known);
    }
  }

 private:
  const json* find(const char* key) {
    seen_.insert(key);
    if (!j_.is_object()) return nullptr;
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  void type_error(const char* key, const std::string& want, const json& got) {
    error(join_path(path_, key), "expected " + want + ", got " + got.dump());
  }
  void error(const std::string& path, const std::string& msg) { errors_.push_back({path, msg}); }

  const json& j_;
  std::string path_;
  std::vector<SpecError>& errors_;
  std::set<std::string> seen_;
};

constexpr int64_t kBig = 1LL << 40;

void read_model(const json& j, const std::string& path, ModelConfig& m, std::vector<SpecError>& errs) {
  Reader r(j, path, errs);
  r.integer("n_layer", m.n_layer, 1, 256);
  r.integer("n_head", m.n_head, 1, 256);
  r.integer("n_embd", m.n_embd, 1, 65536);
  r.integer("vocab_size", m.vocab_size, 2, 1 << 22);
  r.integer("block_size", m.block_size, 1, 1 << 20);
  r.integer("vocab_pad_to", m.vocab_pad_to, 1, 4096);
  r.number("mlp_ratio", m.mlp_ratio, 0.01, 64.0);
  r.number("dropout", m.dropout, 0.0, 0.99);
  r.boolean("force_gates_open", m.force_gates_open);
  r.object("learned_ratio", [&](const json& v, const std::string& p) {
    Reader s(v, p, errs);
    s.boolean("enabled", m.learned_ratio.enabled);
    s.number("init", m.learned_ratio.init, 0.01, 64.0);
    s.number("max_ratio", m.learned_ratio.max_ratio, 0.01, 64.0);
    s.number("tau", m.learned_ratio.tau, 1e-3, 1e6);
    s.finish();
  });
  r.object("mla", [&](const json& v, const std::string& p) {
    Reader s(v, p, errs);
    s.boolean("enabled", m.mla.enabled);
    s.integer("latent_dim", m.mla.latent_dim, 1, 65536);
    s.finish();
  });
  r.object("ra", [&](const json& v, const std::string& p) {
    Reader s(v, p, errs);
    s.boolean("enabled", m.ra.enabled);
    s.number("alpha", m.ra.alpha, -10.0, 10.0);
    s.boolean("learnable", m.ra.learnable);
    s.integer("window", m.ra.window, 0, 1 << 20);
    s.finish();
  });
  r.object("ra_ct", [&](const json& v, const std::string& p) {
    Reader s(v, p, errs);
    s.boolean("enabled", m.ra_ct.enabled);
    s.string("mode", m.ra_ct.mode, {"topk", "max", "entropy", "rms"});
    s.string("apply", m.ra_ct.apply, {"output", "weights"});
    s.number("alpha", m.ra_ct.alpha, -10.0, 10.0);
    s.integer("k", m.ra_ct.k, 1, 1 << 20);
    s.finish();
  });
  r.object("mlp_gate", [&](const json& v, const std::string& p) {
    Reader s(v, p, errs);
    s.boolean("enabled", m.mlp_gate.enabled);
    s.number("alpha", m.mlp_gate.alpha, -10.0, 10.0);
    s.integer("gate_dim", m.mlp_gate.gate_dim, 1, 65536);
    s.finish();
  });
  r.object("mlp_cross", [&](const json& v, const std::string& p) {
    Reader s(v, p, errs);
    s.boolean("enabled", m.mlp_cross.enabled);
    s.number("alpha", m.mlp_cross.alpha, -10.0, 10.0);
    s.string("sparsify", m.mlp_cross.sparsify, {"none", "topk", "rms"});
    s.integer("k", m.mlp_cross.k, 1, 1 << 20);
    s.finish();
  });
  r.object("mlp_latent", [&](const json& v, const std::string& p) {
    Reader s(v, p, errs);
    s.boolean("enabled", m.mlp_latent.enabled);
    s.number("alpha_mlp", m.mlp_latent.alpha_mlp, -10.0, 10.0);
    s.number("alpha_attn", m.mlp_latent.alpha_attn, -10.0, 10.0);
    s.string("tying", m.mlp_latent.tying, {"untied", "tied_transpose", "per_head_scalar"});
    s.integer("latent_dim", m.mlp_latent.latent_dim, 1, 65536);
    s.finish();
  });
  r.finish();
}

void read_train(const json& j, const std::string& path, TrainConfig& t, std::vector<SpecError>& errs) {
  Reader r(j, path, errs);
  r.integer("max_iters", t.max_iters, 1, kBig);
  r.integer("batch_size", t.batch_size, 1, 1 << 16);
  r.integer("grad_accum", t.grad_accum, 1, 1 << 16);
  r.number("lr", t.lr, 0.0, 10.0);
  r.number("min_lr", t.min_lr, 0.0, 10.0);
  r.integer("warmup_iters", t.warmup_iters, 0, kBig);
  r.number("weight_decay", t.weight_decay, 0.0, 10.0);
  r.number("beta1", t.beta1, 0.0, 0.999999);
  r.number("beta2", t.beta2, 0.0, 0.999999);
  r.number("grad_clip", t.grad_clip, 0.0, 1e6);
  r.integer("eval_interval", t.eval_interval, 1, kBig);
  r.integer("eval_batches", t.eval_batches, 1, 1 << 20);
  r.integer("checkpoint_interval", t.checkpoint_interval, 1, kBig);
  r.integer("log_interval", t.log_interval, 1, kBig);
  r.integer("grad_norm_interval", t.grad_norm_interval, 1, kBig);
  r.integer("seed", t.seed, 0, kBig);
  r.string("device", t.device, {"auto", "cpu", "cuda"});
  r.string("dtype", t.dtype, {"auto", "fp32", "bf16"});
  r.string("kernels", t.kernels, {"auto", "fused", "reference"});
  r.string("cuda_graph", t.cuda_graph, {"auto", "on", "off"});
  r.integer("gpus", t.gpus, 1, 64);
  r.string("init_from", t.init_from);
  r.object("spam", [&](const json& v, const std::string& p) {
    Reader s(v, p, errs);
    s.boolean("enabled", t.spam.enabled);
    s.number("theta", t.spam.theta, 1e-6, 1e12);
    s.number("spike_z", t.spam.spike_z, 0.0, 1e6);
    s.integer("reset_interval", t.spam.reset_interval, 0, 1 << 30);
    s.integer("reset_warmup", t.spam.reset_warmup, 0, 1 << 30);
    s.finish();
  });
  r.object("prune", [&](const json& v, const std::string& p) {
    Reader s(v, p, errs);
    s.boolean("enabled", t.prune.enabled);
    s.number("target_sparsity", t.prune.target_sparsity, 0.0, 0.99);
    s.number("start_frac", t.prune.start_frac, 0.0, 1.0);
    s.number("end_frac", t.prune.end_frac, 0.0, 1.0);
    s.integer("interval", t.prune.interval, 1, 1 << 30);
    s.finish();
  });
  r.finish();
}

void read_data(const json& j, const std::string& path, DataConfig& d, std::vector<SpecError>& errs) {
  Reader r(j, path, errs);
  r.string("dataset", d.dataset);
  r.string("tokenizer", d.tokenizer, {"byte", "gpt2"});
  r.finish();
}

void throw_if(std::vector<SpecError> errors) {
  if (!errors.empty()) throw SpecInvalid(std::move(errors));
}

std::string summarize(const std::vector<SpecError>& errors) {
  std::string s = "invalid job spec:";
  for (const auto& e : errors) s += "\n  " + e.path + ": " + e.message;
  return s;
}

}  // namespace

SpecInvalid::SpecInvalid(std::vector<SpecError> errors)
    : std::runtime_error(summarize(errors)), errors_(std::move(errors)) {}

int ModelConfig::padded_vocab() const {
  return (vocab_size + vocab_pad_to - 1) / vocab_pad_to * vocab_pad_to;
}

int ModelConfig::mlp_hidden() const {
  double ratio = learned_ratio.enabled ? learned_ratio.max_ratio : mlp_ratio;
  return static_cast<int>(std::lround(ratio * n_embd));
}

int ModelConfig::attn_latent_dim() const {
  if (mla.enabled) return mla.latent_dim;
  if (mlp_latent.enabled) return mlp_latent.latent_dim;
  return 0;
}

ModelConfig model_config_from_json(const json& j, const std::string& path) {
  ModelConfig m;
  std::vector<SpecError> errors;
  read_model(j, path, m, errors);
  if (errors.empty()) errors = validate(m, path);
  throw_if(std::move(errors));
  return m;
}

TrainConfig train_config_from_json(const json& j, const std::string& path) {
  TrainConfig t;
  std::vector<SpecError> errors;
  read_train(j, path, t, errors);
  throw_if(std::move(errors));
  return t;
}

DataConfig data_config_from_json(const json& j, const std::string& path) {
  DataConfig d;
  std::vector<SpecError> errors;
  read_data(j, path, d, errors);
  throw_if(std::move(errors));
  return d;
}

JobSpec job_spec_from_json(const json& j) {
  JobSpec spec;
  std::vector<SpecError> errors;
  Reader r(j, "", errors);
  r.integer("spec_version", spec.spec_version, 1, 1 << 20);
  if (spec.spec_version != kJobSpecVersion) {
    errors.push_back({"spec_version", "this build reads version " + std::to_string(kJobSpecVersion) +
                                          ", got " + std::to_string(spec.spec_version) +
                                          "; re-expand the matrix with this build"});
  }
  r.string("matrix", spec.matrix);
  r.string("step", spec.step);
  r.string("name", spec.name);
  r.string("description", spec.description);
  r.string_list("tags", spec.tags);
  r.object("model", [&](const json& v, const std::string& p) { read_model(v, p, spec.model, errors); });
  r.object("train", [&](const json& v, const std::string& p) { read_train(v, p, spec.train, errors); });
  r.object("data", [&](const json& v, const std::string& p) { read_data(v, p, spec.data, errors); });
  r.finish();
  if (errors.empty()) errors = validate(spec);
  throw_if(std::move(errors));
  return spec;
}

json to_json(const ModelConfig& m) {
  return {
      {"n_layer", m.n_layer},
      {"n_head", m.n_head},
      {"n_embd", m.n_embd},
      {"vocab_size", m.vocab_size},
      {"block_size", m.block_size},
      {"vocab_pad_to", m.vocab_pad_to},
      {"mlp_ratio", m.mlp_ratio},
      {"dropout", m.dropout},
      {"force_gates_open", m.force_gates_open},
      {"learned_ratio",
       {{"enabled", m.learned_ratio.enabled},
        {"init", m.learned_ratio.init},
        {"max_ratio", m.learned_ratio.max_ratio},
        {"tau", m.learned_ratio.tau}}},
      {"mla", {{"enabled", m.mla.enabled}, {"latent_dim", m.mla.latent_dim}}},
      {"ra",
       {{"enabled", m.ra.enabled}, {"alpha", m.ra.alpha}, {"learnable", m.ra.learnable}, {"window", m.ra.window}}},
      {"ra_ct",
       {{"enabled", m.ra_ct.enabled},
        {"mode", m.ra_ct.mode},
        {"apply", m.ra_ct.apply},
        {"alpha", m.ra_ct.alpha},
        {"k", m.ra_ct.k}}},
      {"mlp_gate", {{"enabled", m.mlp_gate.enabled}, {"alpha", m.mlp_gate.alpha}, {"gate_dim", m.mlp_gate.gate_dim}}},
      {"mlp_cross",
       {{"enabled", m.mlp_cross.enabled},
        {"alpha", m.mlp_cross.alpha},
        {"sparsify", m.mlp_cross.sparsify},
        {"k", m.mlp_cross.k}}},
      {"mlp_latent",
       {{"enabled", m.mlp_latent.enabled},
        {"alpha_mlp", m.mlp_latent.alpha_mlp},
        {"alpha_attn", m.mlp_latent.alpha_attn},
        {"tying", m.mlp_latent.tying},
        {"latent_dim", m.mlp_latent.latent_dim}}},
  };
}

json to_json(const TrainConfig& t) {
  return {
      {"max_iters", t.max_iters},
      {"batch_size", t.batch_size},
      {"grad_accum", t.grad_accum},
      {"lr", t.lr},
      {"min_lr", t.min_lr},
      {"warmup_iters", t.warmup_iters},
      {"weight_decay", t.weight_decay},
      {"beta1", t.beta1},
      {"beta2", t.beta2},
      {"grad_clip", t.grad_clip},
      {"eval_interval", t.eval_interval},
      {"eval_batches", t.eval_batches},
      {"checkpoint_interval", t.checkpoint_interval},
      {"log_interval", t.log_interval},
      {"grad_norm_interval", t.grad_norm_interval},
      {"seed", t.seed},
      {"device", t.device},
      {"dtype", t.dtype},
      {"kernels", t.kernels},
      {"cuda_graph", t.cuda_graph},
      {"gpus", t.gpus},
      {"init_from", t.init_from},
      {"spam",
       {{"enabled", t.spam.enabled},
        {"theta", t.spam.theta},
        {"spike_z", t.spam.spike_z},
        {"reset_interval", t.spam.reset_interval},
        {"reset_warmup", t.spam.reset_warmup}}},
      {"prune",
       {{"enabled", t.prune.enabled},
        {"target_sparsity", t.prune.target_sparsity},
        {"start_frac", t.prune.start_frac},
        {"end_frac", t.prune.end_frac},
        {"interval", t.prune.interval}}},
  };
}

json to_json(const DataConfig& d) { return {{"dataset", d.dataset}, {"tokenizer", d.tokenizer}}; }

json to_json(const JobSpec& s) {
  return {
      {"spec_version", s.spec_version},
      {"matrix", s.matrix},
      {"step", s.step},
      {"name", s.name},
      {"description", s.description},
      {"tags", s.tags},
      {"model", to_json(s.model)},
      {"train", to_json(s.train)},
      {"data", to_json(s.data)},
  };
}

std::vector<SpecError> validate(const ModelConfig& m, const std::string& path) {
  std::vector<SpecError> e;
  auto at = [&](const std::string& key) { return join_path(path, key); };
  if (m.n_embd % m.n_head != 0) {
    e.push_back({at("n_head"), "n_embd " + std::to_string(m.n_embd) + " is not divisible by n_head " +
                                   std::to_string(m.n_head) + "; pick a head count that divides the width"});
  }
  if (m.ra.enabled && m.ra.window >= m.block_size) {
    e.push_back({at("ra.window"), "window " + std::to_string(m.ra.window) + " >= block_size " +
                                      std::to_string(m.block_size) + "; use 0 for the whole causal context"});
  }
  if (m.learned_ratio.enabled && m.learned_ratio.init > m.learned_ratio.max_ratio) {
    e.push_back({at("learned_ratio.init"), "init ratio exceeds max_ratio; raise max_ratio or lower init"});
  }
  if (m.mlp_hidden() < 1) e.push_back({at("mlp_ratio"), "MLP width rounds to 0; use a larger ratio"});
  if (m.ra_ct.enabled && m.ra_ct.mode == "topk" && m.ra_ct.k > m.block_size) {
    e.push_back({at("ra_ct.k"), "k exceeds block_size"});
  }
  if (m.mlp_cross.enabled && m.mlp_cross.sparsify == "topk" && m.mlp_cross.k > m.block_size) {
    e.push_back({at("mlp_cross.k"), "k exceeds block_size"});
  }
  if (m.mlp_gate.enabled && m.n_layer < 2) {
    e.push_back({at("mlp_gate.enabled"), "mechanism 1 gates the next layer's attention: needs n_layer >= 2"});
  }
  return e;
}

std::vector<SpecError> validate(const JobSpec& s) {
  std::vector<SpecError> e = validate(s.model, "model");
  const TrainConfig& t = s.train;
  if (t.min_lr > t.lr) e.push_back({"train.min_lr", "min_lr exceeds lr; it is the floor of the cosine decay"});
  if (t.warmup_iters > t.max_iters) {
    e.push_back({"train.warmup_iters", "warmup_iters exceeds max_iters; shorten the warm-up"});
  }
  if (t.prune.enabled && t.prune.start_frac >= t.prune.end_frac) {
    e.push_back({"train.prune.end_frac", "end_frac must be after start_frac"});
  }
  if (t.grad_accum % t.gpus != 0) {
    e.push_back({"train.gpus", "gpus " + std::to_string(t.gpus) + " does not divide grad_accum " +
                                   std::to_string(t.grad_accum) +
                                   ": the ranks split the micro-batches of one global batch; pick a divisor"});
  }
  if (s.data.dataset.empty()) e.push_back({"data.dataset", "empty; use \"fortunes\" or a shard directory"});
  return e;
}

std::string config_hash(const JobSpec& spec) {
  // nlohmann::json objects keep keys sorted, so dump() is canonical.
  json body = {{"model", to_json(spec.model)}, {"train", to_json(spec.train)}, {"data", to_json(spec.data)}};
  // train.kernels and train.cuda_graph pick how the same function is computed and train.gpus on how
  // many devices, not what is trained: a job may resume under any of them, and hashes from before the
  // keys existed stay valid.
  body["train"].erase("kernels");
  body["train"].erase("cuda_graph");
  body["train"].erase("gpus");
  std::string text = body.dump();
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace ratio

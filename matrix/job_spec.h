#pragma once
// The job spec: the one contract between the daemon (which stores and dispatches jobs) and
// ratio-worker (which trains one). matrix/ produces it; everything else reads it through here.
// Its JSON form is documented in docs/job-spec.md; spec_version changes when it does.
//
// Every field has the study's default (../shared/spec/ablation-steps.md). Parsing is strict:
// unknown keys, wrong types and out-of-range values are errors that name the JSON path.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace ratio {

constexpr int kJobSpecVersion = 1;

// ---- model ------------------------------------------------------------------------------------

struct MlaConfig {  // multi-latent attention: K and V compressed to a per-token latent
  bool enabled = false;
  int latent_dim = 128;
};

struct RaConfig {  // reciprocal attention: S[i,j] + alpha * S[j,i] inside a band
  bool enabled = false;
  double alpha = 0.3;
  bool learnable = true;
  int window = 64;  // |i-j| <= window gets the reciprocal term; 0 = whole causal context
};

struct RaCtConfig {  // cross-token RA gating from a statistic of each attention row
  bool enabled = false;
  std::string mode = "topk";     // topk | max | entropy | rms
  std::string apply = "output";  // output | weights
  double alpha = 0.2;            // mixing weight when apply == weights
  int k = 8;                     // for mode == topk
};

struct MlpGateConfig {  // mechanism 1: layer n's MLP hidden gates layer n+1's attention heads
  bool enabled = false;
  double alpha = 0.1;
  int gate_dim = 64;
};

struct MlpCrossConfig {  // mechanism 2: cross-token MLP aggregation through attention weights
  bool enabled = false;
  double alpha = 0.3;
  std::string sparsify = "topk";  // none | topk | rms
  int k = 8;
};

struct MlpLatentConfig {  // mechanism 3: attention latent <-> MLP hidden coupler
  bool enabled = false;
  double alpha_mlp = 0.2;   // attention latent -> MLP hidden
  double alpha_attn = 0.2;  // MLP hidden -> next block's attention latent
  std::string tying = "tied_transpose";  // untied | tied_transpose | per_head_scalar
  int latent_dim = 128;  // used without MLA (with MLA the attention latent is MLA's)
};

struct LearnedRatioConfig {  // one MLP of max width with a learned soft width mask per layer
  bool enabled = false;
  double init = 4.0;       // initial ratio r (hidden units ~ r * n_embd)
  double max_ratio = 6.0;  // allocated width = round(max_ratio * n_embd)
  double tau = 8.0;        // mask softness in hidden units
};

struct ModelConfig {
  int n_layer = 12;
  int n_head = 12;
  int n_embd = 768;
  int vocab_size = 50257;
  int block_size = 1024;
  int vocab_pad_to = 1;  // round the embedding rows up to a multiple of this (64 is faster on GPU)
  double mlp_ratio = 4.0;
  double dropout = 0.0;
  bool force_gates_open = false;  // every sigmoid gate becomes the constant 1 (gate params not created)
  LearnedRatioConfig learned_ratio;
  MlaConfig mla;
  RaConfig ra;
  RaCtConfig ra_ct;
  MlpGateConfig mlp_gate;
  MlpCrossConfig mlp_cross;
  MlpLatentConfig mlp_latent;

  int head_dim() const { return n_embd / n_head; }
  int padded_vocab() const;  // vocab_size rounded up to vocab_pad_to
  int mlp_hidden() const;    // allocated MLP width: round(mlp_ratio or max_ratio * n_embd)
  int attn_latent_dim() const;  // MLA's latent, else mechanism 3's own latent, else 0
};

// ---- training ---------------------------------------------------------------------------------

struct SpamConfig {  // spike-aware clipping and momentum resets on top of AdamW
  bool enabled = true;
  double theta = 50.0;      // clip |g| to sqrt(theta * v)
  double spike_z = 2.0;     // grad-norm z-score that counts as a spike
  int reset_interval = 1000;  // full moment reset every N steps (0 = never)
  int reset_warmup = 1000;    // lr warm-up after each reset
};

struct PruneConfig {  // gradual magnitude pruning of Linear weights (step 1)
  bool enabled = false;
  double target_sparsity = 0.5;
  double start_frac = 0.1;  // schedule starts at this fraction of max_iters
  double end_frac = 0.8;    // and reaches the target here (cubic)
  int interval = 100;       // recompute masks every N iterations
};

struct TrainConfig {
  int64_t max_iters = 10400;
  int batch_size = 8;   // micro-batch
  int grad_accum = 8;
  double lr = 6e-4;
  double min_lr = 6e-5;
  int64_t warmup_iters = 2000;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double grad_clip = 1.0;  // 0 = off
  int64_t eval_interval = 500;
  int eval_batches = 25;  // fixed validation batches (25 x batch 8 = the study's 200 samples)
  int64_t checkpoint_interval = 1000;
  int64_t log_interval = 10;
  int64_t grad_norm_interval = 100;
  uint64_t seed = 1337;     // model init and data order
  std::string device = "auto";  // auto | cpu | cuda
  std::string dtype = "auto";   // auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
  // auto: the fused CUDA kernels (model/kernels/) where the build has them and the job runs on CUDA;
  // reference: ATen's ops everywhere (the same function, to compare against); fused: auto, but an
  // error where the kernels cannot run.
  std::string kernels = "auto";  // auto | fused | reference
  // auto: the whole step as one CUDA graph where it can be (CUDA, the fused kernels, a step that
  // captures), else eagerly; on: the same, but an error where it cannot; off: eagerly.
  std::string cuda_graph = "auto";  // auto | on | off
  // Data-parallel ranks, one GPU each (one CPU process each on CPU), on one machine. The global
  // batch stays batch_size × grad_accum: the ranks split the grad_accum micro-batches, so it must
  // divide grad_accum. Not part of config_hash: it changes the speed, not the result.
  int gpus = 1;
  SpamConfig spam;
  PruneConfig prune;
  std::string init_from;  // optional Hugging Face GPT-2 model.safetensors
};

// ---- data -------------------------------------------------------------------------------------

struct DataConfig {
  std::string dataset = "fortunes";  // "fortunes" (built in) or a directory with train/val shards
  std::string tokenizer = "byte";    // byte | gpt2 (must match how the shards were prepared)
};

// ---- the job ----------------------------------------------------------------------------------

struct JobSpec {
  int spec_version = kJobSpecVersion;
  std::string matrix;       // matrix name
  std::string step;         // step id ("0", "19", "ratio-2.5", ...)
  std::string name;         // human name of the step
  std::string description;
  std::vector<std::string> tags;  // e.g. "forced_gates_twin_of:3", "seed:1"
  ModelConfig model;
  TrainConfig train;
  DataConfig data;
};

// One problem in a spec: where (JSON path like "model.mla.latent_dim") and what, with the fix.
struct SpecError {
  std::string path;
  std::string message;
};

class SpecInvalid : public std::runtime_error {
 public:
  explicit SpecInvalid(std::vector<SpecError> errors);
  const std::vector<SpecError>& errors() const { return errors_; }

 private:
  std::vector<SpecError> errors_;
};

// Strict parsing: throws SpecInvalid listing every unknown key, wrong type or bad value.
JobSpec job_spec_from_json(const nlohmann::json& j);
ModelConfig model_config_from_json(const nlohmann::json& j, const std::string& path = "model");
TrainConfig train_config_from_json(const nlohmann::json& j, const std::string& path = "train");
DataConfig data_config_from_json(const nlohmann::json& j, const std::string& path = "data");

// Full form with every field (defaults included), so a stored spec never depends on defaults.
nlohmann::json to_json(const JobSpec& spec);
nlohmann::json to_json(const ModelConfig& model);
nlohmann::json to_json(const TrainConfig& train);
nlohmann::json to_json(const DataConfig& data);

// Cross-field checks (heads divide width, window < block, ...). Empty when valid.
std::vector<SpecError> validate(const ModelConfig& model, const std::string& path = "model");
std::vector<SpecError> validate(const JobSpec& spec);

// Stable hash of what determines the result (model, train, data; not names or tags):
// 16 hex digits of FNV-1a 64 over the canonical JSON. Equal hashes = reusable results.
std::string config_hash(const JobSpec& spec);

}  // namespace ratio

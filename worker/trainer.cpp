#include "worker/trainer.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

#include "matrix/job_spec.h"
#include "model/gpt.h"
#include "model/safetensors.h"
#include "model/torch_compat.h"
#include "ratio/build_info.h"
#include "worker/checkpoint.h"
#include "worker/data.h"
#include "worker/distributed.h"
#include "worker/events.h"
#include "worker/optimizer.h"
#include "worker/ranks.h"
#include "worker/schedule.h"
#include "worker/step_graph.h"
#include "worker/tokenizer.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ratio::worker {

namespace {

std::atomic<int> g_stop_signal{0};
constexpr int64_t kGraphWarmupIters = 3;  // eager iterations before the step is captured
void on_stop_signal(int sig) { g_stop_signal = sig; }  // the loop checkpoints and exits after this step

// A collective that waits this long has lost a peer for good. Far above the longest wait of a
// healthy run (rank 0 writing a checkpoint while the others wait at the next step); rank 0's
// watcher (worker/ranks.h) ends an attempt whose rank died long before.
constexpr auto kCollectiveTimeout = std::chrono::minutes(10);

// A failure with its exit code; the message is the one-line reason.
struct Failure : std::runtime_error {
  Failure(int code, const std::string& reason) : std::runtime_error(reason), code(code) {}
  int code;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

JobSpec read_spec(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Failure(kExitInvalid, "cannot read job spec " + path);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw Failure(kExitInvalid, "job spec " + path + " is not valid JSON: " + e.what());
  }
  try {
    JobSpec spec = job_spec_from_json(j);
    std::vector<SpecError> errors = validate(spec);
    if (!errors.empty()) throw SpecInvalid(errors);
    return spec;
  } catch (const SpecInvalid& e) {
    std::string reason = "invalid job spec " + path + ":";
    for (const SpecError& err : e.errors()) reason += " " + err.path + ": " + err.message + ";";
    throw Failure(kExitInvalid, reason);
  }
}

json params_json(const ParamCounts& p) {
  return {{"total", p.total}, {"baseline", p.baseline}, {"added", p.added}, {"effective", p.effective},
          {"by_mechanism", p.by_mechanism}};
}

json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

// Emits {"type": "heartbeat", "iter": N} every interval from its own thread, N being the iteration
// the loop is on. ratiod's lease then sees a live process through long steps, evals and checkpoints,
// and its watchdog can tell a live process that stopped advancing (a hang) from a dead one.
class Heartbeat {
 public:
  Heartbeat(EventSink& events, const std::atomic<int64_t>& iter, double interval_s) {
    if (interval_s <= 0) return;
    thread_ = std::thread([this, &events, &iter, interval_s] {
      std::unique_lock<std::mutex> lock(mu_);
      const auto interval = std::chrono::duration<double>(interval_s);
      while (!cv_.wait_for(lock, interval, [this] { return stopping_; })) events.emit("heartbeat", {{"iter", iter.load()}});
    });
  }
  ~Heartbeat() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

class Trainer {
 public:
  // `ranks`: on rank 0 of a multi-rank job, the other ranks' processes (else null).
  Trainer(JobSpec spec, const RunOptions& options, EventSink& events, RankProcesses* ranks)
      : spec_(std::move(spec)), train_(spec_.train), options_(options), events_(events), ranks_(ranks) {}

  int run();

 private:
  void choose_device();
  void join_ranks();
  void choose_kernels();
  void choose_graph();
  void graph_off(std::string why, int exit_code);
  void load_data();
  void build_model();
  void resume_if_asked();
  NamedTensors checkpoint_tensors() const;
  void save(int64_t next_iter);
  torch::Tensor batch(const TokenSplit& split, const std::vector<uint64_t>& draws, torch::Tensor& targets) const;
  void train_batches(int64_t iter, torch::Tensor& x, torch::Tensor& y) const;
  void train_iteration(int64_t iter);
  torch::Tensor eager_step(int64_t iter);
  torch::Tensor graph_step(int64_t iter);
  torch::Tensor accumulate_gradients(int64_t iter, const torch::Tensor& x, const torch::Tensor& y, bool reseed);
  void reduce_across_ranks(torch::Tensor& rank_loss);
  torch::Tensor update();
  void log_metric(int64_t iter, const torch::Tensor& norm);
  void log_grad_norms(int64_t iter);
  double evaluate(int64_t iter);
  void check_finite(int64_t iter);
  ParamCounts param_counts() const { return model_->param_report(pruner_ ? pruner_->pruned() : 0); }
  double tokens_per_iter() const {
    return static_cast<double>(train_.batch_size) * train_.grad_accum * spec_.model.block_size;
  }
  json result(double wall_s);
  int world() const { return dp_ ? dp_->world() : 1; }
  bool lead() const { return options_.rank == 0; }  // rank 0 judges divergence, checkpoints, reports

  JobSpec spec_;
  const TrainConfig& train_;
  RunOptions options_;
  EventSink& events_;
  RankProcesses* ranks_;
  std::string config_hash_;

  torch::Device device_ = torch::kCPU;
  bool autocast_ = false;
  bool fused_kernels_ = false;  // model/kernels/ on this job (train.kernels)
  // The step as a CUDA graph (train.cuda_graph): null when not used, and why in graph_off_reason_.
  std::unique_ptr<StepGraph> graph_;
  std::string graph_off_reason_;
  int64_t graph_capture_iter_ = -1;   // the first iteration after the eager warm-up
  torch::Tensor graph_x_, graph_y_;   // [grad_accum / gpus, B, T] int64: this rank's batches a replay reads
  torch::Tensor graph_loss_;          // the captured step's loss: this rank's, summed over ranks between replays
  torch::Tensor graph_norm_;          // the captured step's gradient norm
  std::unique_ptr<TokenSplit> train_split_, val_split_;
  BatchOrder order_{0};
  std::unique_ptr<DataParallel> dp_;  // train.gpus > 1
  model::GPT model_{nullptr};
  std::unique_ptr<SpamAdamW> optimizer_;
  std::unique_ptr<MagnitudePruner> pruner_;

  int64_t start_iter_ = 0;
  double best_val_loss_ = std::numeric_limits<double>::infinity();
  int64_t best_iter_ = -1;
  double final_val_loss_ = std::numeric_limits<double>::quiet_NaN();
  int64_t nan_at_iter_ = -1;
  int64_t hang_at_iter_ = -1;
  int capture_fails_on_rank_ = -1;  // RATIO_DEBUG_CAPTURE_FAILS_ON_RANK
  std::atomic<int64_t> current_iter_{0};  // read by the heartbeat thread

  torch::Tensor loss_sum_;     // sum of micro-batch losses since the last log point, all ranks (device)
  torch::Tensor nonfinite_;    // became true when a loss or gradient norm was NaN/Inf (device)
  torch::Tensor loss_factor_;  // 1, or NaN at RATIO_DEBUG_NAN_AT_ITER: a device scalar, so a graph sees it
  int64_t iters_since_log_ = 0;
  std::chrono::steady_clock::time_point log_clock_;
  double train_seconds_ = 0;   // training time without evals and checkpoints, for tokens/s
  int64_t trained_iters_ = 0;
  std::chrono::steady_clock::time_point step_clock_;
};

void Trainer::choose_device() {
  const std::string& want = train_.device;
  if (want == "cuda" && !torch::cuda::is_available())
    throw Failure(kExitInvalid, "train.device is cuda but no CUDA device is available; use auto or cpu");
  const bool cuda = want == "cuda" || (want == "auto" && torch::cuda::is_available());
  if (cuda && options_.rank >= static_cast<int>(torch::cuda::device_count()))
    throw Failure(kExitInvalid, "train.gpus is " + std::to_string(train_.gpus) + " but only " +
                                    std::to_string(torch::cuda::device_count()) +
                                    " CUDA devices are visible (CUDA_VISIBLE_DEVICES); give the job more GPUs");
  // Every rank sees the job's GPUs (CUDA_VISIBLE_DEVICES lists them all, as torchrun does) and takes its own.
  device_ = cuda ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(options_.rank)) : torch::Device(torch::kCPU);
  const std::string dtype = train_.dtype == "auto" ? (device_.is_cuda() ? "bf16" : "fp32") : train_.dtype;
  if (dtype == "bf16" && !device_.is_cuda())
    throw Failure(kExitInvalid, "train.dtype bf16 needs a CUDA device; use fp32 (or auto) on CPU");
  autocast_ = dtype == "bf16";
  if (device_.is_cuda()) {
    at::globalContext().setAllowTF32CuBLAS(true);  // the study allows TF32
    at::globalContext().setAllowTF32CuDNN(true);
  }
}

void Trainer::join_ranks() {
  if (train_.gpus == 1) return;
  dp_ = std::make_unique<DataParallel>(options_.rendezvous, options_.rank, train_.gpus, device_,
                                       std::chrono::duration_cast<std::chrono::milliseconds>(kCollectiveTimeout));
}

void Trainer::choose_kernels() {
  const bool can_fuse = device_.is_cuda() && model::fused_kernels_built();
  if (train_.kernels == "fused" && !can_fuse) {
    throw Failure(kExitInvalid, std::string("train.kernels is fused, but ") +
                                    (device_.is_cuda() ? "this ratio-worker was built without the CUDA kernels"
                                                       : "the job runs on the CPU") +
                                    "; use auto or reference");
  }
  fused_kernels_ = can_fuse && train_.kernels != "reference";
}

// Graphs need the fused kernels' step (the reference optimizer's bias correction is a host number).
void Trainer::choose_graph() {
  std::string why;
  if (train_.cuda_graph == "off") {
    why = "train.cuda_graph is off";
  } else if (!device_.is_cuda()) {
    why = "the job runs on the CPU";
  } else if (!StepGraph::available()) {
    why = "this ratio-worker was built without CUDA";
  } else if (!fused_kernels_) {
    why = "the graph needs the fused kernels (train.kernels auto or fused)";
  } else if (spec_.model.dropout > 0) {
    why = "model.dropout > 0 (dropout is reseeded per micro-batch, outside a graph)";
  }
  if (!why.empty()) {
    graph_off(why, kExitInvalid);
    return;
  }
  graph_ = std::make_unique<StepGraph>();
  graph_->use_side_stream(device_.index());  // before the model exists, so every step, eager or replayed, runs there
  const auto ids = torch::TensorOptions().dtype(torch::kInt64).device(device_);
  graph_x_ = torch::zeros({train_.grad_accum / world(), train_.batch_size, spec_.model.block_size}, ids);
  graph_y_ = torch::zeros_like(graph_x_);
}

// Records why the step runs eagerly; under train.cuda_graph: on that is the job's failure instead.
void Trainer::graph_off(std::string why, int exit_code) {
  graph_off_reason_ = std::move(why);
  if (train_.cuda_graph == "on")
    throw Failure(exit_code, "train.cuda_graph is on, but " + graph_off_reason_ + "; use auto or off");
}

void Trainer::load_data() {
  const std::string data_dir = options_.data_dir.empty() ? default_data_dir() : options_.data_dir;
  const int tokenizer_vocab = spec_.data.tokenizer == "byte" ? 256 : spec_.data.tokenizer == "gpt2" ? 50257 : -1;
  if (tokenizer_vocab < 0)
    throw Failure(kExitInvalid, "data.tokenizer '" + spec_.data.tokenizer + "' is unknown; use byte or gpt2");
  if (spec_.model.vocab_size < tokenizer_vocab)
    throw DataError("the " + spec_.data.tokenizer + " tokenizer has " + std::to_string(tokenizer_vocab) +
                    " tokens but model.vocab_size is " + std::to_string(spec_.model.vocab_size) +
                    "; set model.vocab_size >= " + std::to_string(tokenizer_vocab));
  DatasetFiles files = resolve_dataset(spec_.data.dataset, spec_.data.tokenizer, data_dir);
  const int64_t window = spec_.model.block_size + 1;
  train_split_ = std::make_unique<TokenSplit>(files.train, window);
  val_split_ = std::make_unique<TokenSplit>(files.val, window);
  order_ = BatchOrder{train_.seed};
}

void Trainer::build_model() {
  torch::manual_seed(train_.seed);  // model init depends on the seed alone
  model_ = model::GPT(spec_.model);
  if (!train_.init_from.empty()) {
    try {
      const model::PretrainedLoad load = model::load_hf_gpt2(*model_, train_.init_from);
      std::cerr << "ratio-worker: init_from " << train_.init_from << ": " << load.copied.size() << " copied, "
                << load.resized.size() << " resized, " << load.derived.size() << " derived, " << load.fresh.size()
                << " fresh\n";
    } catch (const std::runtime_error& e) {
      throw DataError(std::string("train.init_from: ") + e.what());
    }
  }
  model_->to(device_);
  model_->set_fused_kernels(fused_kernels_);
  NamedTensors params;
  for (const auto& item : model_->named_parameters()) params.emplace_back(item.key(), item.value());
  optimizer_ = std::make_unique<SpamAdamW>(params, train_, fused_kernels_);
  if (dp_) dp_->attach(params);
  if (train_.prune.enabled) pruner_ = std::make_unique<MagnitudePruner>(params);
  loss_sum_ = torch::zeros({}, torch::TensorOptions().device(device_));
  nonfinite_ = torch::zeros({}, torch::TensorOptions().device(device_).dtype(torch::kBool));
  loss_factor_ = torch::ones({}, torch::TensorOptions().device(device_));
  if (graph_ && !optimizer_->uses_kernel()) {
    graph_off("the optimizer kernel cannot take these parameters", kExitInvalid);
    graph_.reset();  // synchronous enough: nothing has been queued on its stream that the default one needs
  }
}

NamedTensors Trainer::checkpoint_tensors() const {
  NamedTensors all;
  for (const auto& item : model_->named_parameters()) all.emplace_back("model/" + item.key(), item.value());
  for (const auto& item : model_->named_buffers()) all.emplace_back("buffer/" + item.key(), item.value());
  for (auto& t : optimizer_->state()) all.push_back(t);
  if (pruner_)
    for (auto& t : pruner_->state()) all.push_back(t);
  return all;
}

std::string ckpt_path(const RunOptions& o) { return o.workdir + "/ckpt.bin"; }

void Trainer::save(int64_t next_iter) {
  json meta = {{"iter", next_iter},
               {"config_hash", config_hash_},
               {"best_val_loss", number_or_null(best_val_loss_)},
               {"best_iter", best_iter_},
               {"steps_since_reset", optimizer_->steps_since_reset()},
               {"norms_seen", optimizer_->norms_seen()},
               {"loss_sum", loss_sum_.item<double>()},  // the next metric averages over its whole log interval
               {"iters_since_log", iters_since_log_},
               {"build_id", build_id()}};
  save_checkpoint(ckpt_path(options_), meta, checkpoint_tensors());
  events_.emit("checkpoint", {{"iter", next_iter}, {"path", ckpt_path(options_)}});
}

void Trainer::resume_if_asked() {
  if (!options_.resume || !fs::exists(ckpt_path(options_))) return;
  json meta = load_checkpoint(ckpt_path(options_), checkpoint_tensors());
  if (meta.at("config_hash") != config_hash_)
    throw Failure(kExitInvalid, ckpt_path(options_) + " belongs to config " + meta.at("config_hash").get<std::string>() +
                                    ", not this job's " + config_hash_ + "; use another --workdir or delete it");
  start_iter_ = meta.at("iter").get<int64_t>();
  best_val_loss_ = meta.at("best_val_loss").is_null() ? std::numeric_limits<double>::infinity()
                                                       : meta.at("best_val_loss").get<double>();
  best_iter_ = meta.at("best_iter").get<int64_t>();
  optimizer_->set_counters(meta.at("steps_since_reset").get<int64_t>(), meta.at("norms_seen").get<int64_t>());
  loss_sum_.fill_(meta.value("loss_sum", 0.0));  // absent from checkpoints of earlier builds
  iters_since_log_ = meta.value("iters_since_log", int64_t{0});
  std::cerr << "ratio-worker: resumed from " << ckpt_path(options_) << " at iter " << start_iter_ << "\n";
}

// Token ids of the given windows: inputs [B, T] returned, targets [B, T] through `targets`.
torch::Tensor Trainer::batch(const TokenSplit& split, const std::vector<uint64_t>& draws, torch::Tensor& targets) const {
  const int B = static_cast<int>(draws.size()), T = spec_.model.block_size;
  // Fresh pinned buffers each time: the caching host allocator keeps them alive until the async copy is done.
  auto host = torch::TensorOptions().dtype(torch::kInt64).pinned_memory(device_.is_cuda());
  torch::Tensor x = torch::empty({B, T}, host), y = torch::empty({B, T}, host);
  split.fill(draws, B, T, spec_.model.vocab_size, x.data_ptr<int64_t>(), y.data_ptr<int64_t>());
  if (!device_.is_cuda()) {
    targets = y;
    return x;
  }
  targets = y.to(device_, /*non_blocking=*/true);
  return x.to(device_, /*non_blocking=*/true);
}

// This rank's micro-batches of the iteration, inputs and targets [grad_accum / gpus, B, T] (pinned
// on the host for CUDA). The global batch is grad_accum micro-batches of batch_size windows, split
// across the ranks in contiguous runs: rank r takes micro-batches [r·k, (r+1)·k), k = grad_accum/gpus.
void Trainer::train_batches(int64_t iter, torch::Tensor& x, torch::Tensor& y) const {
  const int B = train_.batch_size, T = spec_.model.block_size, per_rank = train_.grad_accum / world();
  auto host = torch::TensorOptions().dtype(torch::kInt64).pinned_memory(device_.is_cuda());
  x = torch::empty({per_rank, B, T}, host);
  y = torch::empty({per_rank, B, T}, host);
  for (int k = 0; k < per_rank; ++k) {
    const int micro = options_.rank * per_rank + k;
    train_split_->fill(order_.train_draws(iter, micro, B), B, T, spec_.model.vocab_size, x[k].data_ptr<int64_t>(),
                       y[k].data_ptr<int64_t>());
  }
}

void Trainer::train_iteration(int64_t iter) {
  model_->train();
  if (nan_at_iter_ >= 0) loss_factor_.fill_(iter == nan_at_iter_ ? std::numeric_limits<double>::quiet_NaN() : 1.0);
  if (spam_resets_at(train_.spam, iter)) optimizer_->reset();
  optimizer_->set_lr(lr_at(train_, iter));
  torch::Tensor norm = graph_ && iter >= graph_capture_iter_ ? graph_step(iter) : eager_step(iter);
  if (pruner_) {
    if (prune_updates_at(train_.prune, train_.max_iters, iter))
      pruner_->update_masks(prune_sparsity_at(train_.prune, train_.max_iters, iter));
    else
      pruner_->apply();
  }
  if (autocast_) compat::clear_autocast_cache();  // the bf16 weight copies are stale after the update
  ++iters_since_log_;
  const bool log_point = (iter + 1) % train_.log_interval == 0 || iter + 1 == train_.max_iters;
  if (!device_.is_cuda() || log_point) check_finite(iter);  // a host sync: every step on CPU, at log points on CUDA
  if (log_point) log_metric(iter, norm);
}

// Forward and backward of this rank's micro-batches x, y [grad_accum / gpus, B, T] on the device.
// Each loss is divided by the global grad_accum; returns their sum, this rank's share of the step's
// loss (a device scalar). With several ranks the gradients end in dp_'s buckets, not yet summed:
// reduce_across_ranks and scatter_gradients then make the step the 1-GPU step, up to the order of
// float additions.
torch::Tensor Trainer::accumulate_gradients(int64_t iter, const torch::Tensor& x, const torch::Tensor& y, bool reseed) {
  const int per_rank = static_cast<int>(x.size(0));
  torch::Tensor iter_loss = torch::zeros({}, loss_sum_.options());
  for (int k = 0; k < per_rank; ++k) {
    const int micro = options_.rank * per_rank + k;
    // Dropout draws depend on (seed, iter, micro-batch) only: a resumed run repeats them exactly,
    // and so does a run on another number of GPUs. (A graph is captured only without dropout.)
    if (reseed)
      torch::manual_seed((train_.seed * 1000003ULL + static_cast<uint64_t>(iter)) * 1009ULL + static_cast<uint64_t>(micro));
    if (dp_) dp_->sync_next_backward(k + 1 == per_rank);
    torch::Tensor loss = model_->forward(x[k], y[k]).loss / static_cast<double>(train_.grad_accum);
    if (nan_at_iter_ >= 0) loss = loss * loss_factor_;
    loss.backward();
    iter_loss.add_(loss.detach().to(torch::kFloat32));
  }
  if (dp_) dp_->gather_gradients();
  return iter_loss;
}

// The ranks' gradients and losses summed (the metric is the global batch's loss): collectives,
// always run eagerly, between a graphed step's two replays.
void Trainer::reduce_across_ranks(torch::Tensor& rank_loss) {
  dp_->all_reduce_buckets();
  dp_->all_reduce_sum(rank_loss);
}

// The optimizer step; returns the pre-clip gradient norm (a device scalar).
torch::Tensor Trainer::update() {
  torch::Tensor norm = optimizer_->step();
  nonfinite_.logical_or_(loss_sum_.isfinite().logical_not()).logical_or_(norm.isfinite().logical_not());
  return norm;
}

torch::Tensor Trainer::eager_step(int64_t iter) {
  torch::Tensor x, y;
  train_batches(iter, x, y);
  if (device_.is_cuda()) {
    x = x.to(device_, /*non_blocking=*/true);
    y = y.to(device_, /*non_blocking=*/true);
  }
  torch::Tensor loss = accumulate_gradients(iter, x, y, /*reseed=*/true);
  if (dp_) {
    reduce_across_ranks(loss);
    dp_->scatter_gradients();
  }
  loss_sum_.add_(loss);
  // Before the update: the reference optimizer clips the gradients in place.
  if (train_.grad_norm_interval > 0 && iter % train_.grad_norm_interval == 0) log_grad_norms(iter);
  torch::Tensor norm = update();
  optimizer_->zero_grad();
  return norm;
}

// Replays the captured step, capturing it first; a step that cannot be captured (auto) runs eagerly
// from then on. The gradients stay where the graph writes them, so grad norms are read after it.
// One graph on one GPU; with several ranks two, and the collectives between them (distributed.h).
torch::Tensor Trainer::graph_step(int64_t iter) {
  torch::Tensor x, y;
  train_batches(iter, x, y);
  graph_x_.copy_(x, /*non_blocking=*/true);
  graph_y_.copy_(y, /*non_blocking=*/true);
  if (!graph_->captured()) {
    if (autocast_) compat::clear_autocast_cache();  // cached casts made outside the graph would be stale in it
    const auto forward_backward = [&] {
      graph_loss_ = accumulate_gradients(iter, graph_x_, graph_y_, /*reseed=*/false);
      if (options_.rank == capture_fails_on_rank_) throw std::runtime_error("RATIO_DEBUG_CAPTURE_FAILS_ON_RANK");
    };
    const auto finish = [&] {
      if (dp_) dp_->scatter_gradients();
      loss_sum_.add_(graph_loss_);
      graph_norm_ = update();
    };
    std::vector<std::function<void()>> parts = {forward_backward, finish};
    if (!dp_) parts = {[&] { forward_backward(); finish(); }};
    if (dp_) dp_->launch_from_hooks(false);
    const std::string failure = graph_->capture(parts);
    if (!failure.empty()) {
      graph_off("capture failed: " + one_line(failure), kExitCrashed);
      std::cerr << "ratio-worker: rank " << options_.rank << "'s CUDA graph " << graph_off_reason_ << "; training on eagerly\n";
      graph_capture_iter_ = std::numeric_limits<int64_t>::max();
      if (dp_) dp_->launch_from_hooks(true);
      optimizer_->zero_grad();
      if (autocast_) compat::clear_autocast_cache();
      return eager_step(iter);
    }
  }
  graph_->replay(0);
  if (dp_) {
    reduce_across_ranks(graph_loss_);
    graph_->replay(1);
  }
  if (train_.grad_norm_interval > 0 && iter % train_.grad_norm_interval == 0) log_grad_norms(iter);
  return graph_norm_;
}

// Rank 0's verdict alone (the gradient norm, summed over ranks, is NaN on every rank alike): a
// rank that exited on its own would race rank 0's report.
void Trainer::check_finite(int64_t iter) {
  if (lead() && nonfinite_.item<bool>())
    throw Failure(kExitDiverged, "diverged: loss or gradient norm became NaN/Inf at or before iter " + std::to_string(iter));
}

void Trainer::log_metric(int64_t iter, const torch::Tensor& norm) {
  if (!lead()) {
    loss_sum_.zero_();
    iters_since_log_ = 0;
    return;
  }
  const double loss = loss_sum_.item<double>() / static_cast<double>(iters_since_log_);
  const double elapsed = seconds_since(log_clock_);
  const double tokens_per_s = elapsed > 0 ? static_cast<double>(iters_since_log_) * tokens_per_iter() / elapsed : 0.0;
  const double lr = lr_at(train_, iter);
  const double grad_norm = norm.item<double>();
  events_.emit("metric", {{"iter", iter}, {"train_loss", loss}, {"lr", lr}, {"tokens_per_s", tokens_per_s},
                          {"grad_norm", number_or_null(grad_norm)}});
  std::fprintf(stderr, "iter %lld/%lld  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tok/s\n",
               static_cast<long long>(iter), static_cast<long long>(train_.max_iters), loss, lr, grad_norm, tokens_per_s);
  loss_sum_.zero_();
  iters_since_log_ = 0;
  log_clock_ = std::chrono::steady_clock::now();
}

void Trainer::log_grad_norms(int64_t iter) {
  if (!lead()) return;
  json values = json::object();
  for (const auto& [name, p] : model_->key_parameters())
    if (p.grad().defined()) values[name] = number_or_null(p.grad().norm().item<double>());
  if (!values.empty()) events_.emit("grad_norms", {{"iter", iter}, {"values", values}});
}

double Trainer::evaluate(int64_t iter) {
  torch::NoGradGuard no_grad;
  model_->eval();
  torch::Tensor total = torch::zeros({}, torch::TensorOptions().device(device_));
  torch::Tensor first_batch;
  for (int k = options_.rank; k < train_.eval_batches; k += world()) {  // the ranks share the batches
    torch::Tensor targets;
    torch::Tensor x = batch(*val_split_, order_.val_draws(k, train_.batch_size), targets);
    total.add_(model_->forward(x, targets).loss.to(torch::kFloat32));
    if (k == 0) first_batch = x;
  }
  if (dp_) dp_->all_reduce_sum(total);
  const double val_loss = total.item<double>() / train_.eval_batches;
  if (!lead()) return val_loss;
  if (!std::isfinite(val_loss))
    throw Failure(kExitDiverged, "diverged: validation loss is NaN/Inf at iter " + std::to_string(iter));
  // Attention statistics on a few rows of the first validation batch (they build T×T maps).
  auto stats = model_->attention_stats(first_batch.slice(0, 0, std::min<int64_t>(4, first_batch.size(0))));
  json entropy = json::array(), reciprocity = json::array();
  for (const auto& s : stats) {
    entropy.push_back(number_or_null(s.entropy));
    reciprocity.push_back(number_or_null(s.reciprocity));
  }
  events_.emit("eval", {{"iter", iter}, {"val_loss", val_loss}, {"entropy", entropy}, {"reciprocity", reciprocity}});
  json alphas = json::object();
  for (const auto& [name, t] : model_->mixing_parameters()) alphas[name] = number_or_null(t.detach().to(torch::kFloat64).mean().item<double>());
  if (!alphas.empty()) events_.emit("alphas", {{"iter", iter}, {"values", alphas}});
  std::fprintf(stderr, "iter %lld/%lld  val_loss %.4f\n", static_cast<long long>(iter),
               static_cast<long long>(train_.max_iters), val_loss);
  if (val_loss < best_val_loss_) {
    best_val_loss_ = val_loss;
    best_iter_ = iter;
  }
  return val_loss;
}

int64_t peak_host_memory_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports kB
}

json Trainer::result(double wall_s) {
  const ParamCounts params = param_counts();
  const double tokens_per_s = train_seconds_ > 0 ? static_cast<double>(trained_iters_) * tokens_per_iter() / train_seconds_ : 0.0;
  json mfu = nullptr;
  if (device_.is_cuda()) {
    const ModelConfig& m = spec_.model;
    const int64_t non_embedding = params.total - static_cast<int64_t>(m.block_size) * m.n_embd;  // nanoGPT leaves out wpe
    mfu = flops_per_token(non_embedding, m.n_layer, m.n_head, m.head_dim(), m.block_size) * tokens_per_s / kH100PeakBf16Flops;
  }
  // On CUDA the caching allocator's peak (null where this LibTorch hides it), on CPU the peak RSS.
  json peak = peak_host_memory_bytes();
  if (device_.is_cuda()) {
    const auto device_peak = compat::cuda_peak_allocated_bytes(device_.index());
    peak = device_peak ? json(*device_peak) : json(nullptr);
  }
  return {{"final_val_loss", number_or_null(final_val_loss_)},
          {"best_val_loss", number_or_null(best_val_loss_)},
          {"best_iter", best_iter_},
          {"iters", train_.max_iters},
          {"params", params_json(params)},
          {"tokens_per_s", tokens_per_s},
          {"peak_memory_bytes", peak},
          {"mfu", mfu},
          {"wall_s", wall_s},
          {"build_id", build_id()},
          {"config_hash", config_hash_},
          {"device", device_.str()},
          {"gpus", world()},
          {"cuda_graph", graph_ && graph_->captured() ? "on" : "off: " + graph_off_reason_}};
}

int Trainer::run() {
  const auto t0 = std::chrono::steady_clock::now();
  config_hash_ = config_hash(spec_);
  if (const char* nan_iter = std::getenv("RATIO_DEBUG_NAN_AT_ITER")) nan_at_iter_ = std::atoll(nan_iter);
  if (const char* hang_iter = std::getenv("RATIO_DEBUG_HANG_AT_ITER"); hang_iter && !options_.resume)
    hang_at_iter_ = std::atoll(hang_iter);
  if (const char* fails_on = std::getenv("RATIO_DEBUG_CAPTURE_FAILS_ON_RANK")) capture_fails_on_rank_ = std::atoi(fails_on);
  Heartbeat heartbeat(events_, current_iter_, options_.heartbeat_s);
  // Only ever lowers LibTorch's default: on a 2-core machine it picks 1 thread, and 2 ran a small
  // model 2.4× slower; side by side, workers that each took every core thrashed.
  if (options_.max_threads > 0 && at::get_num_threads() > options_.max_threads) at::set_num_threads(options_.max_threads);
  fs::create_directories(options_.workdir);
  choose_device();
  join_ranks();
  choose_kernels();
  choose_graph();
  load_data();
  build_model();
  resume_if_asked();
  if (autocast_) compat::set_cuda_autocast(true, torch::kBFloat16);
  // Eager steps first: cuBLAS, cuDNN and the allocator settle on the stream before the capture.
  graph_capture_iter_ = start_iter_ + kGraphWarmupIters;

  events_.emit("started", {{"iter", start_iter_}, {"max_iters", train_.max_iters}, {"device", device_.str()},
                           {"threads", at::get_num_threads()}, {"gpus", world()},
                           {"dtype", autocast_ ? "bf16" : "fp32"}, {"kernels", fused_kernels_ ? "fused" : "reference"},
                           {"cuda_graph", graph_ ? "on" : "off"},
                           {"build_id", build_id()},
                           {"config_hash", config_hash_}, {"params", params_json(param_counts())}});
  log_clock_ = std::chrono::steady_clock::now();
  for (int64_t iter = start_iter_; iter < train_.max_iters; ++iter) {
    current_iter_ = iter;
    while (iter == hang_at_iter_ && g_stop_signal.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (train_.eval_interval > 0 && iter % train_.eval_interval == 0) {
      evaluate(iter);
      log_clock_ = std::chrono::steady_clock::now();  // tokens/s counts training only
    }
    step_clock_ = std::chrono::steady_clock::now();
    train_iteration(iter);
    train_seconds_ += seconds_since(step_clock_);
    ++trained_iters_;
    const int64_t done = iter + 1;
    const bool stop = g_stop_signal.load() != 0;
    if (lead() && done < train_.max_iters && (stop || (train_.checkpoint_interval > 0 && done % train_.checkpoint_interval == 0))) {
      check_finite(iter);  // never checkpoint a diverged model
      save(done);
      log_clock_ = std::chrono::steady_clock::now();
    }
    if (stop && done < train_.max_iters)
      throw Failure(kExitInterrupted, std::string("interrupted by ") + (g_stop_signal == SIGINT ? "SIGINT" : "SIGTERM") +
                                          " after iter " + std::to_string(iter) + "; checkpoint written, resume with --resume");
  }
  final_val_loss_ = evaluate(train_.max_iters);
  if (!lead()) return kExitDone;
  if (ranks_) {
    // The others are done after the last collective; once they have exited no failure of theirs can
    // follow the `finished` event.
    if (!ranks_->join(30)) std::cerr << "ratio-worker: ranks still running 30 s after the last evaluation; stopping them\n";
    ranks_->stop_watching();
  }
  const json res = result(seconds_since(t0));
  std::ofstream(options_.workdir + "/result.json") << res.dump(2) << "\n";
  events_.emit("finished", {{"result", res}});
  std::fprintf(stderr, "finished: final val loss %.4f (best %.4f at iter %lld), %.0f tok/s\n", final_val_loss_,
               best_val_loss_, static_cast<long long>(best_iter_), res["tokens_per_s"].get<double>());
  return kExitDone;
}

// The exit code and one-line reason for whatever ended the run.
std::pair<int, std::string> classify(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const Failure& e) {
    return {e.code, e.what()};
  } catch (const DataError& e) {
    return {kExitDataError, std::string("data error: ") + e.what()};
  } catch (const CheckpointError& e) {
    return {kExitInvalid, std::string("checkpoint: ") + e.what()};
  } catch (const c10::OutOfMemoryError& e) {
    return {kExitOutOfMemory, "out of memory: " + std::string(e.what_without_backtrace())};
  } catch (const std::bad_alloc&) {
    return {kExitOutOfMemory, "out of host memory"};
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    if (what.find("out of memory") != std::string::npos) return {kExitOutOfMemory, "out of memory: " + what};
    return {kExitCrashed, "crashed: " + what};
  } catch (const std::exception& e) {
    return {kExitCrashed, std::string("crashed: ") + e.what()};
  } catch (...) {
    return {kExitCrashed, "crashed: unknown exception"};
  }
}

// Set by whichever ends the run first: the training thread, or rank 0's watcher of the other ranks.
std::atomic<bool> g_ending{false};

// The `failed` event and the stderr line of a run that ends with `code`.
void report_failure(EventSink& events, int code, const std::string& reason) {
  events.emit("failed", {{"reason", reason}, {"exit_code", code}});
  std::cerr << "ratio-worker: " << reason << "\n";
}

// Rank 0 of a multi-rank job: starts ranks 1..gpus-1 (this binary, same job and workdir) joined
// through a FileStore in the workdir. A rank that dies ends the attempt from the watcher thread,
// wherever training is (a NCCL collective may never return).
std::unique_ptr<RankProcesses> start_ranks(const JobSpec& spec, RunOptions& options, EventSink& events) {
  fs::create_directories(options.workdir);
  for (const auto& entry : fs::directory_iterator(options.workdir))  // an earlier attempt's, if it was killed
    if (entry.path().filename().string().rfind("rendezvous-", 0) == 0) fs::remove(entry.path());
  options.rendezvous = options.workdir + "/rendezvous-" + std::to_string(getpid());
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  auto argv_of = [&](int rank) {
    std::vector<std::string> argv = {self, "run", "--job", options.job_path, "--workdir", options.workdir,
                                     "--rank", std::to_string(rank), "--rendezvous", options.rendezvous};
    if (!options.data_dir.empty()) argv.insert(argv.end(), {"--data-dir", options.data_dir});
    if (options.resume) argv.push_back("--resume");
    if (options.max_threads > 0) argv.insert(argv.end(), {"--max-threads", std::to_string(options.max_threads)});
    return argv;
  };
  auto on_failure = [&events](const RankFailure& failure) {
    if (g_ending.exchange(true)) return;  // the training thread is already reporting
    report_failure(events, failure.exit_code, failure.reason);
    if (events.reporter()) events.reporter()->close(/*timeout_s=*/30);
    std::_Exit(failure.exit_code);
  };
  try {
    return std::make_unique<RankProcesses>(spec.train.gpus, argv_of, on_failure);
  } catch (const std::runtime_error& e) {
    throw Failure(kExitCrashed, e.what());
  }
}

}  // namespace

int run_job(const RunOptions& options) {
  if (options.rank == 0) {  // the other ranks ignore both (worker/ranks.cpp): stopping is rank 0's call
    std::signal(SIGTERM, on_stop_signal);
    std::signal(SIGINT, on_stop_signal);
  }
  std::ostream no_output(nullptr);  // ranks > 0 report nothing
  EventSink events(options.rank == 0 ? std::cout : no_output);
  std::unique_ptr<RankProcesses> ranks;
  // Outlives the catch below: its process group goes down only after the other ranks were stopped
  // (a group torn down under them makes them fail, and that is no failure to report).
  std::unique_ptr<Trainer> trainer;
  std::string rendezvous;  // rank 0's, removed at the end (ranks killed mid-run never clean it up)
  int code = kExitDone;
  std::string reason;
  try {
    if (!options.report_url.empty()) {
      try {
        events.set_reporter(std::make_unique<HttpReporter>(options.report_url, options.token));
      } catch (const std::invalid_argument& e) {
        throw Failure(kExitInvalid, std::string("invalid arguments: ") + e.what());
      }
    }
    JobSpec spec = read_spec(options.job_path);
    RunOptions run = options;
    if (spec.train.gpus > 1 && options.rank == 0) {
      ranks = start_ranks(spec, run, events);
      rendezvous = run.rendezvous;
    }
    if (options.rank >= spec.train.gpus)
      throw Failure(kExitInvalid, "invalid arguments: --rank " + std::to_string(options.rank) + " but train.gpus is " +
                                      std::to_string(spec.train.gpus));
    trainer = std::make_unique<Trainer>(std::move(spec), run, events, ranks.get());
    code = trainer->run();
  } catch (...) {
    std::tie(code, reason) = classify(std::current_exception());
    reason = one_line(reason);
    // A collective that lost its peer fails here a moment before the watcher sees the dead rank:
    // the dead rank is the reason.
    if (ranks && code == kExitCrashed)
      if (auto failure = ranks->failure(/*wait_s=*/2)) std::tie(code, reason) = std::make_pair(failure->exit_code, failure->reason);
    if (g_ending.exchange(true))
      for (;;) pause();  // the watcher is reporting this failure and ends the process
    report_failure(events, code, reason);
  }
  ranks.reset();  // ranks still running have nothing left to do
  trainer.reset();
  std::error_code ignored;
  if (!rendezvous.empty()) fs::remove(rendezvous, ignored);
  if (events.reporter()) events.reporter()->close(/*timeout_s=*/30);
  return code;
}

}  // namespace ratio::worker

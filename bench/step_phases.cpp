// ratio-bench-step: where one training step's time goes, for one job spec. Forward (with the loss),
// backward and the optimizer (the worker's SpamAdamW, autocast cache clear and zero_grad) are timed
// separately, the device synchronised between phases; then whole steps without those syncs. Random
// tokens, like bench/reference.py --phases, which prints the same fields for PyTorch.
//
//   ratio-bench-step --job JOB.json [--steps 20] [--warmup 5] [--trace TRACE.json] [--graph 1]
//
// Prints one JSON line of medians: forward_ms, backward_ms, optimizer_ms, step_ms, tokens_per_s.
// --trace also records one more step with PyTorch's profiler (Kineto) as a Chrome trace, which
// bench/trace_summary.py condenses into time per kernel. Needs LibTorch 2.x (GPU machines).
// --graph 1 runs every step on the worker's side stream, then captures the whole step as the worker
// does (worker/step_graph.h) and adds graph_step_ms, the median replay; --trace then records a
// replay, so the trace's idle time between kernels is the graph's own (bench/trace_summary.py).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <torch/csrc/autograd/profiler_kineto.h>

#include "matrix/job_spec.h"
#include "model/gpt.h"
#include "model/torch_compat.h"
#include "worker/optimizer.h"
#include "worker/step_graph.h"

namespace {

struct Args {
  std::string job, trace;
  int steps = 20, warmup = 5;
  bool graph = false;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--job") a.job = value;
    else if (flag == "--steps") a.steps = std::stoi(value);
    else if (flag == "--warmup") a.warmup = std::stoi(value);
    else if (flag == "--trace") a.trace = value;
    else if (flag == "--graph") a.graph = value == "1";
    else throw std::invalid_argument("unknown flag " + flag + "; use --job, --steps, --warmup, --trace, --graph");
  }
  if (a.job.empty()) throw std::invalid_argument("--job JOB.json is required");
  return a;
}

// Runs `step` once under the Kineto profiler (host ops and device kernels) and saves a Chrome trace.
void trace_one_step(const std::function<void()>& step, const std::string& path, bool cuda) {
  namespace prof = torch::profiler::impl;
  const prof::ProfilerConfig config(prof::ProfilerState::KINETO);
  std::set<prof::ActivityType> activities = {prof::ActivityType::CPU};
  if (cuda) activities.insert(prof::ActivityType::CUDA);
  torch::autograd::profiler::prepareProfiler(config, activities);
  torch::autograd::profiler::enableProfiler(config, activities);
  step();
  if (cuda) torch::cuda::synchronize();
  torch::autograd::profiler::disableProfiler()->save(path);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ratio;
  try {
    const Args args = parse_args(argc, argv);
    std::ifstream in(args.job);
    if (!in) throw std::invalid_argument("cannot read " + args.job);
    const JobSpec spec = job_spec_from_json(nlohmann::json::parse(in));
    const bool cuda = torch::cuda::is_available();
    const torch::Device device = cuda ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
    auto sync = [&] { if (cuda) torch::cuda::synchronize(); };
    if (cuda) {
      at::globalContext().setAllowTF32CuBLAS(true);
      compat::set_cuda_autocast(true, torch::kBFloat16);
    }

    std::unique_ptr<worker::StepGraph> graph;
    if (args.graph) {
      if (!cuda || !worker::StepGraph::available()) throw std::invalid_argument("--graph needs CUDA");
      graph = std::make_unique<worker::StepGraph>();
      graph->use_side_stream(0);  // before the model, as the worker does: every step then runs there
    }

    torch::manual_seed(spec.train.seed);
    model::GPT model(spec.model);
    model->to(device);
    model->set_fused_kernels(cuda && spec.train.kernels != "reference" && model::fused_kernels_built());
    model->train();
    worker::NamedTensors params;
    for (const auto& item : model->named_parameters()) params.emplace_back(item.key(), item.value());
    worker::SpamAdamW optimizer(params, spec.train, model->fused_kernels());

    const int64_t B = spec.train.batch_size, T = spec.model.block_size;
    const auto ids = torch::TensorOptions().dtype(torch::kLong).device(device);
    const torch::Tensor x = torch::randint(spec.model.vocab_size, {B, T}, ids);
    const torch::Tensor y = torch::randint(spec.model.vocab_size, {B, T}, ids);

    torch::Tensor loss;
    const std::vector<std::function<void()>> phases = {
        [&] { loss = model->forward(x, y).loss; },
        [&] { loss.backward(); },
        [&] {
          optimizer.step(spec.train.lr);
          if (cuda) compat::clear_autocast_cache();
          optimizer.zero_grad();
        }};
    auto seconds = [](auto t0) { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };

    for (int i = 0; i < args.warmup; ++i)
      for (const auto& phase : phases) phase();
    sync();
    std::vector<std::vector<double>> phase_ms(phases.size());
    for (int i = 0; i < args.steps; ++i) {
      for (size_t p = 0; p < phases.size(); ++p) {
        const auto t0 = std::chrono::steady_clock::now();
        phases[p]();
        sync();
        phase_ms[p].push_back(1e3 * seconds(t0));
      }
    }
    std::vector<double> step_ms;
    for (int i = 0; i < args.steps; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      for (const auto& phase : phases) phase();
      sync();
      step_ms.push_back(1e3 * seconds(t0));
    }
    std::function<void()> traced_step = [&] { for (const auto& phase : phases) phase(); };
    std::vector<double> graph_ms;
    if (graph) {
      // The worker's capture (worker/trainer.cpp, graph_step): gradients unset, so the backward
      // allocates them in the graph's pool; the learning rate set outside; stale casts dropped.
      optimizer.zero_grad();
      optimizer.set_lr(spec.train.lr);
      compat::clear_autocast_cache();
      const std::string failure = graph->capture({[&] {
        model->forward(x, y).loss.backward();
        optimizer.step();
      }});
      if (!failure.empty()) throw std::runtime_error("capture failed: " + failure);
      for (int i = 0; i < args.warmup; ++i) graph->replay(0);
      sync();
      for (int i = 0; i < args.steps; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        graph->replay(0);
        sync();
        graph_ms.push_back(1e3 * seconds(t0));
      }
      traced_step = [&] { graph->replay(0); };
    }
    if (!args.trace.empty()) trace_one_step(traced_step, args.trace, cuda);
    const double step = median(step_ms);
    nlohmann::json out = {{"forward_ms", median(phase_ms[0])}, {"backward_ms", median(phase_ms[1])},
                          {"optimizer_ms", median(phase_ms[2])}, {"step_ms", step},
                          {"tokens_per_s", static_cast<double>(B * T) / (step / 1e3)},
                          {"device", device.str()},
                          {"kernels", model->fused_kernels() ? "fused" : "reference"}};
    if (graph) out["graph_step_ms"] = median(graph_ms);
    std::printf("%s\n", out.dump().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ratio-bench-step: %s\n", e.what());
    return 2;
  }
}

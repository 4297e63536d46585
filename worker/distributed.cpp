#include "worker/distributed.h"

#include <stdexcept>
#include <utility>
#include <vector>

#include <torch/csrc/distributed/c10d/FileStore.hpp>

#include "model/torch_compat.h"  // TORCH_VERSION_MAJOR

// 2.x compiles each backend's header only under its USE_C10D_* macro (1.13 ignores them). The build
// defines RATIO_WITH_GLOO / RATIO_WITH_NCCL where the backend's own headers were found.
#ifdef RATIO_WITH_GLOO
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef RATIO_WITH_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace ratio::worker {

namespace {

// The backends' common base: c10d::ProcessGroup in 1.13; 2.x split it into ProcessGroup (a
// dispatcher over devices) and Backend (what NCCL and Gloo implement).
#if TORCH_VERSION_MAJOR >= 2
using Backend = c10d::Backend;
#else
using Backend = c10d::ProcessGroup;
#endif
// What allreduce returns: intrusive_ptr<ProcessGroup::Work> in 1.13, intrusive_ptr<Work> in 2.x.
using WorkPtr = decltype(std::declval<Backend&>().allreduce(std::declval<std::vector<at::Tensor>&>()));

c10::intrusive_ptr<Backend> make_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                         const torch::Device& device, std::chrono::milliseconds timeout) {
  if (device.is_cuda()) {
#ifdef RATIO_WITH_NCCL
    c10::cuda::set_device(device.index());  // NCCL's communicator and streams on this rank's GPU
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
#else
    throw std::runtime_error("train.gpus > 1 on CUDA needs NCCL, and this ratio-worker was built without nccl.h "
                             "(worker/CMakeLists.txt looks for it); use train.gpus 1");
#endif
  }
#ifdef RATIO_WITH_GLOO
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));  // ranks share a machine
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
#else
  throw std::runtime_error("train.gpus > 1 on CPU needs Gloo, and this ratio-worker was built without its headers "
                           "(Debian: libgloo-dev); use train.gpus 1");
#endif
}

// A flat fp32 buffer holding the gradients of some parameters back to back, summed across ranks
// in one collective.
struct Bucket {
  torch::Tensor flat;              // [numel of its parameters]
  std::vector<size_t> params;      // indices into Impl::params
  size_t pending = 0;              // gradients not yet copied in during this backward
  WorkPtr work;                    // its allreduce, once launched
};

}  // namespace

struct DataParallel::Impl {
  int world;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<Backend> backend;

  std::vector<torch::Tensor> params;
  std::vector<torch::Tensor> views;   // views[i]: params[i]'s place in its bucket, shaped like it
  std::vector<size_t> bucket_of;      // params[i]'s bucket
  std::vector<bool> arrived;          // params[i]'s gradient is in its bucket (this backward)
  std::vector<Bucket> buckets;
  size_t next_launch = 0;             // buckets launch in index order, the same on every rank
  bool sync = false;
  bool hooks_launch = true;

  // The hook: params[i]'s gradient from this micro-batch plus what earlier micro-batches left in
  // .grad (the hook runs before autograd accumulates it) is the rank's whole gradient.
  // Hooks run on the autograd thread of the device, one at a time: no lock.
  void on_gradient(size_t i, const torch::Tensor& grad) {
    if (!sync) return;
    TORCH_CHECK(!arrived[i], "data parallel: a parameter received two gradients in one backward");
    const torch::Tensor& earlier = params[i].grad();
    if (earlier.defined())
      at::add_out(views[i], earlier, grad);
    else
      views[i].copy_(grad);
    arrive(i);
  }

  void arrive(size_t i) {
    arrived[i] = true;
    --buckets[bucket_of[i]].pending;
    if (!hooks_launch) return;
    // Every rank launches bucket k before bucket k+1, whatever order its gradients came in:
    // collectives must be issued in the same order on all ranks.
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) launch_next();
  }

  void launch_next() {
    std::vector<torch::Tensor> tensors = {buckets[next_launch].flat};
    buckets[next_launch].work = backend->allreduce(tensors);  // ReduceOp::SUM
    ++next_launch;
  }
};

DataParallel::DataParallel(const std::string& rendezvous, int rank, int world, const torch::Device& device,
                           std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()) {
  impl_->world = world;
  impl_->store = c10::make_intrusive<c10d::FileStore>(rendezvous, world);
  impl_->backend = make_backend(impl_->store, rank, world, device, timeout);
}

DataParallel::~DataParallel() = default;

int DataParallel::world() const { return impl_->world; }

void DataParallel::attach(const NamedTensors& named, int64_t bucket_bytes) {
  Impl& d = *impl_;
  for (const auto& [name, p] : named) {
    TORCH_CHECK(p.scalar_type() == torch::kFloat32 && p.device() == named.front().second.device(),
                "data parallel: parameter ", name, " is not fp32 on the model's device");
    d.params.push_back(p);
  }
  d.views.resize(d.params.size());
  d.bucket_of.resize(d.params.size());
  d.arrived.assign(d.params.size(), false);
  // Reverse order: the backward produces the last layers' gradients first.
  const int64_t per_bucket = std::max<int64_t>(1, bucket_bytes / static_cast<int64_t>(sizeof(float)));
  int64_t filled = per_bucket;
  for (size_t i = d.params.size(); i-- > 0;) {
    if (filled + d.params[i].numel() > per_bucket && filled > 0) {
      d.buckets.emplace_back();
      filled = 0;
    }
    d.buckets.back().params.push_back(i);
    d.bucket_of[i] = d.buckets.size() - 1;
    filled += d.params[i].numel();
  }
  for (Bucket& b : d.buckets) {
    int64_t numel = 0;
    for (size_t i : b.params) numel += d.params[i].numel();
    b.flat = torch::zeros({numel}, d.params.front().options());
    int64_t offset = 0;
    for (size_t i : b.params) {
      d.views[i] = b.flat.narrow(0, offset, d.params[i].numel()).view(d.params[i].sizes());
      offset += d.params[i].numel();
    }
  }
  for (size_t i = 0; i < d.params.size(); ++i) {
    Impl* impl = impl_.get();  // no backward runs once this object is gone
    d.params[i].register_hook([impl, i](torch::Tensor grad) { impl->on_gradient(i, grad); });
  }
}

void DataParallel::sync_next_backward(bool sync) {
  Impl& d = *impl_;
  d.sync = sync;
  if (!sync) return;
  std::fill(d.arrived.begin(), d.arrived.end(), false);
  for (Bucket& b : d.buckets) b.pending = b.params.size();
  d.next_launch = 0;
}

void DataParallel::launch_from_hooks(bool launch) { impl_->hooks_launch = launch; }

void DataParallel::gather_gradients() {
  Impl& d = *impl_;
  torch::NoGradGuard no_grad;
  // A parameter the graph did not use this time got no hook call: its share is what .grad holds
  // (or nothing). The graph is the same on every rank, so is the set of such parameters.
  for (size_t i = 0; i < d.params.size(); ++i) {
    if (d.arrived[i]) continue;
    if (d.params[i].grad().defined())
      d.views[i].copy_(d.params[i].grad());
    else
      d.views[i].zero_();
    d.arrive(i);
  }
  d.sync = false;
}

void DataParallel::all_reduce_buckets() {
  Impl& d = *impl_;
  // Without hook launches nothing of this step has been launched, whatever the bookkeeping of the
  // captured backward left (a replay runs no hooks).
  if (!d.hooks_launch) d.next_launch = 0;
  while (d.next_launch < d.buckets.size()) d.launch_next();
  for (Bucket& b : d.buckets) b.work->wait();
}

void DataParallel::scatter_gradients() {
  Impl& d = *impl_;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < d.params.size(); ++i)
    if (d.params[i].grad().defined()) d.params[i].mutable_grad().copy_(d.views[i]);  // undefined: unused on every rank
}

void DataParallel::all_reduce_sum(torch::Tensor& t) {
  std::vector<torch::Tensor> tensors = {t};
  impl_->backend->allreduce(tensors)->wait();
}

}  // namespace ratio::worker

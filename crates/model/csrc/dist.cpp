// libtorch's distributed engine (c10d) for `model::dist`: a TCPStore
// rendezvous and a process group on c10d's own backends, ProcessGroupGloo
// (CPU tensors) and, where this file was compiled against NCCL's and CUDA's
// headers (`MMCLIP_NCCL`), ProcessGroupNCCL (CUDA tensors). The collectives
// are the backends' own; this file only lays tensors out for them
// (buckets) and turns their exceptions into messages, never letting one
// cross the C boundary. Tensors cross as tch's handles (`at::Tensor*`).
//
// ProcessGroupGloo.hpp includes gloo's headers, which the torch wheel does
// not ship: `third_party/gloo` holds the few it needs (see the README there).
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "shim.h"
#ifdef MMCLIP_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int size;
  std::chrono::milliseconds timeout;
};

using mmclip::fail;
using mmclip::list;

// Waits for a collective; the backend's own timeout bounds it, and a peer
// that closed its connection makes it throw at once.
void finish(const c10::intrusive_ptr<c10d::Work>& work, const Group& g) {
  work->wait(g.timeout);
}

}  // namespace

// Joins the group: rank 0 hosts the TCPStore at addr:port, every rank
// connects to it, and the backend's rendezvous runs on it. `backend` is 0
// for Gloo, 1 for NCCL (then `device` is this process's CUDA index).
extern "C" int mmclip_dist_join(const char* addr, int port, int rank, int size,
                                int64_t timeout_ms, int backend, int device, void** out,
                                char* err, size_t err_len) {
  try {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0;
    opts.numWorkers = static_cast<std::size_t>(size);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> tcp = c10::make_intrusive<c10d::TCPStore>(addr, opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>(
        backend == 0 ? "mmclip/gloo" : "mmclip/nccl", tcp);
    auto group = new Group{tcp, {}, rank, size, timeout};
    try {
      if (backend == 0) {
        auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
        group->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
      } else {
#ifdef MMCLIP_NCCL
        // Checked first: without a device libtorch's own error is about the
        // driver's version and does not say which device was asked for.
        int devices = c10::cuda::device_count();
        if (device < 0 || device >= devices) {
          throw std::runtime_error("NCCL needs CUDA device " + std::to_string(device) +
                                   " (the local rank's), and this machine has " +
                                   std::to_string(devices) + " CUDA device(s)");
        }
        c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
        auto options = c10d::ProcessGroupNCCL::Options::create();
        options->timeout = timeout;
        group->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
#else
        (void)device;
        throw std::runtime_error(
            "this build has no NCCL: model's build.rs found no nccl.h and CUDA headers "
            "(set CUDA_HOME and rebuild), so CUDA tensors cannot be reduced");
#endif
      }
    } catch (...) {
      delete group;
      throw;
    }
    *out = group;
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

extern "C" void mmclip_dist_free(void* group) { delete static_cast<Group*>(group); }

// Whether this build can make an NCCL group.
extern "C" bool mmclip_dist_has_nccl() {
#ifdef MMCLIP_NCCL
  return true;
#else
  return false;
#endif
}

// Rank `root`'s tensors into every rank's, in place.
extern "C" int mmclip_dist_broadcast(void* group, at::Tensor* const* tensors, int n, int root,
                                     char* err, size_t err_len) {
  try {
    auto& g = *static_cast<Group*>(group);
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*tensors[i]};
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      opts.timeout = g.timeout;
      finish(g.backend->broadcast(one, opts), g);
    }
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// The mean over ranks of each tensor, in place. Consecutive tensors of one
// dtype are flattened into buckets of at most `bucket_bytes` (a tensor
// larger than that is a bucket of its own), so a model's few hundred
// gradients cost a few collectives rather than one each.
extern "C" int mmclip_dist_all_reduce_mean(void* group, at::Tensor* const* tensors, int n,
                                           int64_t bucket_bytes, char* err, size_t err_len) {
  try {
    auto& g = *static_cast<Group*>(group);
    auto all = list(tensors, n);
    size_t start = 0;
    while (start < all.size()) {
      size_t end = start;
      int64_t bytes = 0;
      while (end < all.size() && all[end].scalar_type() == all[start].scalar_type() &&
             (end == start || bytes + all[end].nbytes() <= static_cast<size_t>(bucket_bytes))) {
        bytes += all[end].nbytes();
        ++end;
      }
      std::vector<at::Tensor> flat_parts;
      for (size_t i = start; i < end; ++i) flat_parts.push_back(all[i].reshape({-1}));
      std::vector<at::Tensor> bucket{at::cat(flat_parts)};
      c10d::AllreduceOptions opts;
      opts.reduceOp = c10d::ReduceOp::SUM;
      opts.timeout = g.timeout;
      finish(g.backend->allreduce(bucket, opts), g);
      bucket[0].div_(g.size);
      int64_t offset = 0;
      for (size_t i = start; i < end; ++i) {
        auto numel = all[i].numel();
        all[i].copy_(bucket[0].narrow(0, offset, numel).view(all[i].sizes()));
        offset += numel;
      }
      start = end;
    }
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// Every rank's `input` into `output`, rank r's at rows [r·n, (r+1)·n) of
// dimension 0; `output` has `size` times `input`'s rows.
extern "C" int mmclip_dist_all_gather(void* group, at::Tensor* input, at::Tensor* output,
                                      char* err, size_t err_len) {
  try {
    auto& g = *static_cast<Group*>(group);
    std::vector<at::Tensor> in{input->contiguous()};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < g.size; ++r) out[0].push_back(at::empty_like(in[0]));
    c10d::AllgatherOptions opts;
    opts.timeout = g.timeout;
    finish(g.backend->allgather(out, in, opts), g);
    output->copy_(at::cat(out[0], 0));
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

extern "C" int mmclip_dist_barrier(void* group, char* err, size_t err_len) {
  try {
    auto& g = *static_cast<Group*>(group);
    c10d::BarrierOptions opts;
    opts.timeout = g.timeout;
    finish(g.backend->barrier(opts), g);
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// Gradient averaging overlapped with the backward pass, as DDP's reducer:
// the parameters are cut into buckets of about `bucket_bytes` in the
// reverse of the order they were given (their creation order, so roughly
// the order the backward pass finishes them). While armed, a hook after
// each parameter's gradient is accumulated marks it ready, and each bucket
// whose parameters are all ready is flattened and its all-reduce started,
// in bucket order (every rank starts the same collectives in the same
// order, which Gloo and NCCL pair up by). `finish` starts the buckets the
// backward pass left incomplete (a parameter without a gradient here gives
// zeros), agrees with the other ranks on which gradients exist anywhere,
// waits, and writes the means back: a gradient that exists on some rank
// exists on all afterwards, one that exists on none stays undefined.
//
// Creation order is only a guess at the backward pass's order, and a
// bucket that completes late holds back every bucket after it. So, as DDP
// does after its first iteration, the buckets are rebuilt in the order
// rank 0 saw the gradients become ready (broadcast, so that every rank
// builds the same buckets), the parameters that had none last. This
// happens after the first step and again whenever the set of parameters
// with a gradient on some rank changes (the warm-up leaves Loss_align's
// without one): that set is agreed by all ranks, so they rebuild together.
namespace {

struct Reducer;

struct Ready : torch::autograd::PostAccumulateGradHook {
  Reducer* reducer;
  size_t index;
  Ready(Reducer* r, size_t i) : reducer(r), index(i) {}
  void operator()(const torch::autograd::Variable& variable) override;
};

struct Reducer {
  Group* group;
  std::vector<at::Tensor> params;
  int64_t bucket_bytes = 0;
  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> bucket_of;
  std::mutex lock;
  bool armed = false;
  std::vector<size_t> ready_in;
  size_t next = 0;
  std::vector<at::Tensor> flat;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  // This step's parameters in the order they became ready.
  std::vector<size_t> ready_order;
  // Per bucket, how many parameters were ready when the backward pass
  // started its all-reduce (none: started by `finish`).
  std::vector<size_t> started_at;
  // Which parameters had a gradient on some rank when the buckets were
  // last built (empty: built from the creation order).
  std::vector<bool> built_for;

  static constexpr size_t NOT_STARTED = static_cast<size_t>(-1);

  void reset() {
    armed = false;
    next = 0;
    ready_order.clear();
    ready_in.assign(buckets.size(), 0);
    started_at.assign(buckets.size(), NOT_STARTED);
    flat.assign(buckets.size(), at::Tensor());
    works.assign(buckets.size(), c10::intrusive_ptr<c10d::Work>());
  }

  // Cuts `order` (every parameter once) into buckets of one dtype and at
  // most `bucket_bytes` (a larger parameter is a bucket of its own).
  void plan(const std::vector<size_t>& order) {
    buckets.clear();
    bucket_of.assign(params.size(), 0);
    int64_t bytes = 0;
    for (size_t i : order) {
      const auto& p = params[i];
      bool fits = !buckets.empty() &&
                  p.scalar_type() == params[buckets.back().front()].scalar_type() &&
                  bytes + static_cast<int64_t>(p.nbytes()) <= bucket_bytes;
      if (!fits) {
        buckets.emplace_back();
        bytes = 0;
      }
      buckets.back().push_back(i);
      bucket_of[i] = buckets.size() - 1;
      bytes += static_cast<int64_t>(p.nbytes());
    }
  }

  // Rebuilds the buckets in rank 0's ready order of this step, then the
  // parameters it did not see ready in reverse creation order; every rank
  // calls it at the same step.
  void replan(const at::Device& device) {
    auto n = static_cast<int64_t>(params.size());
    auto order = at::empty({n}, at::kLong);
    std::vector<bool> seen(params.size(), false);
    int64_t k = 0;
    for (size_t i : ready_order) {
      if (!seen[i]) {
        seen[i] = true;
        order[k++] = static_cast<int64_t>(i);
      }
    }
    for (int64_t i = n - 1; i >= 0; --i) {
      if (!seen[i]) order[k++] = i;
    }
    std::vector<at::Tensor> one{order.to(device)};
    c10d::BroadcastOptions opts;
    opts.rootRank = 0;
    opts.timeout = group->timeout;
    finish(group->backend->broadcast(one, opts), *group);
    auto agreed = one[0].to(at::kCPU);
    auto a = agreed.accessor<int64_t, 1>();
    std::vector<size_t> planned(params.size());
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(a[i] >= 0 && a[i] < n, "rank 0 sent a bucket order with parameter ", a[i]);
      planned[i] = static_cast<size_t>(a[i]);
    }
    plan(planned);
  }

  // Starts bucket b's all-reduce; the caller holds the lock.
  void launch(size_t b) {
    std::vector<at::Tensor> parts;
    for (size_t i : buckets[b]) {
      const auto& grad = params[i].grad();
      parts.push_back(grad.defined() ? grad.reshape({-1}) : at::zeros({params[i].numel()}, params[i].options()));
    }
    flat[b] = at::cat(parts);
    std::vector<at::Tensor> one{flat[b]};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = group->timeout;
    works[b] = group->backend->allreduce(one, opts);
  }

  void mark(size_t i) {
    std::lock_guard<std::mutex> guard(lock);
    if (!armed) return;
    ready_order.push_back(i);
    ++ready_in[bucket_of[i]];
    while (next < buckets.size() && ready_in[next] == buckets[next].size()) {
      started_at[next] = ready_order.size();
      launch(next++);
    }
  }
};

void Ready::operator()(const torch::autograd::Variable&) { reducer->mark(index); }

}  // namespace

extern "C" int mmclip_reducer_new(void* group, at::Tensor* const* params, int n,
                                  int64_t bucket_bytes, void** out, char* err, size_t err_len) {
  try {
    auto r = std::make_unique<Reducer>();
    r->group = static_cast<Group*>(group);
    r->params = list(params, n);
    r->bucket_bytes = bucket_bytes;
    std::vector<size_t> reversed;
    for (int i = n - 1; i >= 0; --i) {
      TORCH_CHECK(r->params[i].is_leaf() && r->params[i].requires_grad(), "parameter ", i,
                  " is not a trainable leaf");
      reversed.push_back(static_cast<size_t>(i));
    }
    r->plan(reversed);
    r->reset();
    for (int i = 0; i < n; ++i) {
      TORCH_CHECK(!torch::autograd::impl::post_acc_grad_hooks(r->params[i]),
                  "parameter ", i, " already has a post-accumulate hook");
      torch::autograd::impl::set_post_acc_grad_hooks(
          r->params[i], std::make_unique<Ready>(r.get(), static_cast<size_t>(i)));
    }
    *out = r.release();
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// The buckets as they stand: `index[k]` is the k-th parameter in bucket
// order and `bucket[k]` its bucket (both `n` long, the parameter count).
extern "C" void mmclip_reducer_buckets(void* reducer, int64_t* index, int64_t* bucket) {
  auto r = static_cast<Reducer*>(reducer);
  std::lock_guard<std::mutex> guard(r->lock);
  size_t k = 0;
  for (size_t b = 0; b < r->buckets.size(); ++b) {
    for (size_t i : r->buckets[b]) {
      index[k] = static_cast<int64_t>(i);
      bucket[k] = static_cast<int64_t>(b);
      ++k;
    }
  }
}

extern "C" void mmclip_reducer_free(void* reducer) {
  auto r = static_cast<Reducer*>(reducer);
  for (auto& p : r->params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
  delete r;
}

// The next backward pass starts each bucket's all-reduce as it completes.
extern "C" void mmclip_reducer_arm(void* reducer) {
  auto r = static_cast<Reducer*>(reducer);
  std::lock_guard<std::mutex> guard(r->lock);
  r->reset();
  r->armed = true;
}

// `*early` receives how many buckets the backward pass started before its
// last gradient was ready (their all-reduce overlapped with its work), of
// `*total`; `*rebuilt` whether the buckets were then rebuilt.
extern "C" int mmclip_reducer_finish(void* reducer, size_t* early, size_t* total, bool* rebuilt,
                                     char* err, size_t err_len) {
  auto r = static_cast<Reducer*>(reducer);
  try {
    std::lock_guard<std::mutex> guard(r->lock);
    auto& g = *r->group;
    if (!r->armed) throw std::runtime_error("finish without arm");
    r->armed = false;
    *early = 0;
    for (size_t at : r->started_at) {
      if (at < r->ready_order.size()) ++*early;
    }
    *total = r->buckets.size();
    *rebuilt = false;
    while (r->next < r->buckets.size()) r->launch(r->next++);
    // Which gradients exist on any rank.
    auto defined = at::empty({static_cast<int64_t>(r->params.size())}, at::kFloat);
    for (size_t i = 0; i < r->params.size(); ++i) defined[i] = r->params[i].grad().defined() ? 1.0 : 0.0;
    auto device = r->params.empty() ? at::Device(at::kCPU) : r->params[0].device();
    std::vector<at::Tensor> flags{defined.to(device)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = g.timeout;
    finish(g.backend->allreduce(flags, opts), g);
    auto anywhere = flags[0].to(at::kCPU);
    auto any = anywhere.accessor<float, 1>();
    for (size_t b = 0; b < r->buckets.size(); ++b) {
      finish(r->works[b], g);
      r->flat[b].div_(g.size);
      int64_t offset = 0;
      for (size_t i : r->buckets[b]) {
        auto& p = r->params[i];
        auto numel = p.numel();
        auto mean = r->flat[b].narrow(0, offset, numel).view(p.sizes());
        offset += numel;
        if (any[i] == 0) continue;
        if (p.grad().defined()) {
          p.mutable_grad().copy_(mean);
        } else {
          p.mutable_grad() = mean.clone();
        }
      }
    }
    std::vector<bool> with_gradient(r->params.size());
    for (size_t i = 0; i < r->params.size(); ++i) with_gradient[i] = any[i] != 0;
    if (with_gradient != r->built_for) {
      r->replan(device);
      r->built_for = with_gradient;
      *rebuilt = true;
    }
    r->reset();
    return 0;
  } catch (const std::exception& e) {
    r->reset();
    return fail(e, err, err_len);
  }
}

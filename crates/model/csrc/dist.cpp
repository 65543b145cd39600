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
#ifdef MMCLIP_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstring>
#include <exception>
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

int fail_with(const std::string& message, char* err, size_t err_len) {
  if (err_len > 0) {
    std::strncpy(err, message.c_str(), err_len - 1);
    err[err_len - 1] = '\0';
  }
  return 1;
}

// c10::Error's what() carries a C++ backtrace after the message; the first
// part is what the user can act on.
int fail(const std::exception& e, char* err, size_t err_len) {
  if (auto c10 = dynamic_cast<const c10::Error*>(&e)) {
    return fail_with(c10->what_without_backtrace(), err, err_len);
  }
  return fail_with(e.what(), err, err_len);
}

std::vector<at::Tensor> list(at::Tensor* const* tensors, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(*tensors[i]);
  return out;
}

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

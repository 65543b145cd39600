// CUDA graphs of a whole training step (`src/graph.rs`): a side stream to
// warm up on, and libtorch's at::cuda::CUDAGraph to capture and replay.
// Compiled with CUDA's headers (`MMCLIP_CUDA`, see build.rs); elsewhere
// every entry point fails with that reason. Only libtorch's and c10's
// exported functions are called (streams ordered with the device-generic
// c10::Event, not CUDA's inline event helpers), so the binaries need no
// CUDA runtime of their own beyond what libtorch_cuda loads.
#include "shim.h"

#ifdef MMCLIP_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/Event.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <stdexcept>

using mmclip::fail;

#ifdef MMCLIP_CUDA
namespace {

// Checked first: without a device libtorch's own error is about the
// driver's version.
c10::DeviceIndex existing(int device) {
  if (device < 0 || device >= c10::cuda::device_count()) {
    throw std::runtime_error("no CUDA device " + std::to_string(device) + " on this machine");
  }
  return static_cast<c10::DeviceIndex>(device);
}

// A pool stream made current on a device after it waits for the stream
// that was current; leaving makes that stream wait for it in turn, so work
// queued on either side stays ordered.
struct SideStream {
  c10::cuda::CUDAStream previous;
  c10::cuda::CUDAStream side;
};

SideStream* enter(int device) {
  auto index = existing(device);
  c10::cuda::set_device(index);
  auto previous = c10::cuda::getCurrentCUDAStream(index);
  auto side = c10::cuda::getStreamFromPool(false, index);
  c10::Event ready(c10::DeviceType::CUDA);
  ready.record(previous);
  ready.block(side);
  c10::cuda::setCurrentCUDAStream(side);
  return new SideStream{previous, side};
}

void leave(SideStream* s) {
  c10::Event done(c10::DeviceType::CUDA);
  done.record(s->side);
  done.block(s->previous);
  c10::cuda::setCurrentCUDAStream(s->previous);
  delete s;
}

struct Graph {
  at::cuda::CUDAGraph graph;
  // Set while the capture runs: the stream it runs on.
  SideStream* capturing = nullptr;
};

// Runs `f`, turning an exception into the caller's error message.
template <class F>
int guarded(F f, char* err, size_t err_len) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

}  // namespace

extern "C" bool mmclip_graph_available() { return true; }

extern "C" int mmclip_side_stream_enter(int device, void** out, char* err, size_t err_len) {
  return guarded([&] { *out = enter(device); }, err, err_len);
}

extern "C" int mmclip_side_stream_leave(void* stream, char* err, size_t err_len) {
  return guarded([&] { leave(static_cast<SideStream*>(stream)); }, err, err_len);
}

// Starts capturing on a side stream of `device`. As torch.cuda.graph does,
// the device is synchronised and the allocator's cached blocks released
// first, so the graph's private pool starts from what is really free.
extern "C" int mmclip_graph_capture_begin(int device, void** out, char* err, size_t err_len) {
  return guarded(
      [&] {
        c10::cuda::set_device(existing(device));
        c10::cuda::device_synchronize();
        c10::cuda::CUDACachingAllocator::emptyCache();
        auto graph = new Graph();
        try {
          graph->capturing = enter(device);
          graph->graph.capture_begin();
        } catch (...) {
          if (graph->capturing != nullptr) leave(graph->capturing);
          delete graph;
          throw;
        }
        *out = graph;
      },
      err, err_len);
}

extern "C" int mmclip_graph_capture_end(void* graph, char* err, size_t err_len) {
  return guarded(
      [&] {
        auto g = static_cast<Graph*>(graph);
        SideStream* stream = g->capturing;
        g->capturing = nullptr;
        try {
          g->graph.capture_end();
        } catch (...) {
          leave(stream);
          throw;
        }
        leave(stream);
      },
      err, err_len);
}

// Queues the captured work on the current stream.
extern "C" int mmclip_graph_replay(void* graph, char* err, size_t err_len) {
  return guarded([&] { static_cast<Graph*>(graph)->graph.replay(); }, err, err_len);
}

// Frees a graph; one still capturing (its closure panicked) ends the
// capture first, so the stream is not left in capture mode.
extern "C" void mmclip_graph_free(void* graph) {
  auto g = static_cast<Graph*>(graph);
  if (g->capturing != nullptr) {
    try {
      g->graph.capture_end();
    } catch (...) {
      // The capture was invalid; what matters is leaving the stream.
    }
    try {
      leave(g->capturing);
    } catch (...) {
    }
  }
  delete g;
}

#else  // no CUDA headers: every entry point refuses, naming why

namespace {
int no_cuda(char* err, size_t err_len) {
  return mmclip::fail_with(
      "this build has no CUDA graphs: model's build.rs found no CUDA headers "
      "(python/requirements.txt's nvidia-cuda-crt and nvidia-cuda-cccl, or CUDA_HOME)",
      err, err_len);
}
}  // namespace

extern "C" bool mmclip_graph_available() { return false; }
extern "C" int mmclip_side_stream_enter(int, void**, char* err, size_t err_len) {
  return no_cuda(err, err_len);
}
extern "C" int mmclip_side_stream_leave(void*, char* err, size_t err_len) {
  return no_cuda(err, err_len);
}
extern "C" int mmclip_graph_capture_begin(int, void**, char* err, size_t err_len) {
  return no_cuda(err, err_len);
}
extern "C" int mmclip_graph_capture_end(void*, char* err, size_t err_len) {
  return no_cuda(err, err_len);
}
extern "C" int mmclip_graph_replay(void*, char* err, size_t err_len) {
  return no_cuda(err, err_len);
}
extern "C" void mmclip_graph_free(void*) {}

#endif

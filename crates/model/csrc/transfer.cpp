// Events on a CUDA stream, for `model::transfer`: a copy to the host that
// is started without blocking is waited for by an event recorded after it,
// which waits only for the work queued before the copy (a blocking copy, or
// a device synchronisation, would also wait for everything queued since).
// Written against c10's device-generic `Event` and guard interface, so the
// shim builds with libtorch's CPU headers and reaches CUDA at run time
// through the guard libtorch_cuda registers. Errors come back as a message,
// never as an exception across the C boundary.
#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "shim.h"

#include <cstring>
#include <exception>
#include <map>
#include <mutex>

using mmclip::fail;

// Records an event on the current stream of CUDA device `index`; `*event`
// receives it (free it with `mmclip_event_free`).
extern "C" int mmclip_event_record(int index, void** event, char* err, size_t err_len) {
  try {
    c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
    c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
    auto recorded = new c10::Event(c10::DeviceType::CUDA);
    try {
      recorded->record(guard.getStream(device));
    } catch (...) {
      delete recorded;
      throw;
    }
    *event = recorded;
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// Waits until the work queued before the event is done.
extern "C" int mmclip_event_synchronize(void* event, char* err, size_t err_len) {
  try {
    static_cast<c10::Event*>(event)->synchronize();
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

extern "C" void mmclip_event_free(void* event) { delete static_cast<c10::Event*>(event); }

// Uploads on a copy stream: a batch copied to the device on the stream
// that runs the steps waits there for the step queued before it, while on
// a stream of its own it overlaps that step. `enter` makes the device's
// copy stream (one per device, from c10's pool) current; the caller
// allocates and copies; `leave` makes the stream that was current wait for
// the copies (on the device, not the host), tells the allocator that the
// copied tensors are used on that stream (so their memory is not handed
// back to the copy stream while the steps still read it), and makes it
// current again.
namespace {
struct CopyStream {
  c10::Stream previous;
  c10::Stream copy;
};

c10::Stream copy_stream(c10::impl::VirtualGuardImpl& guard, c10::Device device) {
  static std::mutex lock;
  static std::map<c10::DeviceIndex, c10::Stream> streams;
  std::lock_guard<std::mutex> held(lock);
  auto found = streams.find(device.index());
  if (found != streams.end()) return found->second;
  auto stream = guard.getStreamFromGlobalPool(device, false);
  streams.emplace(device.index(), stream);
  return stream;
}
}  // namespace

extern "C" int mmclip_copy_stream_enter(int index, void** out, char* err, size_t err_len) {
  try {
    c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
    c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
    auto previous = guard.getStream(device);
    auto copy = copy_stream(guard, device);
    // The copy stream does not wait for the steps' stream: the copy is to
    // overlap the step queued there. Its memory is fresh from the
    // allocator on the copy stream, so nothing queued before reads it.
    guard.exchangeStream(copy);
    *out = new CopyStream{previous, copy};
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// `used`: the tensors made on the copy stream, read afterwards on the
// stream that was current before.
extern "C" int mmclip_copy_stream_leave(void* entered, at::Tensor* const* used, int n, char* err,
                                        size_t err_len) {
  auto s = static_cast<CopyStream*>(entered);
  c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
  try {
    c10::Event done(c10::DeviceType::CUDA);
    done.record(s->copy);
    done.block(s->previous);
    for (int i = 0; i < n; ++i) {
      guard.recordDataPtrOnStream(used[i]->storage().data_ptr(), s->previous);
    }
    guard.exchangeStream(s->previous);
    delete s;
    return 0;
  } catch (const std::exception& e) {
    guard.exchangeStream(s->previous);
    delete s;
    return fail(e, err, err_len);
  }
}

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

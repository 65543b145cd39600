// libtorch's per-device autocast switches, for `model::autocast`.
//
// tch 0.24 binds only the deprecated CUDA switch (`at::autocast::set_enabled`),
// which leaves the reduced type at libtorch's CUDA default, float16, and
// cannot turn on CPU autocast. libtorch exports the per-device functions
// below; they take plain enums and booleans and throw nothing, so they are
// declared here rather than through <ATen/autocast_mode.h>, which would pull
// all of ATen into the build (tens of seconds per compile). The compiler
// mangles the names exactly as libtorch does; a libtorch that changed one of
// these signatures would fail at link time, never at run time.
#include <cstdint>

namespace c10 {
enum class DeviceType : int8_t;
enum class ScalarType : int8_t;
}  // namespace c10

namespace at::autocast {
bool is_autocast_enabled(c10::DeviceType device_type);
void set_autocast_enabled(c10::DeviceType device_type, bool enabled);
c10::ScalarType get_autocast_dtype(c10::DeviceType device_type);
void set_autocast_dtype(c10::DeviceType device_type, c10::ScalarType dtype);
int increment_nesting();
int decrement_nesting();
void clear_cache();
}  // namespace at::autocast

// Device and scalar types cross as their libtorch enum values
// (c10::DeviceType::CPU = 0, CUDA = 1; c10::ScalarType::Half = 5,
// BFloat16 = 15), which `src/autocast.rs` names.
extern "C" {

bool mmclip_autocast_is_enabled(int8_t device) {
  return at::autocast::is_autocast_enabled(static_cast<c10::DeviceType>(device));
}

void mmclip_autocast_set_enabled(int8_t device, bool enabled) {
  at::autocast::set_autocast_enabled(static_cast<c10::DeviceType>(device), enabled);
}

int8_t mmclip_autocast_dtype(int8_t device) {
  return static_cast<int8_t>(
      at::autocast::get_autocast_dtype(static_cast<c10::DeviceType>(device)));
}

void mmclip_autocast_set_dtype(int8_t device, int8_t dtype) {
  at::autocast::set_autocast_dtype(static_cast<c10::DeviceType>(device),
                                   static_cast<c10::ScalarType>(dtype));
}

int mmclip_autocast_increment_nesting() { return at::autocast::increment_nesting(); }

int mmclip_autocast_decrement_nesting() { return at::autocast::decrement_nesting(); }

void mmclip_autocast_clear_cache() { at::autocast::clear_cache(); }

}  // extern "C"

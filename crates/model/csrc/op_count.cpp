// Counts the ATen operators libtorch dispatches, for `model::op_count`.
//
// A step that is launch-bound on a GPU is one that dispatches too many small
// operators; their number does not depend on the device, so counting them on
// the CPU gives CI a measure of what the GPU step pays per launch. libtorch's
// RecordFunction callbacks see every operator that goes through the
// dispatcher (nested ones too: `aten::linear` and the `aten::addmm` it
// calls count as two). Each thread counts its own: parallel tests in one
// process do not see each other's operators, and on the CPU the autograd
// engine runs the backward pass on the thread that called it, so a step's
// forward and backward are both counted (on CUDA the backward runs on the
// engine's device threads and is not).
//
// An operator over a list of tensors counts as one, whatever it runs inside:
// `aten::_foreach_*` and `aten::_fused_*` are one multi-tensor-apply launch
// on CUDA, while their CPU implementations loop over the tensors with
// per-tensor operators; `aten::stack` makes a view of each tensor (no
// kernel) and one `cat`. Counting what they run inside would count the
// list's length instead of the launches.
//
// Operators that make the host wait for the device on CUDA (their result's
// value or size must reach the host: `item`, `nonzero`, `masked_select`,
// …) are also counted apart, as host synchronisations. Copies to the host
// are not among them: on the CPU they are not told apart from other copies.
// Nor is what a list operator runs inside: the CPU's `_fused_adamw_` reads
// a learning rate given as a tensor with `item`, where CUDA's kernel reads
// it on the device.
#include <ATen/record_function.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

namespace {
thread_local uint64_t ops = 0;
thread_local uint64_t syncs = 0;
// The name of the last host-waiting operator this thread dispatched (one
// of `waits_for_the_device`'s static names), for error messages.
thread_local const char* last_sync = nullptr;
// How many multi-tensor operators this thread is inside.
thread_local int inside_multi = 0;
std::mutex lock;
// The static name of a host-waiting operator, or null.
const char* waits_for_the_device(const char* name) {
  static const char* const names[] = {
      "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
      "aten::unique_dim", "aten::unique_consecutive", "aten::is_nonzero", "aten::equal"};
  for (const char* n : names) {
    if (std::strcmp(name, n) == 0) return n;
  }
  return nullptr;
}
// Returned by the start callback of the operator that opened a
// multi-tensor region, so that its end callback closes it.
struct MultiTensor : at::ObserverContext {};
at::CallbackHandle handle = 0;
int users = 0;
}  // namespace

// Registration is reference-counted so that overlapping counters (parallel
// tests in one process) share one callback; each reads differences of its
// thread's running total.
extern "C" void mmclip_op_count_start() {
  std::lock_guard<std::mutex> guard(lock);
  if (users++ > 0) return;
  handle = at::addGlobalCallback(
      at::RecordFunctionCallback(
          [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
            if (inside_multi > 0) return nullptr;
            const char* name = fn.name();
            if (const char* waits = waits_for_the_device(name)) {
              ++syncs;
              last_sync = waits;
            }
            ++ops;
            if (std::strncmp(name, "aten::_foreach_", 15) == 0 ||
                std::strncmp(name, "aten::_fused_", 13) == 0 ||
                std::strcmp(name, "aten::stack") == 0) {
              ++inside_multi;
              // A non-null context marks, for the end callback, the
              // operator that opened the multi-tensor region.
              return std::make_unique<MultiTensor>();
            }
            return nullptr;
          },
          [](const at::RecordFunction&, at::ObserverContext* ctx) {
            if (ctx != nullptr) --inside_multi;
          })
          .scopes({at::RecordScope::FUNCTION}));
}

extern "C" void mmclip_op_count_stop() {
  std::lock_guard<std::mutex> guard(lock);
  if (users == 0 || --users > 0) return;
  at::removeCallback(handle);
  handle = 0;
}

extern "C" uint64_t mmclip_op_count_total() { return ops; }

extern "C" uint64_t mmclip_op_count_syncs() { return syncs; }

// Null before this thread's first host-waiting operator.
extern "C" const char* mmclip_op_count_last_sync() { return last_sync; }

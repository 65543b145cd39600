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
// An operator that is one launch on CUDA counts as one, whatever it runs
// inside on the CPU (`one_launch`): `aten::_foreach_*` and `aten::_fused_*`
// are one multi-tensor-apply launch on CUDA, while their CPU
// implementations loop over the tensors with per-tensor operators;
// `aten::stack` makes a view of each tensor (no kernel) and one `cat`; a
// matrix product is one cuBLAS call, where CPU `addmm` first copies the
// bias into the output; a sum or mean is one reduction kernel, where the
// CPU's first fills the output. Counting what they run inside would count the
// list's length, or the CPU's helpers, instead of the launches.
//
// Operators that make the host wait for the device on CUDA (their result's
// value or size must reach the host: `item`, `nonzero`, `masked_select`,
// …) are also counted apart, as host synchronisations. Copies to the host
// are not among them: on the CPU they are not told apart from other copies.
// Nor is what a one-launch operator runs inside: the CPU's `_fused_adamw_`
// reads a learning rate given as a tensor with `item`, where CUDA's kernel
// reads it on the device.
//
// Most of the operators counted launch nothing: views (`view`,
// `transpose`, `as_strided`, `detach`, …), allocations (`empty`), and
// composites that only call others (`linear` calls `addmm`). Kernels are
// estimated apart: an operator is a kernel when no kernel ran inside it
// and it is neither a view (every result aliases an input without writing
// it, by its schema) nor an allocation; a one-launch operator is one. An
// operator whose CPU implementation dispatches a kernel-like helper before
// its own loop counts as its helper, so the estimate is a proxy, not a
// trace of CUDA's launches.
#include <ATen/core/function_schema.h>
#include <ATen/record_function.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace {
thread_local uint64_t ops = 0;
thread_local uint64_t syncs = 0;
// The name of the last host-waiting operator this thread dispatched (one
// of `waits_for_the_device`'s static names), for error messages.
thread_local const char* last_sync = nullptr;
// This thread's kernels (see below) by operator name, for `count_by_name`.
thread_local std::map<std::string, uint64_t> by_name;
// How many one-launch operators (see `one_launch`) this thread is inside.
thread_local int inside_one_launch = 0;
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
thread_local uint64_t kernels = 0;
// Whether an operator, by name, can be a kernel (see above); filled as
// operators are first seen.
thread_local std::unordered_map<std::string, bool> kernel_ops;
bool can_be_a_kernel(const at::RecordFunction& fn) {
  const char* name = fn.name();
  if (std::strncmp(name, "aten::", 6) != 0) return false;  // autograd's own records
  auto known = kernel_ops.find(name);
  if (known != kernel_ops.end()) return known->second;
  // Allocations, and views whose schema does not say so.
  static const char* const allocations[] = {
      "aten::empty",         "aten::empty_strided",     "aten::empty_like",   "aten::new_empty",
      "aten::new_empty_strided", "aten::resize_",       "aten::set_",         "aten::_reshape_alias",
      "aten::_unsafe_view",  "aten::as_strided_"};
  bool kernel = true;
  for (const char* n : allocations) {
    if (std::strcmp(name, n) == 0) kernel = false;
  }
  if (kernel) {
    if (auto schema = fn.operator_schema()) {
      const auto& returns = schema->returns();
      bool view = !returns.empty();
      for (const auto& r : returns) {
        const auto* alias = r.alias_info();
        if (alias == nullptr || alias->isWrite()) view = false;
      }
      kernel = !view;
    }
  }
  kernel_ops.emplace(name, kernel);
  return kernel;
}
// Operators that are one launch on CUDA whatever they dispatch inside on
// the CPU: the list operators (`_foreach_*` and `_fused_*` are one
// multi-tensor-apply launch; `stack` makes a view of each tensor and one
// `cat`), the matrix products (one cuBLAS call; CPU `addmm` first copies
// the bias into the output with `copy_`) and sums and means (one reduction;
// the CPU's fill the output first).
bool one_launch(const char* name) {
  static const char* const products[] = {"aten::mm",       "aten::addmm", "aten::bmm",
                                         "aten::baddbmm",  "aten::mv",    "aten::addmv",
                                         "aten::_addmm_activation", "aten::sum", "aten::mean"};
  if (std::strncmp(name, "aten::_foreach_", 15) == 0 ||
      std::strncmp(name, "aten::_fused_", 13) == 0 || std::strcmp(name, "aten::stack") == 0) {
    return true;
  }
  for (const char* n : products) {
    if (std::strcmp(name, n) == 0) return true;
  }
  return false;
}
// The context of each counted operator: whether it is one launch, and
// whether a kernel ran inside it.
struct Frame : at::ObserverContext {
  Frame* outer = nullptr;
  bool whole = false;
  bool has_kernels_inside = false;
};
// The innermost counted operator running on this thread.
thread_local Frame* innermost = nullptr;
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
            if (inside_one_launch > 0) return nullptr;
            const char* name = fn.name();
            if (const char* waits = waits_for_the_device(name)) {
              ++syncs;
              last_sync = waits;
            }
            ++ops;
            auto frame = std::make_unique<Frame>();
            frame->whole = one_launch(name);
            if (frame->whole) ++inside_one_launch;
            frame->outer = innermost;
            innermost = frame.get();
            return frame;
          },
          [](const at::RecordFunction& fn, at::ObserverContext* ctx) {
            // Null for the operators inside a one-launch one.
            if (ctx == nullptr) return;
            auto* frame = static_cast<Frame*>(ctx);
            innermost = frame->outer;
            bool kernel = frame->whole ? (--inside_one_launch, true)
                                       : !frame->has_kernels_inside && can_be_a_kernel(fn);
            if (kernel) {
              ++kernels;
              ++by_name[fn.name()];
            }
            if ((kernel || frame->has_kernels_inside) && frame->outer != nullptr) {
              frame->outer->has_kernels_inside = true;
            }
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

extern "C" uint64_t mmclip_op_count_kernels() { return kernels; }

// Null before this thread's first host-waiting operator.
extern "C" const char* mmclip_op_count_last_sync() { return last_sync; }

// Writes this thread's kernel counts by operator name as "name\tcount\n" lines into `out`
// (up to `len` bytes) and returns the length of the whole text: a caller
// whose buffer was too short calls again with a longer one.
extern "C" size_t mmclip_op_count_by_name(char* out, size_t len) {
  std::string text;
  for (const auto& [name, count] : by_name) {
    text += name;
    text += '\t';
    text += std::to_string(count);
    text += '\n';
  }
  if (text.size() <= len) std::memcpy(out, text.data(), text.size());
  return text.size();
}

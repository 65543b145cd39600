// Weights cast to autocast's reduced type once per step, a group at a time,
// for `model::cast`. Autocast casts each weight with its own kernel, and
// casts its gradient back with another (about 600 kernels in a ViT-B/16
// MMCLIP step); here one list copy (`_foreach_copy_`, a few launches on
// CUDA, where it converts between types) casts a whole group forward, and
// one casts the group's gradients back. The values are autocast's: both
// round to nearest even, and a weight used twice in a step has its two
// reduced-type gradients summed before the cast back, as autocast's cached
// cast of a leaf has. Errors come back as a message, never as an exception
// across the C boundary.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/empty_strided.h>
#include <torch/csrc/autograd/custom_function.h>

#include "shim.h"

#include <cstdint>
#include <exception>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A list copy converts on its fast path when the lists agree in sizes and
// strides; the tensors that do not get a copy each.
void copy_all(std::vector<at::Tensor>& to, const std::vector<at::Tensor>& from) {
  std::vector<at::Tensor> list_to, list_from;
  for (size_t i = 0; i < to.size(); ++i) {
    if (to[i].strides() == from[i].strides()) {
      list_to.push_back(to[i]);
      list_from.push_back(from[i]);
    } else {
      to[i].copy_(from[i]);
    }
  }
  if (!list_to.empty()) at::_foreach_copy_(list_to, list_from);
}

struct CastGroup : public torch::autograd::Function<CastGroup> {
  static variable_list forward(AutogradContext* ctx, at::TensorList weights, int64_t dtype) {
    auto to = static_cast<at::ScalarType>(dtype);
    std::vector<at::Tensor> from(weights.begin(), weights.end());
    std::vector<at::Tensor> out;
    out.reserve(from.size());
    for (const auto& w : from) {
      out.push_back(at::empty_strided(w.sizes(), w.strides(), w.options().dtype(to)));
    }
    copy_all(out, from);
    // An output the step did not use has no gradient, and its weight gets
    // none (as with autocast), rather than a zero one.
    ctx->set_materialize_grads(false);
    // Kept for their layout and type: a gradient comes back in the
    // weight's own layout, which the gradient accumulator then keeps.
    ctx->save_for_backward(from);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto weights = ctx->get_saved_variables();
    variable_list out(weights.size() + 1);  // the last: `dtype`'s, none
    std::vector<at::Tensor> to, from;
    for (size_t i = 0; i < weights.size(); ++i) {
      if (!grads[i].defined()) continue;
      const auto& w = weights[i];
      out[i] = at::empty_strided(w.sizes(), w.strides(), w.options());
      to.push_back(out[i]);
      from.push_back(grads[i]);
    }
    copy_all(to, from);
    return out;
  }
};

}  // namespace

// Casts `n` tensors to the scalar type `dtype` as one autograd operation;
// `out` receives `n` new handles (`at::Tensor*`, freed by tch).
extern "C" int mmclip_cast_group(at::Tensor* const* tensors, int n, int dtype, at::Tensor** out,
                                 char* err, size_t err_len) {
  try {
    auto weights = mmclip::list(tensors, n);
    auto cast = CastGroup::apply(at::TensorList(weights), static_cast<int64_t>(dtype));
    for (int i = 0; i < n; ++i) out[i] = new at::Tensor(std::move(cast[i]));
    return 0;
  } catch (const std::exception& e) {
    return mmclip::fail(e, err, err_len);
  }
}

// Which tensor a handle refers to: handles made by shallow copies share it.
extern "C" const void* mmclip_tensor_impl(const at::Tensor* t) {
  return t->unsafeGetTensorImpl();
}

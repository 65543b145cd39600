// libtorch's fused optimiser updates (`torch.optim.SGD(fused=True)` and
// `torch.optim.AdamW(fused=True)`), for `model::fused`: one operator updates
// every parameter of a list, where the plain update dispatches several per
// parameter tensor (a few thousand per step for ViT-B/16 MMCLIP). tch does
// not bind them. Tensors cross as tch's handles, which are `at::Tensor*`.
// Errors (a device or dtype mismatch) come back as a message, never as an
// exception across the C boundary.
//
// Both updates take `found_inf` (a float scalar tensor on the parameters'
// device; 1 skips the update, as `torch.amp.GradScaler` uses it), so a
// step can be skipped on the device without the host reading anything. The
// list operators beside them (`_foreach_norm`, `_foreach_mul_`) and the
// dropping of gradients are the rest of a step's update that tch does not
// bind.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/_fused_sgd.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/stack.h>

#include "shim.h"

#include <cstring>
#include <exception>
#include <optional>
#include <vector>

namespace {

using mmclip::fail;
using mmclip::list;

std::optional<at::Tensor> maybe(at::Tensor* t) {
  if (t == nullptr) return std::nullopt;
  return *t;
}

}  // namespace

// `n_buffers` is `n`, or 0 without momentum: libtorch then takes no buffers.
// `lr_tensor`, when given, replaces `lr`: a scalar on the device, read by
// the kernel (a captured CUDA graph then follows the schedule).
extern "C" int mmclip_fused_sgd(at::Tensor* const* params, at::Tensor* const* grads,
                                at::Tensor* const* momentum_buffers, int n, int n_buffers,
                                double weight_decay, double momentum, double lr,
                                at::Tensor* lr_tensor, bool is_first_step, at::Tensor* found_inf,
                                char* err, size_t err_len) {
  try {
    if (lr_tensor != nullptr) {
      at::_fused_sgd_(list(params, n), list(grads, n), list(momentum_buffers, n_buffers),
                      weight_decay, momentum, *lr_tensor, /*dampening=*/0.0, /*nesterov=*/false,
                      /*maximize=*/false, is_first_step, /*grad_scale=*/{}, maybe(found_inf));
    } else {
      at::_fused_sgd_(list(params, n), list(grads, n), list(momentum_buffers, n_buffers),
                      weight_decay, momentum, lr, /*dampening=*/0.0, /*nesterov=*/false,
                      /*maximize=*/false, is_first_step, /*grad_scale=*/{}, maybe(found_inf));
    }
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

extern "C" int mmclip_fused_adamw(at::Tensor* const* params, at::Tensor* const* grads,
                                  at::Tensor* const* exp_avgs, at::Tensor* const* exp_avg_sqs,
                                  at::Tensor* const* state_steps, int n, double lr,
                                  at::Tensor* lr_tensor, double beta1, double beta2,
                                  double weight_decay, double eps, at::Tensor* found_inf, char* err,
                                  size_t err_len) {
  try {
    if (lr_tensor != nullptr) {
      at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n),
                        /*max_exp_avg_sqs=*/{}, list(state_steps, n), *lr_tensor, beta1, beta2,
                        weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false,
                        /*grad_scale=*/{}, maybe(found_inf));
    } else {
      at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n),
                        /*max_exp_avg_sqs=*/{}, list(state_steps, n), lr, beta1, beta2,
                        weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false,
                        /*grad_scale=*/{}, maybe(found_inf));
    }
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// The L2 norm of all the tensors together, accumulated in float64 (finite
// float32 values cannot overflow it), written into `out` (a float64 scalar
// on their device), as `torch.nn.utils.clip_grad_norm_` computes it.
extern "C" int mmclip_foreach_norm(at::Tensor* const* tensors, int n, at::Tensor* out, char* err,
                                   size_t err_len) {
  try {
    auto norms = at::_foreach_norm(list(tensors, n), 2, at::kDouble);
    out->copy_(at::linalg_vector_norm(at::stack(norms), 2));
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// Multiplies every tensor in place by the scalar tensor `factor`.
extern "C" int mmclip_foreach_mul_(at::Tensor* const* tensors, int n, at::Tensor* factor,
                                   char* err, size_t err_len) {
  try {
    at::_foreach_mul_(list(tensors, n), *factor);
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// Drops each tensor's gradient (`grad = None`, as `zero_grad(set_to_none=True)`,
// PyTorch's default): the next backward pass then stores its gradient
// instead of adding it to zeros, and nothing is launched here.
extern "C" int mmclip_set_grads_to_none(at::Tensor* const* tensors, int n, char* err,
                                        size_t err_len) {
  try {
    for (int i = 0; i < n; ++i) tensors[i]->mutable_grad().reset();
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

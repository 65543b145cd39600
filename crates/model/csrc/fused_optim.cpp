// libtorch's fused optimiser updates (`torch.optim.SGD(fused=True)` and
// `torch.optim.AdamW(fused=True)`), for `model::fused`: one operator updates
// every parameter of a list, where the plain update dispatches several per
// parameter tensor (a few thousand per step for ViT-B/16 MMCLIP). tch does
// not bind them. Tensors cross as tch's handles, which are `at::Tensor*`.
// Errors (a device or dtype mismatch) come back as a message, never as an
// exception across the C boundary.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/_fused_sgd.h>

#include <cstring>
#include <exception>
#include <vector>

namespace {

std::vector<at::Tensor> list(at::Tensor* const* tensors, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(*tensors[i]);
  return out;
}

int fail(const std::exception& e, char* err, size_t err_len) {
  if (err_len > 0) {
    std::strncpy(err, e.what(), err_len - 1);
    err[err_len - 1] = '\0';
  }
  return 1;
}

}  // namespace

// `n_buffers` is `n`, or 0 without momentum: libtorch then takes no buffers.
extern "C" int mmclip_fused_sgd(at::Tensor* const* params, at::Tensor* const* grads,
                                at::Tensor* const* momentum_buffers, int n, int n_buffers,
                                double weight_decay, double momentum, double lr,
                                bool is_first_step, char* err, size_t err_len) {
  try {
    at::_fused_sgd_(list(params, n), list(grads, n), list(momentum_buffers, n_buffers), weight_decay,
                    momentum, lr, /*dampening=*/0.0, /*nesterov=*/false, /*maximize=*/false,
                    is_first_step);
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

extern "C" int mmclip_fused_adamw(at::Tensor* const* params, at::Tensor* const* grads,
                                  at::Tensor* const* exp_avgs, at::Tensor* const* exp_avg_sqs,
                                  at::Tensor* const* state_steps, int n, double lr, double beta1,
                                  double beta2, double weight_decay, double eps, char* err,
                                  size_t err_len) {
  try {
    at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n),
                      /*max_exp_avg_sqs=*/{}, list(state_steps, n), lr, beta1, beta2,
                      weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// What every file of the C++ shim shares: tch's tensor handles (which are
// `at::Tensor*`) as lists, and an exception turned into the message the
// Rust side reads from a caller's buffer, never thrown across the C
// boundary.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace mmclip {

inline std::vector<at::Tensor> list(at::Tensor* const* tensors, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(*tensors[i]);
  return out;
}

inline int fail_with(const std::string& message, char* err, size_t err_len) {
  if (err_len > 0) {
    std::strncpy(err, message.c_str(), err_len - 1);
    err[err_len - 1] = '\0';
  }
  return 1;
}

// c10::Error's what() carries a C++ backtrace after the message; the first
// part is what the user can act on.
inline int fail(const std::exception& e, char* err, size_t err_len) {
  if (auto c10 = dynamic_cast<const c10::Error*>(&e)) {
    return fail_with(c10->what_without_backtrace(), err, err_len);
  }
  return fail_with(e.what(), err, err_len);
}

}  // namespace mmclip

// Argument checks and parsing shared by the CPU and CUDA glue.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "activation.h"

namespace revgn {

inline Activation parse_activation(const std::string& name) {
  if (name == "identity") return Activation::Identity;
  if (name == "relu") return Activation::Relu;
  if (name == "leaky_relu") return Activation::LeakyRelu;
  if (name == "tanh") return Activation::Tanh;
  if (name == "gelu") return Activation::Gelu;
  if (name == "silu") return Activation::Silu;
  TORCH_CHECK(false, "revgn: unknown activation '", name, "'");
}

inline void check_coupling_args(const at::Tensor& u, const at::Tensor& du,
                                const std::optional<at::Tensor>& C, const at::Tensor& W,
                                const std::optional<at::Tensor>& b) {
  TORCH_CHECK(u.dim() == 2 && du.sizes() == u.sizes(), "revgn: u and du must be (n, h) alike");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "revgn: float32 or float64 expected, got ", u.scalar_type());
  const int64_t h = u.size(1);
  const int64_t M = C.has_value() ? C->size(1) : h;
  if (C.has_value()) {
    TORCH_CHECK(C->dim() == 2 && C->size(0) == h, "revgn: C must be (h, M)");
    TORCH_CHECK(C->scalar_type() == u.scalar_type() && C->device() == u.device(),
                "revgn: C must match u's dtype and device");
  }
  TORCH_CHECK(W.dim() == 2 && W.size(1) == M, "revgn: W must be (h_out, M)");
  TORCH_CHECK(W.scalar_type() == u.scalar_type() && W.device() == u.device(),
              "revgn: W must match u's dtype and device");
  if (b.has_value()) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == W.size(0), "revgn: b must be (h_out,)");
    TORCH_CHECK(b->scalar_type() == u.scalar_type() && b->device() == u.device(),
                "revgn: b must match u's dtype and device");
  }
}

inline void check_square_batch(const at::Tensor& K, const at::Tensor& R) {
  TORCH_CHECK(K.dim() == 3 && K.size(1) == K.size(2), "revgn: K must be (B, n, n)");
  TORCH_CHECK(R.dim() == 3 && R.size(0) == K.size(0) && R.size(1) == K.size(1),
              "revgn: R must be (B, n, k) matching K");
  TORCH_CHECK(K.scalar_type() == R.scalar_type() && K.device() == R.device(),
              "revgn: K and R must share dtype and device");
  TORCH_CHECK(K.scalar_type() == at::kFloat || K.scalar_type() == at::kDouble,
              "revgn: float32 or float64 expected");
}

// P = u C, or a copy of u without a bottleneck (the epilogues write in place).
inline at::Tensor preactivation(const at::Tensor& u, const std::optional<at::Tensor>& C) {
  return C.has_value() ? at::mm(u, *C) : u.clone(at::MemoryFormat::Contiguous);
}

}  // namespace revgn

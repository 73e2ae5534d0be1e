// CUDA kernels of the coupling ops (coupling.cu): plain parameter structs and launchers, no
// torch, so that `nvcc -c coupling.cu` checks them on their own.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../activation.h"

namespace revgn {

// In place over numel elements: pre <- s(pre), dpre <- s'(pre) * dpre (or only the second).
template <typename T>
struct ActivationParams {
  T* pre;
  T* dpre;
  int64_t numel;
  Activation act;
  bool write_activation;
};

// out <- y - out - b (b broadcast over rows, may be null), dx <- dy - k; n rows of width h.
template <typename T>
struct InverseEpilogueParams {
  T* out;
  const T* y;
  const T* b;
  const T* k;
  const T* dy;
  T* dx;
  int64_t n;
  int64_t h;
};

template <typename T>
cudaError_t launch_activation(const ActivationParams<T>& p, cudaStream_t stream);
template <typename T>
cudaError_t launch_inverse_epilogue(const InverseEpilogueParams<T>& p, cudaStream_t stream);

}  // namespace revgn

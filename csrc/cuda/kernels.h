// CUDA kernels of revgn: plain parameter structs and launchers, no torch, so that
// `nvcc -c epilogue.cu cholesky.cu` checks them on their own.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../activation.h"
#include "../limits.h"

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

// Batched small Cholesky: L (B, n, n) holds K + damping I on entry and the factor on exit
// (upper triangle zeroed); Z (B, n, k) holds R on entry and the solution on exit; info (B,)
// gets 0 or the order of the first non-positive pivot. One thread block per system.
template <typename T>
struct CholeskyParams {
  T* L;
  T* Z;
  int32_t* info;
  int64_t batch;
  int n;
  int k;
};

template <typename T>
cudaError_t launch_activation(const ActivationParams<T>& p, cudaStream_t stream);
template <typename T>
cudaError_t launch_inverse_epilogue(const InverseEpilogueParams<T>& p, cudaStream_t stream);
template <typename T>
cudaError_t launch_small_cholesky(const CholeskyParams<T>& p, cudaStream_t stream);

}  // namespace revgn

// CUDA kernel of cholesky_factor_solve (cholesky.cu): a plain parameter struct and its
// launcher, no torch, so that `nvcc -c cholesky.cu` checks it on its own.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../limits.h"

namespace revgn {

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
cudaError_t launch_small_cholesky(const CholeskyParams<T>& p, cudaStream_t stream);

}  // namespace revgn

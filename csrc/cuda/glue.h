// What the CUDA glue of every op shares: the torch headers it needs and the launch check.
// (Torch-free CUDA kernels live in the .cu files; see coupling.h and cholesky.h.)
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "../ops_common.h"

namespace revgn {

inline void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "revgn: ", what, " failed: ", cudaGetErrorString(err));
}

}  // namespace revgn

// Elementwise epilogues between the GEMMs of a coupling inversion (DESIGN §3, steps 1-2):
//   A = s(P), S = s'(P) * dP           (activation_kernel)
//   x = y - A W^T - b, dx = dy - k     (inverse_epilogue_kernel)
#include "coupling.h"

namespace revgn {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void activation_kernel(ActivationParams<T> p) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.numel;
       i += stride) {
    T value, slope;
    activation_and_slope(p.act, p.pre[i], value, slope);
    p.dpre[i] *= slope;
    if (p.write_activation) p.pre[i] = value;
  }
}

template <typename T>
__global__ void inverse_epilogue_kernel(InverseEpilogueParams<T> p) {
  const int64_t total = p.n * p.h;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += stride) {
    const T bias = p.b ? p.b[i % p.h] : T(0);
    p.out[i] = p.y[i] - p.out[i] - bias;
    p.dx[i] = p.dy[i] - p.k[i];
  }
}

inline int grid_for(int64_t numel) {
  const int64_t blocks = (numel + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

}  // namespace

template <typename T>
cudaError_t launch_activation(const ActivationParams<T>& p, cudaStream_t stream) {
  activation_kernel<T><<<grid_for(p.numel), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_inverse_epilogue(const InverseEpilogueParams<T>& p, cudaStream_t stream) {
  inverse_epilogue_kernel<T><<<grid_for(p.n * p.h), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template cudaError_t launch_activation<float>(const ActivationParams<float>&, cudaStream_t);
template cudaError_t launch_activation<double>(const ActivationParams<double>&, cudaStream_t);
template cudaError_t launch_inverse_epilogue<float>(const InverseEpilogueParams<float>&,
                                                    cudaStream_t);
template cudaError_t launch_inverse_epilogue<double>(const InverseEpilogueParams<double>&,
                                                     cudaStream_t);

}  // namespace revgn

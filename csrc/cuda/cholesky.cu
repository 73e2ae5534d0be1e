// Batched small Cholesky factor-and-solve, one thread block per system, the matrix in shared
// memory: the per-sample k x k softmax-Hessian systems and small Gram matrices.
//   K + damping I = L L^T,  L w = r,  L^T z = w
#include "cholesky.h"

namespace revgn {
namespace {

constexpr int kThreads = 128;

template <typename T>
__global__ void small_cholesky_kernel(CholeskyParams<T> p) {
  __shared__ T L[kSmallCholeskyMax * kSmallCholeskyMax];
  __shared__ int failed_at;
  const int n = p.n;
  const int64_t sys = blockIdx.x;
  T* Lg = p.L + sys * n * n;
  T* Zg = p.Z + sys * static_cast<int64_t>(n) * p.k;
  for (int i = threadIdx.x; i < n * n; i += blockDim.x) L[i] = Lg[i];
  if (threadIdx.x == 0) failed_at = 0;
  __syncthreads();

  // Right-looking: column j is finished, then the trailing matrix is updated in parallel.
  for (int j = 0; j < n; ++j) {
    if (threadIdx.x == 0) {
      const T d = L[j * n + j];
      if (!(d > T(0))) {
        failed_at = j + 1;
      } else {
        L[j * n + j] = sqrt(d);
      }
    }
    __syncthreads();
    if (failed_at) break;
    const T d = L[j * n + j];
    for (int i = j + 1 + threadIdx.x; i < n; i += blockDim.x) L[i * n + j] /= d;
    __syncthreads();
    for (int idx = threadIdx.x; idx < (n - j - 1) * (n - j - 1); idx += blockDim.x) {
      const int r = j + 1 + idx / (n - j - 1);
      const int c = j + 1 + idx % (n - j - 1);
      if (c <= r) L[r * n + c] -= L[r * n + j] * L[c * n + j];
    }
    __syncthreads();
  }

  if (threadIdx.x == 0) p.info[sys] = failed_at;
  for (int i = threadIdx.x; i < n * n; i += blockDim.x) {
    Lg[i] = (i % n) <= (i / n) ? L[i] : T(0);
  }
  if (failed_at) return;
  // Each thread solves whole right-hand-side columns.
  for (int c = threadIdx.x; c < p.k; c += blockDim.x) {
    for (int i = 0; i < n; ++i) {
      T s = Zg[i * p.k + c];
      for (int q = 0; q < i; ++q) s -= L[i * n + q] * Zg[q * p.k + c];
      Zg[i * p.k + c] = s / L[i * n + i];
    }
    for (int i = n - 1; i >= 0; --i) {
      T s = Zg[i * p.k + c];
      for (int q = i + 1; q < n; ++q) s -= L[q * n + i] * Zg[q * p.k + c];
      Zg[i * p.k + c] = s / L[i * n + i];
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_small_cholesky(const CholeskyParams<T>& p, cudaStream_t stream) {
  if (p.n > kSmallCholeskyMax || p.n < 1) return cudaErrorInvalidValue;
  if (p.batch == 0) return cudaSuccess;
  small_cholesky_kernel<T><<<static_cast<unsigned>(p.batch), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template cudaError_t launch_small_cholesky<float>(const CholeskyParams<float>&, cudaStream_t);
template cudaError_t launch_small_cholesky<double>(const CholeskyParams<double>&, cudaStream_t);

}  // namespace revgn

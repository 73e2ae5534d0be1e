// CPU implementation of cholesky_factor_solve (revgn/ops/cholesky.py):
//   K + damping I = L L^T,  L w = r,  L^T z = w
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../limits.h"
#include "../ops_common.h"

namespace revgn {
namespace {

// Small systems (order up to kSmallCholeskyMax): one Cholesky + two triangular solves per
// system, systems in parallel. Larger ones go to LAPACK through ATen.

template <typename T>
int32_t cholesky_solve_one(T* L, T* Z, int64_t n, int64_t k) {
  for (int64_t j = 0; j < n; ++j) {
    T d = L[j * n + j];
    for (int64_t p = 0; p < j; ++p) d -= L[j * n + p] * L[j * n + p];
    if (!(d > T(0))) return static_cast<int32_t>(j + 1);
    d = std::sqrt(d);
    L[j * n + j] = d;
    for (int64_t i = j + 1; i < n; ++i) {
      T s = L[i * n + j];
      for (int64_t p = 0; p < j; ++p) s -= L[i * n + p] * L[j * n + p];
      L[i * n + j] = s / d;
    }
    for (int64_t c = j + 1; c < n; ++c) L[j * n + c] = T(0);
  }
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t i = 0; i < n; ++i) {  // L w = r
      T s = Z[i * k + c];
      for (int64_t p = 0; p < i; ++p) s -= L[i * n + p] * Z[p * k + c];
      Z[i * k + c] = s / L[i * n + i];
    }
    for (int64_t i = n - 1; i >= 0; --i) {  // L^T z = w
      T s = Z[i * k + c];
      for (int64_t p = i + 1; p < n; ++p) s -= L[p * n + i] * Z[p * k + c];
      Z[i * k + c] = s / L[i * n + i];
    }
  }
  return 0;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cholesky_factor_solve_cpu(const at::Tensor& K,
                                                                         const at::Tensor& R,
                                                                         double damping) {
  check_square_batch(K, R);
  const int64_t B = K.size(0), n = K.size(1), k = R.size(2);
  at::Tensor Kd = damping != 0.0 ? K + damping * at::eye(n, K.options()) : K;
  if (n > kSmallCholeskyMax) {
    auto [L, info] = at::linalg_cholesky_ex(Kd);
    return {L, at::cholesky_solve(R, L), info.to(at::kInt)};
  }
  at::Tensor L = Kd.contiguous().clone();
  at::Tensor Z = R.contiguous().clone();
  at::Tensor info = at::zeros({B}, K.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(K.scalar_type(), "cholesky_factor_solve_cpu", [&] {
    scalar_t* Lp = L.data_ptr<scalar_t>();
    scalar_t* Zp = Z.data_ptr<scalar_t>();
    int32_t* ip = info.data_ptr<int32_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        ip[s] = cholesky_solve_one<scalar_t>(Lp + s * n * n, Zp + s * n * k, n, k);
      }
    });
  });
  return {L, Z, info};
}

}  // namespace

TORCH_LIBRARY_IMPL(revgn, CPU, m) {
  m.impl("cholesky_factor_solve", &cholesky_factor_solve_cpu);
}

}  // namespace revgn

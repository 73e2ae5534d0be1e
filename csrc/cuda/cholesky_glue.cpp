// CUDA glue of cholesky_factor_solve (revgn/ops/cholesky.py): the small systems through
// cholesky.h (one thread block per system), larger ones through ATen (cuSOLVER).
#include "cholesky.h"
#include "glue.h"

namespace revgn {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> cholesky_factor_solve_cuda(const at::Tensor& K,
                                                                          const at::Tensor& R,
                                                                          double damping) {
  check_square_batch(K, R);
  c10::cuda::CUDAGuard guard(K.device());
  const int64_t n = K.size(1);
  at::Tensor L = (damping != 0.0 ? K + damping * at::eye(n, K.options()) : K).contiguous().clone();
  if (n > kSmallCholeskyMax) {  // the vendor library (cuSOLVER) for large systems
    auto [factor, info] = at::linalg_cholesky_ex(L);
    return {factor, at::cholesky_solve(R, factor), info.to(at::kInt)};
  }
  at::Tensor Z = R.contiguous().clone();
  at::Tensor info = at::zeros({K.size(0)}, K.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(K.scalar_type(), "cholesky_factor_solve_cuda", [&] {
    CholeskyParams<scalar_t> p{L.data_ptr<scalar_t>(), Z.data_ptr<scalar_t>(),
                               info.data_ptr<int32_t>(), K.size(0), static_cast<int>(n),
                               static_cast<int>(R.size(2))};
    check_cuda(launch_small_cholesky<scalar_t>(p, c10::cuda::getCurrentCUDAStream()),
               "small Cholesky");
  });
  return {L, Z, info};
}

}  // namespace

TORCH_LIBRARY_IMPL(revgn, CUDA, m) {
  m.impl("cholesky_factor_solve", &cholesky_factor_solve_cuda);
}

}  // namespace revgn

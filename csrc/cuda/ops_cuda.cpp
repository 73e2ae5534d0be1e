// CUDA glue: GEMMs through ATen (cuBLAS), the epilogues and small solves through kernels.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../ops_common.h"
#include "kernels.h"

namespace revgn {
namespace {

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "revgn: ", what, " failed: ", cudaGetErrorString(err));
}

template <typename T>
void activation_(at::Tensor& pre, at::Tensor& dpre, Activation act, bool write_activation) {
  ActivationParams<T> p{pre.data_ptr<T>(), dpre.data_ptr<T>(), pre.numel(), act,
                        write_activation};
  check_cuda(launch_activation<T>(p, c10::cuda::getCurrentCUDAStream()), "activation kernel");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> coupling_inverse_with_tangent_cuda(
    const at::Tensor& u, const at::Tensor& du, const at::Tensor& y, const at::Tensor& dy,
    const std::optional<at::Tensor>& C, const at::Tensor& W, const std::optional<at::Tensor>& b,
    c10::string_view activation) {
  check_coupling_args(u, du, C, W, b);
  c10::cuda::CUDAGuard guard(u.device());
  const Activation act = parse_activation(std::string(activation));
  at::Tensor A = preactivation(u.contiguous(), C);
  at::Tensor S = preactivation(du.contiguous(), C);
  at::Tensor x = at::Tensor(), k, dx;
  const at::Tensor yc = y.contiguous(), dyc = dy.contiguous();
  const at::Tensor bc = b.has_value() ? b->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "coupling_inverse_with_tangent_cuda", [&] {
    activation_<scalar_t>(A, S, act, /*write_activation=*/true);
    x = at::mm(A, W.t());
    k = at::mm(S, W.t());
    dx = at::empty_like(k);
    InverseEpilogueParams<scalar_t> p{x.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(),
                                      bc.defined() ? bc.data_ptr<scalar_t>() : nullptr,
                                      k.data_ptr<scalar_t>(), dyc.data_ptr<scalar_t>(),
                                      dx.data_ptr<scalar_t>(), x.size(0), x.size(1)};
    check_cuda(launch_inverse_epilogue<scalar_t>(p, c10::cuda::getCurrentCUDAStream()),
               "inverse epilogue");
  });
  return {x, dx, A, k};
}

at::Tensor coupling_tangent_cuda(const at::Tensor& pre, const at::Tensor& du,
                                 const std::optional<at::Tensor>& C, const at::Tensor& W,
                                 c10::string_view activation) {
  check_coupling_args(du, du, C, W, std::nullopt);
  c10::cuda::CUDAGuard guard(du.device());
  const Activation act = parse_activation(std::string(activation));
  at::Tensor S = preactivation(du.contiguous(), C);
  at::Tensor P = pre.contiguous();
  TORCH_CHECK(P.sizes() == S.sizes(), "revgn: pre must be (n, M)");
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "coupling_tangent_cuda", [&] {
    activation_<scalar_t>(P, S, act, /*write_activation=*/false);
  });
  return at::mm(S, W.t());
}

at::Tensor gram_cuda(const at::Tensor& A, bool bias) {
  TORCH_CHECK(A.dim() == 2, "revgn: A must be (n, M)");
  c10::cuda::CUDAGuard guard(A.device());
  at::Tensor K = at::mm(A, A.t());
  if (bias) K.add_(1);
  return K;
}

void jt_update_cuda(at::Tensor W, const std::optional<at::Tensor>& b, const at::Tensor& A,
                    const at::Tensor& Z, double alpha) {
  TORCH_CHECK(A.dim() == 2 && Z.dim() == 2 && A.size(0) == Z.size(0),
              "revgn: A (n, M) and Z (n, h) must share n");
  c10::cuda::CUDAGuard guard(W.device());
  W.addmm_(Z.t(), A, /*beta=*/1, /*alpha=*/alpha);
  if (b.has_value()) b->add_(Z.sum(0), alpha);
}

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
  m.impl("coupling_inverse_with_tangent", &coupling_inverse_with_tangent_cuda);
  m.impl("coupling_tangent", &coupling_tangent_cuda);
  m.impl("gram", &gram_cuda);
  m.impl("jt_update_", &jt_update_cuda);
  m.impl("cholesky_factor_solve", &cholesky_factor_solve_cuda);
}

}  // namespace revgn

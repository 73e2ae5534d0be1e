// CUDA glue of the coupling ops (revgn/ops/coupling.py): GEMMs through ATen (cuBLAS), the
// elementwise epilogues between them through coupling.h.
#include "coupling.h"
#include "glue.h"

namespace revgn {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(revgn, CUDA, m) {
  m.impl("coupling_inverse_with_tangent", &coupling_inverse_with_tangent_cuda);
  m.impl("coupling_tangent", &coupling_tangent_cuda);
}

}  // namespace revgn

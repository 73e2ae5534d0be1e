// CPU implementation of the coupling ops (revgn/ops/coupling.py): the GEMMs go to ATen (MKL /
// oneDNN); everything between them is one parallel pass over memory instead of the several a
// chain of tensor ops would make.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "../ops_common.h"

namespace revgn {
namespace {

constexpr int64_t kGrain = 1 << 14;

// The elementwise loops below are instantiated per activation (the switch leaves the loop, so
// the compiler vectorizes it) and, with GCC on x86-64, cloned for AVX2 and AVX-512 with a
// run-time pick: a portable build still gets the wide vectors ATen's own kernels use.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define REVGN_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define REVGN_VECTOR_CLONES
#endif

template <Activation act, typename T>
REVGN_VECTOR_CLONES void activation_with_tangent_range(T* pre, T* dpre, int64_t begin,
                                                       int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    T value, slope;
    activation_and_slope(act, pre[i], value, slope);
    pre[i] = value;
    dpre[i] *= slope;
  }
}

template <Activation act, typename T>
REVGN_VECTOR_CLONES void scale_by_slope_range(const T* pre, T* dpre, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    T value, slope;
    activation_and_slope(act, pre[i], value, slope);
    dpre[i] *= slope;
  }
}

// Calls fn.template operator()<act>() with the activation as a compile-time constant.
template <typename Fn>
void dispatch_activation(Activation act, Fn&& fn) {
  switch (act) {
    case Activation::Identity: return fn(std::integral_constant<Activation, Activation::Identity>{});
    case Activation::Relu: return fn(std::integral_constant<Activation, Activation::Relu>{});
    case Activation::LeakyRelu:
      return fn(std::integral_constant<Activation, Activation::LeakyRelu>{});
    case Activation::Tanh: return fn(std::integral_constant<Activation, Activation::Tanh>{});
    case Activation::Gelu: return fn(std::integral_constant<Activation, Activation::Gelu>{});
    case Activation::Silu: return fn(std::integral_constant<Activation, Activation::Silu>{});
  }
}

// In place: S = s'(P) * dP (into dP) and A = s(P) (into P), one pass.
template <typename T>
void activation_with_tangent_(T* pre, T* dpre, int64_t numel, Activation act) {
  dispatch_activation(act, [&](auto a) {
    at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
      activation_with_tangent_range<decltype(a)::value, T>(pre, dpre, begin, end);
    });
  });
}

// In place: dP *= s'(P).
template <typename T>
void scale_by_slope_(const T* pre, T* dpre, int64_t numel, Activation act) {
  dispatch_activation(act, [&](auto a) {
    at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
      scale_by_slope_range<decltype(a)::value, T>(pre, dpre, begin, end);
    });
  });
}

// x = y - out - b (out overwritten by x), dx = dy - k; rows of width h.
template <typename T>
void inverse_epilogue_(T* out, const T* y, const T* b, const T* k, const T* dy, T* dx, int64_t n,
                       int64_t h) {
  at::parallel_for(0, n, std::max<int64_t>(1, kGrain / std::max<int64_t>(h, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t j = 0; j < h; ++j) {
        const int64_t i = r * h + j;
        out[i] = y[i] - out[i] - (b ? b[j] : T(0));
        dx[i] = dy[i] - k[i];
      }
    }
  });
}

// The tangent's pre-activation S = du C (n x M) lives only inside one call. A fresh buffer of
// that size is mapped anew by the allocator and faulted in page by page on every call (at the
// paper's MNIST shape, 31 MiB three times a step); this thread's buffer is kept instead and
// grown when a call needs more.
at::Tensor tangent_preactivation(const at::Tensor& du, const std::optional<at::Tensor>& C) {
  thread_local at::Tensor workspace;
  const int64_t rows = du.size(0), cols = C.has_value() ? C->size(1) : du.size(1);
  const int64_t numel = rows * cols;
  if (!workspace.defined() || workspace.numel() < numel ||
      workspace.scalar_type() != du.scalar_type()) {
    workspace = at::Tensor();  // release before allocating the larger one
    // a normal tensor, even when the first call runs under torch.inference_mode(): an inference
    // tensor could not be written by later calls outside it
    c10::InferenceMode normal_tensor(/*enabled=*/false);
    workspace = at::empty({numel}, du.options());
  }
  at::Tensor S = workspace.narrow(0, 0, numel).view({rows, cols});
  if (C.has_value()) {
    at::mm_out(S, du, *C);
  } else {
    S.copy_(du);
  }
  return S;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> coupling_inverse_with_tangent_cpu(
    const at::Tensor& u, const at::Tensor& du, const at::Tensor& y, const at::Tensor& dy,
    const std::optional<at::Tensor>& C, const at::Tensor& W, const std::optional<at::Tensor>& b,
    c10::string_view activation) {
  check_coupling_args(u, du, C, W, b);
  const Activation act = parse_activation(std::string(activation));
  // Separate products for primal and tangent: A keeps its own buffer and the tangent's
  // workspace dies with this call.
  at::Tensor A = preactivation(u.contiguous(), C);
  at::Tensor S = tangent_preactivation(du.contiguous(), C);
  at::Tensor Wt = W.t();
  at::Tensor x, k, dx;
  const at::Tensor yc = y.contiguous(), dyc = dy.contiguous();
  at::Tensor bc = b.has_value() ? b->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "coupling_inverse_with_tangent_cpu", [&] {
    activation_with_tangent_<scalar_t>(A.data_ptr<scalar_t>(), S.data_ptr<scalar_t>(), A.numel(),
                                       act);
    x = at::mm(A, Wt);
    k = at::mm(S, Wt);
    dx = at::empty_like(k);
    inverse_epilogue_<scalar_t>(x.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(),
                                bc.defined() ? bc.data_ptr<scalar_t>() : nullptr,
                                k.data_ptr<scalar_t>(), dyc.data_ptr<scalar_t>(),
                                dx.data_ptr<scalar_t>(), x.size(0), x.size(1));
  });
  return {x, dx, A, k};
}

at::Tensor coupling_tangent_cpu(const at::Tensor& pre, const at::Tensor& du,
                                const std::optional<at::Tensor>& C, const at::Tensor& W,
                                c10::string_view activation) {
  check_coupling_args(du, du, C, W, std::nullopt);
  const Activation act = parse_activation(std::string(activation));
  at::Tensor S = tangent_preactivation(du.contiguous(), C);
  const at::Tensor P = pre.contiguous();
  TORCH_CHECK(P.sizes() == S.sizes(), "revgn: pre must be (n, M)");
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "coupling_tangent_cpu", [&] {
    scale_by_slope_<scalar_t>(P.data_ptr<scalar_t>(), S.data_ptr<scalar_t>(), S.numel(), act);
  });
  return at::mm(S, W.t());
}

}  // namespace

TORCH_LIBRARY_IMPL(revgn, CPU, m) {
  m.impl("coupling_inverse_with_tangent", &coupling_inverse_with_tangent_cpu);
  m.impl("coupling_tangent", &coupling_tangent_cpu);
}

}  // namespace revgn

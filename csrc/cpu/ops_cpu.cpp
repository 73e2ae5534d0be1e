// CPU implementations: the GEMMs go to ATen (MKL / oneDNN); everything between them is one
// parallel pass over memory instead of the several a chain of tensor ops would make.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../limits.h"
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

// Copies the strict lower triangle of the n x n row-major K onto the upper one, in tiles so
// that both the rows read and the columns written stay in cache.
template <typename T>
void mirror_lower_(T* K, int64_t n) {
  constexpr int64_t kTile = 64;
  const int64_t tiles = (n + kTile - 1) / kTile;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ti = begin; ti < end; ++ti) {
      const int64_t i0 = ti * kTile, i1 = std::min(n, i0 + kTile);
      for (int64_t j0 = i0; j0 < n; j0 += kTile) {
        const int64_t j1 = std::min(n, j0 + kTile);
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = std::max(j0, i + 1); j < j1; ++j) K[i * n + j] = K[j * n + i];
      }
    }
  });
}

// K = A A^T is symmetric, so only the lower block triangle of row panels is multiplied (one
// GEMM per panel, (p + 1) / 2p of the multiply-adds with p panels) and then mirrored. Smaller
// panels cost GEMM efficiency: four pay off from n = 512 (0.68x the time of one product at
// n = 1024, M = 8000), two from n = 256.
at::Tensor gram_cpu(const at::Tensor& A, bool bias) {
  TORCH_CHECK(A.dim() == 2, "revgn: A must be (n, M)");
  const int64_t n = A.size(0);
  const bool blocked = A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble;
  const int64_t panels = !blocked ? 1 : (n >= 512 ? 4 : (n >= 256 ? 2 : 1));
  at::Tensor K;
  if (panels == 1) {
    K = at::mm(A, A.t());
  } else {
    at::Tensor Ac = A.contiguous();
    K = at::empty({n, n}, A.options());
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t lo = n * p / panels, hi = n * (p + 1) / panels;
      at::Tensor block = K.narrow(0, lo, hi - lo).narrow(1, 0, hi);
      at::mm_out(block, Ac.narrow(0, lo, hi - lo), Ac.narrow(0, 0, hi).t());
    }
    AT_DISPATCH_FLOATING_TYPES(K.scalar_type(), "revgn_gram_mirror",
                               [&] { mirror_lower_<scalar_t>(K.data_ptr<scalar_t>(), n); });
  }
  if (bias) K.add_(1);
  return K;
}

void jt_update_cpu(at::Tensor W, const std::optional<at::Tensor>& b, const at::Tensor& A,
                   const at::Tensor& Z, double alpha) {
  TORCH_CHECK(A.dim() == 2 && Z.dim() == 2 && A.size(0) == Z.size(0),
              "revgn: A (n, M) and Z (n, h) must share n");
  TORCH_CHECK(W.size(0) == Z.size(1) && W.size(1) == A.size(1), "revgn: W must be (h, M)");
  W.addmm_(Z.t(), A, /*beta=*/1, /*alpha=*/alpha);
  if (b.has_value()) b->add_(Z.sum(0), alpha);
}

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
  m.impl("coupling_inverse_with_tangent", &coupling_inverse_with_tangent_cpu);
  m.impl("coupling_tangent", &coupling_tangent_cpu);
  m.impl("gram", &gram_cpu);
  m.impl("jt_update_", &jt_update_cpu);
  m.impl("cholesky_factor_solve", &cholesky_factor_solve_cpu);
}

}  // namespace revgn

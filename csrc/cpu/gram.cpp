// CPU implementation of gram (revgn/ops/gram.py): K = A A^T (+ 1 1^T), symmetric.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace revgn {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(revgn, CPU, m) {
  m.impl("gram", &gram_cpu);
}

}  // namespace revgn

"""Batched small Cholesky factor-and-solve, one system per program (DESIGN §3.1):

    K_b + damping I = L_b L_b^T,    L_b w = r_b,    L_b^T z_b = w

for the per-sample k x k softmax-Hessian systems and the Grams of small batches. ``info`` follows
LAPACK: 0, or the order of the first leading minor that is not positive definite (a pivot that
is not > 0, NaN included); ``L`` and ``Z`` of such a system are unspecified. Only the lower
triangle of ``K`` is read; ``L``'s upper triangle is zero, as ``torch.linalg.cholesky_ex`` gives.

Systems larger than ``MAX_SMALL_N`` (128 in float32, 64 in float64: beyond, the register tile
spills on sm90) go to the vendor library (cuSOLVER / LAPACK through
``torch.linalg.cholesky_ex`` and ``torch.cholesky_solve``), which is the fast path there.
"""
import torch
import triton
import triton.language as tl

from ._common import check_operands, exact_scalar, on_device, split_scalar

MAX_SMALL_N = {torch.float32: 128, torch.float64: 64}
MAX_RHS_BLOCK = 32


@triton.jit
def _small_cholesky_solve_kernel(K, R, L_OUT, Z_OUT, INFO, n, k, shift_hi, shift_lo,
                                 BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """Program ``(b, c)``: factor system ``b`` (right-looking, the whole matrix in one register
    tile) and solve for its right-hand-side columns ``c * BLOCK_R ...``. K, L_OUT: (B, n, n),
    R, Z_OUT: (B, n, k), contiguous. Triton has no dynamic indexing into a tile, so row or
    column ``j`` is read by a masked reduction: every step costs O(BLOCK_N^2), fine for the
    sizes this kernel takes."""
    system = tl.program_id(0)
    chunk = tl.program_id(1)
    idx = tl.arange(0, BLOCK_N)
    rows = idx[:, None]
    cols = idx[None, :]
    inside = (rows < n) & (cols < n)
    square_base = system.to(tl.int64) * n * n
    F = tl.load(K + square_base + rows * n + cols, mask=inside, other=0.0)
    F += tl.where((rows == cols) & inside, exact_scalar(shift_hi, shift_lo, F), 0.0)

    # Step j: F holds L in its columns < j and the Schur complement of the leading j x j block
    # in the trailing columns (lower part; the upper part is never read).
    info = system * 0
    for j in range(n):
        col = tl.sum(tl.where(cols == j, F, 0.0), axis=1)             # F[:, j]
        pivot = tl.sum(tl.where(idx == j, col, 0.0), axis=0)          # F[j, j]
        failed = ~(pivot > 0)
        info = tl.where((info == 0) & failed, j + 1, info)
        l_col = tl.where(idx >= j, col / tl.sqrt(tl.where(failed, 1.0, pivot)), 0.0)
        update = tl.where(cols > j, l_col[:, None] * l_col[None, :], 0.0)
        F = tl.where(cols == j, l_col[:, None], F - update)
    L = tl.where(rows >= cols, F, 0.0)
    tl.store(L_OUT + square_base + rows * n + cols, L, mask=inside & (chunk == 0))
    tl.store(INFO + system, info, mask=chunk == 0)

    rhs_cols = chunk * BLOCK_R + tl.arange(0, BLOCK_R)
    rhs_off = system.to(tl.int64) * n * k + rows * k + rhs_cols[None, :]
    rhs_mask = (rows < n) & (rhs_cols[None, :] < k)
    rhs = tl.load(R + rhs_off, mask=rhs_mask, other=0.0)
    w = tl.zeros_like(rhs)
    for i in range(n):                                                # L w = r
        l_row = tl.sum(tl.where(rows == i, L, 0.0), axis=0)           # L[i, :]
        l_ii = tl.sum(tl.where(idx == i, l_row, 0.0), axis=0)
        r_i = tl.sum(tl.where(rows == i, rhs, 0.0), axis=0)           # R[i, :]
        w_i = (r_i - tl.sum(l_row[:, None] * w, axis=0)) / l_ii
        w = tl.where(rows == i, w_i[None, :], w)
    z = tl.zeros_like(rhs)
    for step in range(n):                                             # L^T z = w
        i = n - 1 - step
        l_col = tl.sum(tl.where(cols == i, L, 0.0), axis=1)           # L[:, i]
        l_ii = tl.sum(tl.where(idx == i, l_col, 0.0), axis=0)
        w_i = tl.sum(tl.where(rows == i, w, 0.0), axis=0)
        z_i = (w_i - tl.sum(l_col[:, None] * z, axis=0)) / l_ii
        z = tl.where(rows == i, z_i[None, :], z)
    tl.store(Z_OUT + rhs_off, z, mask=rhs_mask)


def _vendor_factor_solve(K, R, damping):
    """Systems past ``MAX_SMALL_N`` (and empty batches): cuSOLVER / LAPACK through ATen."""
    if damping:
        K = K + damping * torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    L, info = torch.linalg.cholesky_ex(K)
    return L, torch.cholesky_solve(R, L), info.to(torch.int32)


def _warps(block_n: int, dtype: torch.dtype) -> int:
    # About 16 (float32) or 8 (float64) matrix elements per thread: the tile stays in registers.
    per_warp = 32 * (16 if dtype == torch.float32 else 8)
    return max(1, min(16, block_n * block_n // per_warp))


@torch.library.custom_op("revgn_triton::cholesky_factor_solve", mutates_args=())
def cholesky_factor_solve(K: torch.Tensor, R: torch.Tensor, damping: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L, Z, info)`` of ``revgn.ops.cholesky_factor_solve``: ``K + damping I = L L^T``,
    ``Z = (L L^T)^-1 R``; K (..., n, n), R (..., n, k), info (...) int32."""
    check_operands(K, R)
    n = K.shape[-1]
    if K.dim() < 2 or K.shape[-2] != n or R.shape[:-1] != K.shape[:-1]:
        raise ValueError(f"cholesky_factor_solve: K {tuple(K.shape)} must be (..., n, n) and "
                         f"R {tuple(R.shape)} (..., n, k)")
    batch, k = K.shape[:-2], R.shape[-1]
    if n > MAX_SMALL_N[K.dtype] or K.numel() == 0 or R.numel() == 0:
        return _vendor_factor_solve(K, R, damping)
    Kb = K.reshape(-1, n, n).contiguous()
    Rb = R.reshape(-1, n, k).contiguous()
    L = torch.empty_like(Kb)
    Z = torch.empty_like(Rb)
    info = torch.empty(Kb.shape[0], dtype=torch.int32, device=K.device)
    block_n = max(16, triton.next_power_of_2(n))
    # The right-hand-side tiles share the registers with the matrix: fewer columns per program
    # beside a 128-wide matrix.
    block_r = max(16, min(MAX_RHS_BLOCK, triton.next_power_of_2(k), 2048 // block_n))
    shift_hi, shift_lo = split_scalar(float(damping))
    grid = (Kb.shape[0], triton.cdiv(k, block_r))
    with on_device(K):
        _small_cholesky_solve_kernel[grid](Kb, Rb, L, Z, info, n, k, shift_hi, shift_lo,
                                           BLOCK_N=block_n, BLOCK_R=block_r,
                                           num_warps=_warps(block_n, K.dtype))
    return L.reshape(K.shape), Z.reshape(R.shape), info.reshape(batch)

"""Batched small Cholesky factor-and-solve, one system per program (DESIGN §3.1):

    K + damping I = L L^T,   L w = r,   L^T z = w

for the per-sample k x k softmax-Hessian systems and small Gram matrices. The matrix lives in
registers as one tile; column ``j`` is extracted with a masked reduction (Triton has no dynamic
indexing), so the factorization is ``n`` rank-one updates of the tile. Larger systems go to the
vendor library (cuSOLVER / LAPACK through ``torch.linalg``).
"""
import torch
import triton
import triton.language as tl

MAX_SMALL = 64


@triton.jit
def _small_cholesky_kernel(K, R, L_OUT, Z_OUT, INFO, n, k, damping,
                           stride_kb, stride_rb, BLOCK: tl.constexpr, BLOCK_R: tl.constexpr):
    sys = tl.program_id(0)
    chunk = tl.program_id(1)
    r = tl.arange(0, BLOCK)
    c = tl.arange(0, BLOCK)
    square = (r[:, None] < n) & (c[None, :] < n)
    A = tl.load(K + sys * stride_kb + r[:, None] * n + c[None, :], mask=square, other=0.0)
    A += tl.where((r[:, None] == c[None, :]) & square, damping, 0.0)
    L = tl.zeros_like(A)
    info = n * 0
    for j in range(n):
        col = tl.sum(tl.where(c[None, :] == j, A, 0.0), axis=1)      # A[:, j]
        d = tl.sum(tl.where(r == j, col, 0.0), axis=0)                # A[j, j]
        info = tl.where((info == 0) & (d <= 0), j + 1, info)
        root = tl.sqrt(tl.where(d > 0, d, 1.0))
        lcol = tl.where(r >= j, col / root, 0.0)                      # L[:, j]
        L += tl.where(c[None, :] == j, lcol[:, None], 0.0)
        A -= lcol[:, None] * lcol[None, :]                            # Schur complement
    if chunk == 0:
        tl.store(L_OUT + sys * stride_kb + r[:, None] * n + c[None, :], L, mask=square)
        tl.store(INFO + sys, info)

    rr = chunk * BLOCK_R + tl.arange(0, BLOCK_R)
    rhs_mask = (r[:, None] < n) & (rr[None, :] < k)
    rhs = tl.load(R + sys * stride_rb + r[:, None] * k + rr[None, :], mask=rhs_mask, other=0.0)
    w = tl.zeros_like(rhs)
    for i in range(n):                                                # L w = r
        row = tl.sum(tl.where(r[:, None] == i, L, 0.0), axis=0)       # L[i, :]
        lii = tl.sum(tl.where(c == i, row, 0.0), axis=0)
        ri = tl.sum(tl.where(r[:, None] == i, rhs, 0.0), axis=0)
        wi = (ri - tl.sum(row[:, None] * w, axis=0)) / lii
        w += tl.where(r[:, None] == i, wi[None, :], 0.0)
    z = tl.zeros_like(rhs)
    for step in range(n):                                             # L^T z = w
        i = n - 1 - step
        col = tl.sum(tl.where(c[None, :] == i, L, 0.0), axis=1)       # L[:, i]
        lii = tl.sum(tl.where(r == i, col, 0.0), axis=0)
        wi = tl.sum(tl.where(r[:, None] == i, w, 0.0), axis=0)
        zi = (wi - tl.sum(col[:, None] * z, axis=0)) / lii
        z += tl.where(r[:, None] == i, zi[None, :], 0.0)
    tl.store(Z_OUT + sys * stride_rb + r[:, None] * k + rr[None, :], z, mask=rhs_mask)


@torch.library.custom_op("revgn_triton::cholesky_factor_solve", mutates_args=())
def cholesky_factor_solve(K: torch.Tensor, R: torch.Tensor, damping: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, n, _ = K.shape
    k = R.shape[2]
    if n > MAX_SMALL or n == 0 or B == 0:
        from revgn.ops.solve import cholesky_factor_solve_ref
        return tuple(t.clone() for t in cholesky_factor_solve_ref(K, R, damping))
    K, R = K.contiguous(), R.contiguous()
    L = torch.empty_like(K)
    Z = torch.empty_like(R)
    info = torch.empty(B, dtype=torch.int32, device=K.device)
    block = max(16, triton.next_power_of_2(n))
    block_r = max(16, min(64, triton.next_power_of_2(k)))
    grid = (B, triton.cdiv(k, block_r))
    _small_cholesky_kernel[grid](K, R, L, Z, info, n, k, float(damping), K.stride(0),
                                 R.stride(0), BLOCK=block, BLOCK_R=block_r)
    return L, Z, info


@cholesky_factor_solve.register_fake
def _(K, R, damping):
    return torch.empty_like(K), torch.empty_like(R), K.new_empty(K.shape[0], dtype=torch.int32)

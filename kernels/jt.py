"""Jacobian-transpose products ``dW = Z^T A`` (h x M) and ``db = 1^T Z`` (DESIGN §3.1), with
the parameter update ``W += alpha dW`` fused into the matmul epilogue (no temporary ``dW``)."""
import torch
import triton
import triton.language as tl

from ._common import dot_precision, matmul_blocks


@triton.jit
def _zt_a_kernel(Z, A, OUT, h, m, n, stride_zn, stride_zh, stride_an, stride_am, stride_oh,
                 stride_om, alpha, ACCUMULATE: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """OUT[h-tile, M-tile] (+)= alpha * sum over the batch of Z^T A."""
    pid_h = tl.program_id(0)
    pid_m = tl.program_id(1)
    rh = pid_h * BLOCK_M + tl.arange(0, BLOCK_M)
    rm = pid_m * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32 if A.dtype.element_ty == tl.float32
                   else tl.float64)
    for k0 in range(0, n, BLOCK_K):
        kk = k0 + rk
        zt = tl.load(Z + kk[None, :] * stride_zn + rh[:, None] * stride_zh,
                     mask=(kk[None, :] < n) & (rh[:, None] < h), other=0.0)
        a = tl.load(A + kk[:, None] * stride_an + rm[None, :] * stride_am,
                    mask=(kk[:, None] < n) & (rm[None, :] < m), other=0.0)
        acc = tl.dot(zt, a, acc, input_precision=PRECISION)
    mask = (rh[:, None] < h) & (rm[None, :] < m)
    off = rh[:, None] * stride_oh + rm[None, :] * stride_om
    if ACCUMULATE:
        acc = tl.load(OUT + off, mask=mask, other=0.0) + alpha * acc
    tl.store(OUT + off, acc, mask=mask)


def _launch(Z, A, out, alpha, accumulate):
    n, h = Z.shape
    m = A.shape[1]
    BM, BN, BK = matmul_blocks(A.device)
    grid = (triton.cdiv(h, BM), triton.cdiv(m, BN))
    _zt_a_kernel[grid](Z, A, out, h, m, n, Z.stride(0), Z.stride(1), A.stride(0), A.stride(1),
                       out.stride(0), out.stride(1), alpha, ACCUMULATE=accumulate,
                       PRECISION=dot_precision(A.dtype), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)


@torch.library.custom_op("revgn_triton::jt_product", mutates_args=())
def jt_product(A: torch.Tensor, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dW = torch.empty(Z.shape[1], A.shape[1], dtype=A.dtype, device=A.device)
    _launch(Z, A, dW, 1.0, accumulate=False)
    return dW, Z.sum(dim=0)


@jt_product.register_fake
def _(A, Z):
    return A.new_empty(Z.shape[1], A.shape[1]), Z.new_empty(Z.shape[1])


@torch.library.custom_op("revgn_triton::jt_update_", mutates_args=("W", "b"))
def jt_update_(W: torch.Tensor, b: torch.Tensor | None, A: torch.Tensor, Z: torch.Tensor,
               alpha: float) -> None:
    _launch(Z, A, W, alpha, accumulate=True)
    if b is not None:
        b.add_(Z.sum(dim=0), alpha=alpha)


@jt_update_.register_fake
def _(W, b, A, Z, alpha):
    return None

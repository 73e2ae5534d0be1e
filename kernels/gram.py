"""The Gram matrix ``K = A A^T (+ 1 1^T)`` of a coupling's activations (DESIGN §3.1).

``K`` is symmetric: only tiles on or below the diagonal are computed, and each is written to
both of its places.
"""
import torch
import triton
import triton.language as tl

from ._common import dot_precision, matmul_blocks


@triton.jit
def _gram_kernel(A, K, n, m, stride_an, stride_am, stride_k, ADD_ONE: tl.constexpr,
                 PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    if pid_j > pid_i:
        return
    ri = pid_i * BLOCK + tl.arange(0, BLOCK)
    rj = pid_j * BLOCK + tl.arange(0, BLOCK)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32 if A.dtype.element_ty == tl.float32
                   else tl.float64)
    for k0 in range(0, m, BLOCK_K):
        kk = k0 + rk
        a_i = tl.load(A + ri[:, None] * stride_an + kk[None, :] * stride_am,
                      mask=(ri[:, None] < n) & (kk[None, :] < m), other=0.0)
        a_j = tl.load(A + rj[None, :] * stride_an + kk[:, None] * stride_am,
                      mask=(rj[None, :] < n) & (kk[:, None] < m), other=0.0)
        acc = tl.dot(a_i, a_j, acc, input_precision=PRECISION)
    if ADD_ONE:
        acc += 1.0
    mask = (ri[:, None] < n) & (rj[None, :] < n)
    tl.store(K + ri[:, None] * stride_k + rj[None, :], acc, mask=mask)
    tl.store(K + rj[None, :] * stride_k + ri[:, None], acc, mask=mask)


@torch.library.custom_op("revgn_triton::gram", mutates_args=())
def gram(A: torch.Tensor, bias: bool) -> torch.Tensor:
    n, m = A.shape
    K = torch.empty(n, n, dtype=A.dtype, device=A.device)
    block, _, block_k = matmul_blocks(A.device)
    grid = (triton.cdiv(n, block), triton.cdiv(n, block))
    _gram_kernel[grid](A, K, n, m, A.stride(0), A.stride(1), K.stride(0), ADD_ONE=bias,
                       PRECISION=dot_precision(A.dtype), BLOCK=block, BLOCK_K=block_k)
    return K


@gram.register_fake
def _(A, bias):
    return A.new_empty(A.shape[0], A.shape[0])

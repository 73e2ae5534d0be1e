"""Jacobian-transpose products of a coupling (DESIGN §3.1):

    dW = Z^T A   (h x M, the layout of W),      db = 1^T Z

and the parameter update ``W += alpha Z^T A``, ``b += alpha 1^T Z`` fused into the same matmul's
epilogue: no temporary ``dW`` is allocated. One kernel does both; the programs of the first
column tile also sum ``Z`` over the batch from the tiles they already load, so ``db`` costs no
extra pass over ``Z`` and no extra launch.
"""
import torch
import triton
import triton.language as tl

from ._common import (accumulate_product, check_operands, exact_scalar, matmul_launch, on_device,
                      split_scalar)


@triton.jit
def _write(OUT, offsets, mask, value, alpha_hi, alpha_lo, ACCUMULATE: tl.constexpr):
    """``OUT = value``, or ``OUT += alpha * value`` when ``ACCUMULATE``."""
    if ACCUMULATE:
        old = tl.load(OUT + offsets, mask=mask, other=0.0)
        value = old + exact_scalar(alpha_hi, alpha_lo, value) * value
    tl.store(OUT + offsets, value, mask=mask)


@triton.jit
def _zt_a_kernel(Z, A, DW, DB, h, m, n, stride_zn, stride_zh, stride_an, stride_am,
                 stride_wh, stride_wm, stride_b, alpha_hi, alpha_lo, ACCUMULATE: tl.constexpr,
                 WITH_DB: tl.constexpr, PRECISION: tl.constexpr, USE_DOT: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``DW[H, Mt] (+)= alpha Z[:, H]^T A[:, Mt]`` for one (BLOCK_M of h, BLOCK_N of M) tile,
    reducing over the batch ``n``; with ``WITH_DB`` the first column of programs also writes
    ``DB[H] (+)= alpha 1^T Z[:, H]``. Z: (n, h), A: (n, M), DW: (h, M), DB: (h,) by strides."""
    pid_h = tl.program_id(0)
    pid_m = tl.program_id(1)
    rh = pid_h * BLOCK_M + tl.arange(0, BLOCK_M)
    rm = pid_m * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=A.dtype.element_ty)
    z_sum = tl.zeros((BLOCK_M,), dtype=A.dtype.element_ty)
    for k0 in range(0, n, BLOCK_K):
        kk = k0 + rk
        z_t = tl.load(Z + rh[:, None] * stride_zh + kk[None, :] * stride_zn,
                      mask=(rh[:, None] < h) & (kk[None, :] < n), other=0.0)
        a = tl.load(A + kk[:, None] * stride_an + rm[None, :] * stride_am,
                    mask=(kk[:, None] < n) & (rm[None, :] < m), other=0.0)
        acc = accumulate_product(acc, z_t, a, PRECISION, USE_DOT)
        if WITH_DB:
            z_sum += tl.sum(z_t, axis=1)
    _write(DW, rh[:, None] * stride_wh + rm[None, :] * stride_wm,
           (rh[:, None] < h) & (rm[None, :] < m), acc, alpha_hi, alpha_lo, ACCUMULATE)
    if WITH_DB:
        _write(DB, rh * stride_b, (rh < h) & (pid_m == 0), z_sum, alpha_hi, alpha_lo, ACCUMULATE)


def _launch(Z, A, dW, db, alpha, accumulate):
    n, h = Z.shape
    m = A.shape[1]
    if h == 0 or m == 0:
        # Triton refuses an empty grid. dW is empty; db = 1^T Z still has h entries (a batch
        # of n = 0 needs no care: the kernel's reduction is then empty and writes zeros).
        if db is not None:
            if accumulate:
                db.add_(Z.sum(dim=0), alpha=alpha)
            else:
                db.copy_(Z.sum(dim=0))
        return
    launch = matmul_launch(h, m, A.dtype, A.device)
    grid = (triton.cdiv(h, launch["BLOCK_M"]), triton.cdiv(m, launch["BLOCK_N"]))
    alpha_hi, alpha_lo = split_scalar(alpha)
    with on_device(A):
        _zt_a_kernel[grid](Z, A, dW, db if db is not None else dW, h, m, n, Z.stride(0),
                           Z.stride(1), A.stride(0), A.stride(1), dW.stride(0), dW.stride(1),
                           db.stride(0) if db is not None else 0, alpha_hi, alpha_lo,
                           ACCUMULATE=accumulate, WITH_DB=db is not None, **launch)


def _check_shapes(A, Z, W=None, b=None):
    n, h = Z.shape
    wrong = A.dim() != 2 or A.shape[0] != n
    if W is not None:
        wrong |= tuple(W.shape) != (h, A.shape[1])
    if b is not None:
        wrong |= tuple(b.shape) != (h,)
    if wrong:
        raise ValueError(
            f"jt shapes: A {tuple(A.shape)} (n, M), Z {tuple(Z.shape)} (n, h), W "
            f"{None if W is None else tuple(W.shape)} (h, M), b "
            f"{None if b is None else tuple(b.shape)} (h,)")


@torch.library.custom_op("revgn_triton::jt_product", mutates_args=())
def jt_product(A: torch.Tensor, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dW, db) = (Z^T A, 1^T Z)`` of ``revgn.ops.jt_product``."""
    check_operands(A, Z)
    _check_shapes(A, Z)
    dW = A.new_empty(Z.shape[1], A.shape[1])
    db = A.new_empty(Z.shape[1])
    _launch(Z, A, dW, db, 1.0, accumulate=False)
    return dW, db


@torch.library.custom_op("revgn_triton::jt_update_", mutates_args=("W", "b"))
def jt_update_(W: torch.Tensor, b: torch.Tensor | None, A: torch.Tensor, Z: torch.Tensor,
               alpha: float) -> None:
    """In place, of ``revgn.ops.jt_update_``: ``W += alpha Z^T A``, ``b += alpha 1^T Z``."""
    check_operands(W, b, A, Z)
    _check_shapes(A, Z, W, b)
    _launch(Z, A, W, b, float(alpha), accumulate=True)

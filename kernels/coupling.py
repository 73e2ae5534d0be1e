"""Coupling inversion with tangent (DESIGN §3 steps 1-2) as two fused dual matmuls.

    [P | dP] = [u | du] C            one pass over C for primal and tangent
    A = s(P),  S = s'(P) * dP        epilogue of the first kernel, straight from the accumulators
    x = y - A W^T - b,  k = S W^T,  dx = dy - k     epilogue of the second kernel

Both kernels share one shape: two left operands against one right operand, whose tile is loaded
once for both accumulators.
"""
import torch
import triton
import triton.language as tl

from ._common import activation_and_slope, activation_code, dot_precision, matmul_blocks

EPILOGUE_ACTIVATION = 0   # out1 = s(acc1), out2 = s'(acc1) * acc2
EPILOGUE_INVERSE = 1      # out1 = y - acc1 - b, out2 = acc2, out3 = dy - acc2
EPILOGUE_TANGENT = 2      # out2 = s'(pre) * acc2 (pre read from out1's pointer)
EPILOGUE_PLAIN = 3        # out2 = acc2


@triton.jit
def _dual_matmul_kernel(
        X1, X2, B, OUT1, OUT2, OUT3, Y, DY, BIAS,
        M, N, K,
        stride_xm, stride_xk, stride_bk, stride_bn, stride_om, stride_on,
        EPILOGUE: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
        ONLY_SECOND: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc1 = X1 @ B`` and ``acc2 = X2 @ B`` for one (BLOCK_M, BLOCK_N) tile, then the epilogue.

    X1, X2: (M, K) with the same strides; B: (K, N) by strides (a transposed view is free);
    outputs (M, N) contiguous-by-rows with strides (stride_om, stride_on).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32 if X2.dtype.element_ty == tl.float32
                    else tl.float64)
    acc2 = tl.zeros_like(acc1)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        b = tl.load(B + kk[:, None] * stride_bk + rn[None, :] * stride_bn,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        x_mask = (rm[:, None] < M) & (kk[None, :] < K)
        x_off = rm[:, None] * stride_xm + kk[None, :] * stride_xk
        if not ONLY_SECOND:
            x1 = tl.load(X1 + x_off, mask=x_mask, other=0.0)
            acc1 = tl.dot(x1, b, acc1, input_precision=PRECISION)
        x2 = tl.load(X2 + x_off, mask=x_mask, other=0.0)
        acc2 = tl.dot(x2, b, acc2, input_precision=PRECISION)

    o_mask = (rm[:, None] < M) & (rn[None, :] < N)
    o_off = rm[:, None] * stride_om + rn[None, :] * stride_on
    if EPILOGUE == 0:
        value, slope = activation_and_slope(acc1, ACT)
        tl.store(OUT1 + o_off, value, mask=o_mask)
        tl.store(OUT2 + o_off, slope * acc2, mask=o_mask)
    elif EPILOGUE == 1:
        y = tl.load(Y + o_off, mask=o_mask, other=0.0)
        x = y - acc1
        if HAS_BIAS:
            x = x - tl.load(BIAS + rn, mask=rn < N, other=0.0)[None, :]
        tl.store(OUT1 + o_off, x, mask=o_mask)
        tl.store(OUT2 + o_off, acc2, mask=o_mask)
        dy = tl.load(DY + o_off, mask=o_mask, other=0.0)
        tl.store(OUT3 + o_off, dy - acc2, mask=o_mask)
    elif EPILOGUE == 2:
        pre = tl.load(OUT1 + o_off, mask=o_mask, other=0.0)
        _, slope = activation_and_slope(pre, ACT)
        tl.store(OUT2 + o_off, slope * acc2, mask=o_mask)
    else:
        tl.store(OUT2 + o_off, acc2, mask=o_mask)


def dual_matmul(x1, x2, b, epilogue, act=0, out1=None, y=None, dy=None, bias=None,
                only_second=False):
    """Launch ``_dual_matmul_kernel``; returns ``(out1, out2, out3)`` (unused ones None)."""
    M, K = x2.shape
    N = b.shape[1]
    assert x1.stride() == x2.stride()
    out2 = torch.empty(M, N, dtype=x2.dtype, device=x2.device)
    out3 = torch.empty_like(out2) if epilogue == EPILOGUE_INVERSE else None
    if out1 is None and epilogue in (EPILOGUE_ACTIVATION, EPILOGUE_INVERSE):
        out1 = torch.empty_like(out2)
    BM, BN, BK = matmul_blocks(x2.device)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    dummy = out2
    _dual_matmul_kernel[grid](
        x1, x2, b, out1 if out1 is not None else dummy, out2,
        out3 if out3 is not None else dummy,
        y if y is not None else dummy, dy if dy is not None else dummy,
        bias if bias is not None else dummy,
        M, N, K, x2.stride(0), x2.stride(1), b.stride(0), b.stride(1),
        out2.stride(0), out2.stride(1),
        EPILOGUE=epilogue, ACT=act, HAS_BIAS=bias is not None, ONLY_SECOND=only_second,
        PRECISION=dot_precision(x2.dtype), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)
    return out1, out2, out3


def _as_rhs(C, u):
    # Without a bottleneck P = u: an identity right operand keeps one code path.
    if C is not None:
        return C
    return torch.eye(u.shape[1], dtype=u.dtype, device=u.device)


@torch.library.custom_op("revgn_triton::coupling_inverse_with_tangent", mutates_args=())
def coupling_inverse_with_tangent(u: torch.Tensor, du: torch.Tensor, y: torch.Tensor,
                                  dy: torch.Tensor, C: torch.Tensor | None, W: torch.Tensor,
                                  b: torch.Tensor | None, activation: str
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                             torch.Tensor]:
    """Triton version of ``revgn.ops.coupling_inverse_with_tangent``: ``(x, dx, A, k)``."""
    act = activation_code(activation)
    u, du = u.contiguous(), du.contiguous()
    A, S, _ = dual_matmul(u, du, _as_rhs(C, u), EPILOGUE_ACTIVATION, act)
    x, k, dx = dual_matmul(A, S, W.t(), EPILOGUE_INVERSE, y=y.contiguous(),
                           dy=dy.contiguous(), bias=b)
    return x, dx, A, k


@coupling_inverse_with_tangent.register_fake
def _(u, du, y, dy, C, W, b, activation):
    M = C.shape[1] if C is not None else u.shape[1]
    return torch.empty_like(y), torch.empty_like(dy), u.new_empty(u.shape[0], M), \
        torch.empty_like(dy)


@torch.library.custom_op("revgn_triton::coupling_tangent", mutates_args=())
def coupling_tangent(pre: torch.Tensor, du: torch.Tensor, C: torch.Tensor | None,
                     W: torch.Tensor, activation: str) -> torch.Tensor:
    """``k = (s'(P) * (du C)) W^T`` given ``P``."""
    act = activation_code(activation)
    du = du.contiguous()
    _, S, _ = dual_matmul(du, du, _as_rhs(C, du), EPILOGUE_TANGENT, act,
                          out1=pre.contiguous(), only_second=True)
    return dual_matmul(S, S, W.t(), EPILOGUE_PLAIN, only_second=True)[1]


@coupling_tangent.register_fake
def _(pre, du, C, W, activation):
    return du.new_empty(du.shape[0], W.shape[0])

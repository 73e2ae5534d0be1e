"""Coupling inversion with tangent (DESIGN §3, steps 1-2) as two fused stacked matmuls.

    [P; dP] = [u; du] C               one pass over C for primal and tangent
    A = s(P),  S = s'(P) * dP         first epilogue, straight from the accumulators
    [A; S] W^T                        one pass over W for both
    x = y - A W^T - b,  k = S W^T,  dx = dy - k      second epilogue

Both launches run ``_stacked_matmul_kernel``: each program owns the same (rows, cols) tile of the
top and the bottom half of the stacked product, so the right operand's tile is loaded once for
both accumulators and the epilogue sees ``P`` and ``dP`` (or ``A W^T`` and ``S W^T``) of the same
element together. Without an inverted bottleneck (``C`` is None) ``P = u``: the first launch
does no product at all.
"""
import torch
import triton
import triton.language as tl

from ._common import (accumulate_product, activation_and_slope, activation_code, check_operands,
                      matmul_launch, on_device)

# What the epilogue of _stacked_matmul_kernel writes.
ACTIVATE = 0  # top: s(acc_top); bottom: s'(acc_top) * acc_bottom
INVERT = 1    # top: y - acc_top - b; bottom: acc_bottom; extra: dy - acc_bottom
PUSH = 2      # bottom: s'(P) * acc_bottom, with P read from PRE (no top operand)
STORE = 3     # bottom: acc_bottom (no top operand)


@triton.jit
def _stacked_matmul_kernel(
        X_TOP, X_BOTTOM, RHS, OUT_TOP, OUT_BOTTOM, OUT_EXTRA, Y, DY, PRE, BIAS,
        rows, cols, inner,
        stride_xr, stride_xi, stride_ri, stride_rc,
        EPILOGUE: tl.constexpr, ACT: tl.constexpr, HAS_TOP: tl.constexpr,
        HAS_RHS: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
        USE_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``[acc_top; acc_bottom] = [X_top; X_bottom] @ RHS`` on one (BLOCK_M, BLOCK_N) tile of
    each half, then the ``EPILOGUE``.

    X_top, X_bottom: (rows, inner), sharing strides; RHS: (inner, cols) by strides (a transposed
    view costs nothing); outputs and Y, DY, PRE: (rows, cols) contiguous. Without RHS the product
    is the operand itself (inner == cols).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    out_mask = (rm[:, None] < rows) & (rn[None, :] < cols)
    out_off = rm[:, None] * cols + rn[None, :]

    if HAS_RHS:
        rk = tl.arange(0, BLOCK_K)
        acc_top = tl.zeros((BLOCK_M, BLOCK_N), dtype=X_BOTTOM.dtype.element_ty)
        acc_bottom = tl.zeros((BLOCK_M, BLOCK_N), dtype=X_BOTTOM.dtype.element_ty)
        for k0 in range(0, inner, BLOCK_K):
            kk = k0 + rk
            rhs = tl.load(RHS + kk[:, None] * stride_ri + rn[None, :] * stride_rc,
                          mask=(kk[:, None] < inner) & (rn[None, :] < cols), other=0.0)
            x_off = rm[:, None] * stride_xr + kk[None, :] * stride_xi
            x_mask = (rm[:, None] < rows) & (kk[None, :] < inner)
            if HAS_TOP:
                x_top = tl.load(X_TOP + x_off, mask=x_mask, other=0.0)
                acc_top = accumulate_product(acc_top, x_top, rhs, PRECISION, USE_DOT)
            x_bottom = tl.load(X_BOTTOM + x_off, mask=x_mask, other=0.0)
            acc_bottom = accumulate_product(acc_bottom, x_bottom, rhs, PRECISION, USE_DOT)
    else:
        x_off = rm[:, None] * stride_xr + rn[None, :] * stride_xi
        acc_bottom = tl.load(X_BOTTOM + x_off, mask=out_mask, other=0.0)
        if HAS_TOP:
            acc_top = tl.load(X_TOP + x_off, mask=out_mask, other=0.0)
        else:
            acc_top = acc_bottom

    if EPILOGUE == 0:    # ACTIVATE
        value, slope = activation_and_slope(acc_top, ACT)
        tl.store(OUT_TOP + out_off, value, mask=out_mask)
        tl.store(OUT_BOTTOM + out_off, slope * acc_bottom, mask=out_mask)
    elif EPILOGUE == 1:  # INVERT
        x = tl.load(Y + out_off, mask=out_mask, other=0.0) - acc_top
        if HAS_BIAS:
            x -= tl.load(BIAS + rn, mask=rn < cols, other=0.0)[None, :]
        tl.store(OUT_TOP + out_off, x, mask=out_mask)
        tl.store(OUT_BOTTOM + out_off, acc_bottom, mask=out_mask)
        dy = tl.load(DY + out_off, mask=out_mask, other=0.0)
        tl.store(OUT_EXTRA + out_off, dy - acc_bottom, mask=out_mask)
    elif EPILOGUE == 2:  # PUSH
        _, slope = activation_and_slope(tl.load(PRE + out_off, mask=out_mask, other=0.0), ACT)
        tl.store(OUT_BOTTOM + out_off, slope * acc_bottom, mask=out_mask)
    else:                # STORE
        tl.store(OUT_BOTTOM + out_off, acc_bottom, mask=out_mask)


def _stacked_matmul(bottom, rhs, epilogue, *, top=None, act=0, y=None, dy=None, pre=None,
                    bias=None):
    """Launch ``_stacked_matmul_kernel``; returns ``(out_top, out_bottom, out_extra)``, None
    where the epilogue writes nothing. ``rhs`` None: the product is the operand itself."""
    rows, inner = bottom.shape
    cols = rhs.shape[1] if rhs is not None else inner
    out_bottom = bottom.new_empty(rows, cols)
    out_top = bottom.new_empty(rows, cols) if epilogue in (ACTIVATE, INVERT) else None
    out_extra = bottom.new_empty(rows, cols) if epilogue == INVERT else None
    if rows == 0 or cols == 0:
        return out_top, out_bottom, out_extra  # nothing to write (Triton refuses empty grids)
    # Tiles for two accumulators even with one: the epilogues read extra tiles (PRE, Y, DY).
    launch = matmul_launch(rows, cols, bottom.dtype, bottom.device, accumulators=2)
    grid = (triton.cdiv(rows, launch["BLOCK_M"]), triton.cdiv(cols, launch["BLOCK_N"]))

    def pointer(t):
        # Operands an epilogue does not read still need a pointer of the right type.
        return t if t is not None else out_bottom

    with on_device(bottom):
        _stacked_matmul_kernel[grid](
            pointer(top), bottom, pointer(rhs), pointer(out_top), out_bottom,
            pointer(out_extra), pointer(y), pointer(dy), pointer(pre), pointer(bias),
            rows, cols, inner, bottom.stride(0), bottom.stride(1),
            rhs.stride(0) if rhs is not None else 0, rhs.stride(1) if rhs is not None else 0,
            EPILOGUE=epilogue, ACT=act, HAS_TOP=top is not None, HAS_RHS=rhs is not None,
            HAS_BIAS=bias is not None, **launch)
    return out_top, out_bottom, out_extra


def _check_coupling_shapes(n, h, C, W, b, h_out=None, **rows_by_name):
    """``h_out``: the rows of ``W`` when they may differ from ``h`` (a push of a thin ``du``
    through ``C`` of as many rows, as the GN sweep does with a factored tangent)."""
    M = C.shape[1] if C is not None else h
    expected = {name: (n, h) for name in rows_by_name}
    actual = {name: tuple(t.shape) for name, t in rows_by_name.items()}
    if C is not None:
        expected["C"], actual["C"] = (h, M), tuple(C.shape)
    expected["W"], actual["W"] = (h if h_out is None else h_out, M), tuple(W.shape)
    if b is not None:
        expected["b"], actual["b"] = (h,), tuple(b.shape)
    wrong = {k: v for k, v in actual.items() if v != expected[k]}
    if wrong:
        raise ValueError(f"coupling shapes: expected {expected}, got {actual}")


@torch.library.custom_op("revgn_triton::coupling_inverse_with_tangent", mutates_args=())
def coupling_inverse_with_tangent(u: torch.Tensor, du: torch.Tensor, y: torch.Tensor,
                                  dy: torch.Tensor, C: torch.Tensor | None, W: torch.Tensor,
                                  b: torch.Tensor | None, activation: str
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                             torch.Tensor]:
    """``(x, dx, A, k)`` of ``revgn.ops.coupling_inverse_with_tangent``:

        A = s(u C),  x = y - A W^T - b,  k = (s'(u C) * (du C)) W^T,  dx = dy - k
    """
    act = activation_code(activation)
    check_operands(u, du, y, dy, C, W, b)
    _check_coupling_shapes(u.shape[0], u.shape[1], C, W, b, u=u, du=du, y=y, dy=dy)
    A, S, _ = _stacked_matmul(du.contiguous(), C, ACTIVATE, top=u.contiguous(), act=act)
    x, k, dx = _stacked_matmul(S, W.t(), INVERT, top=A, y=y.contiguous(), dy=dy.contiguous(),
                               bias=b.contiguous() if b is not None else None)
    return x, dx, A, k


@torch.library.custom_op("revgn_triton::coupling_tangent", mutates_args=())
def coupling_tangent(pre: torch.Tensor, du: torch.Tensor, C: torch.Tensor | None,
                     W: torch.Tensor, activation: str) -> torch.Tensor:
    """``k = (s'(P) * (du C)) W^T`` given ``P = u C`` (``revgn.ops.coupling_tangent``)."""
    act = activation_code(activation)
    check_operands(pre, du, C, W)
    _check_coupling_shapes(du.shape[0], du.shape[1], C, W, None,
                           h_out=W.shape[0] if C is not None else None, du=du)
    if tuple(pre.shape) != (du.shape[0], W.shape[1]):
        raise ValueError(f"pre-activation of shape {tuple(pre.shape)}, expected "
                         f"{(du.shape[0], W.shape[1])}")
    _, S, _ = _stacked_matmul(du.contiguous(), C, PUSH, act=act, pre=pre.contiguous())
    return _stacked_matmul(S, W.t(), STORE)[1]

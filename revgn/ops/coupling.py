"""Coupling inversion with tangent (DESIGN §3, steps 1-2).

A coupling computes ``y = x + s(u C) W^T + b`` from its argument half ``u``. Given ``y`` and ``u``
it is inverted exactly, and a tangent ``(du, dy)`` of the output is pulled back to the tangent of
``x``:

    P  = u C,          A = s(P)                          (kept for the solve)
    x  = y - A W^T - b
    k  = (s'(P) * (du C)) W^T                            (the push of du through the coupling)
    dx = dy - k

The fast kernels share one pass over ``C`` between primal and tangent (stacked operands); the
reference keeps the two products apart so that ``A`` owns its memory. Without an inverted
bottleneck ``C`` is None and ``P = u``.
"""
from __future__ import annotations

import torch

from revgn.activations import get_activation


def coupling_inverse_with_tangent_ref(u, du, y, dy, C, W, b, activation: str):
    """Reference: returns ``(x, dx, A, k)``; shapes (n,h), (n,h), (n,M), (n,h)."""
    act = get_activation(activation)
    # Two products rather than one on the stacked [u; du]: A then owns its buffer, and the
    # tangent's (n, M) workspace is freed on return instead of living as long as A.
    pre = u @ C if C is not None else u.clone()
    dpre = du @ C if C is not None else du.clone()
    S = act.mul_grad_(pre, dpre)  # S = s'(P) * (du C), in place (it reads P before A does)
    A = act.fn_(pre)              # A = s(P), in place
    x = torch.addmm(b, A, W.t(), beta=-1, alpha=-1).add_(y) if b is not None else y - A @ W.t()
    k = S @ W.t()
    return x, dy - k, A, k


def coupling_tangent_ref(pre, du, C, W, activation: str):
    """The push of ``du`` alone, given the pre-activation ``P = u C``:
    ``k = (s'(P) * (du C)) W^T``. With a bottleneck ``du`` may be thin, ``du`` (n x k) and
    ``C`` (k x M): the sweep pushes a factored tangent ``e R`` as ``e (R C)``."""
    act = get_activation(activation)
    dpre = du @ C if C is not None else du.clone()
    return act.mul_grad_(pre, dpre) @ W.t()


def coupling_inverse_with_tangent_fake(u, du, y, dy, C, W, b, activation: str):
    """Shape only (``torch.compile``, ``opcheck``): ``x, dx, k`` (n, h) and ``A`` (n, M)."""
    n, h = u.shape
    M = C.shape[1] if C is not None else h
    return u.new_empty(n, h), u.new_empty(n, h), u.new_empty(n, M), u.new_empty(n, h)


def coupling_tangent_fake(pre, du, C, W, activation: str):
    """Shape only: ``k`` is (n, h_out), h_out the rows of ``W``."""
    return du.new_empty(du.shape[0], W.shape[0])

"""The solve of a linear coupling through its input (DESIGN §3.2 (a)).

A coupling with the identity activation and a bottleneck has ``A = u C`` with ``C`` (h x M)
fixed, so with ``B = [u, 1]`` (n x (h+1)) and ``C~ = diag(C, 1)``:

    A~ = B C~,      K = A~ A~^T = B G B^T,      G = C~ C~^T = diag(C C^T, 1)   ((h+1) x (h+1))

The pseudoinverse lives in the span of ``B``. With the thin QR ``B = Q R`` (``Q`` orthonormal
columns, even when ``B`` is rank deficient, as MNIST's constant border pixels make it):

    K = Q S Q^T,    S = R G R^T,    K^+ = Q S^+ Q^T
    Z = Q S^+ Q^T T,    realized change A~ D = K Z = Q S (S^+ Q^T T)
    dW = Z^T A = (Z^T u) C,    db = 1^T Z

``S`` has ``K``'s nonzero eigenvalues, so truncating ``S`` at ``max(rtol^2 lam_max, atol^2)``
keeps exactly what truncating ``K`` keeps. Cost: a QR of ``n x (h+1)`` and an eigen-solve of
``(h+1) x (h+1)`` in float64, against an ``n^2 M`` Gram and an ``n x n`` eigen-solve; ``C C^T``
is kept across steps (``C`` is fixed). A batch no larger than ``h+1`` has a square ``Q``: the
QR buys nothing there, and ``S = K = B G B^T`` (``n h^2 + n^2 h``, still no ``n^2 M``) is solved
as it is. The small factorizations run in float64 whatever the
working dtype: ``S`` is then accurate where the float32 Gram ``K`` is not.
"""
from __future__ import annotations

import torch

from revgn.ops import gram_solve

#: the solvers whose answer the structured route reproduces (the others need ``A`` itself)
LINEAR_SOLVERS = ("cholesky", "eigh", "projector")


def bottleneck_gram(C: torch.Tensor, bias: bool, cache: dict, reduce=None) -> torch.Tensor:
    """``G = diag(C C^T, 1)`` (or ``C C^T`` without bias) in float64, computed once per ``C``.

    ``reduce`` sums a symmetric matrix over the shards of a ``C`` split by columns
    (``SolverConfig.gram_reduce``): ``C C^T = sum_r C_r C_r^T``, one ``h (h + 1) / 2``
    all-reduce per ``C`` for as long as the cache holds it.

    ``cache`` is the optimizer's memo, an entry per ``C`` tensor; it is reused only while ``C`` is
    the same storage at the same version, dtype and device (a ``load_state_dict`` or ``.to()``
    rebuilds it). ``C`` is a fixed buffer: a write that bypasses its version counter
    (``C.data.copy_``) is not seen.
    """
    key = ("bottleneck_gram", id(C), bias)
    stamp = (C.data_ptr(), C._version, C.dtype, C.device)
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    C64 = C.to(torch.float64)
    h = C.shape[0]
    G = C64.new_zeros(h + 1, h + 1) if bias else None
    CCt = C64 @ C64.t()
    if reduce is not None:
        CCt = reduce(CCt)
    if bias:
        G[:h, :h] = CCt
        G[h, h] = 1.0
    else:
        G = CCt
    cache[key] = (stamp, G)
    return G


class LinearSolve:
    """The factored solve of one linear coupling: ``Q``, the small solution ``Zs = S^+ Q^T T``
    and what ``solve_coupling`` reports (rank, status). ``Q`` is None (the identity) when the
    batch is no taller than ``B`` is wide."""

    def __init__(self, u: torch.Tensor, T: torch.Tensor, bias: bool, G: torch.Tensor):
        B = u.to(torch.float64)
        if bias:
            B = torch.cat([B, B.new_ones(B.shape[0], 1)], dim=1)
        T64 = T.to(torch.float64)
        if B.shape[0] <= B.shape[1]:
            self.Q, self.S, self.QtT = None, B @ G @ B.t(), T64
        else:
            self.Q, R = torch.linalg.qr(B)
            self.S = R @ G @ R.t()
            self.QtT = self.Q.t() @ T64

    def solve(self, method: str, rtol: float, atol: float, ops):
        """``(Z (n x h, float64), realized (n x h, float64), rank, status)``."""
        sol = gram_solve(self.S, self.QtT, method, rtol, atol, ops=ops)
        realized = self.S @ sol.Z
        if self.Q is None:
            return sol.Z, realized, int(sol.rank), int(sol.status)
        return self.Q @ sol.Z, self.Q @ realized, int(sol.rank), int(sol.status)


def linear_update(u: torch.Tensor, C: torch.Tensor, Z: torch.Tensor, bias: bool):
    """``dW = (Z^T u) C`` (h x M) and ``db = 1^T Z``: ``Z^T A`` without forming ``A = u C``."""
    dW = (Z.t() @ u) @ C
    db = Z.sum(dim=0) if bias else None
    return dW, db

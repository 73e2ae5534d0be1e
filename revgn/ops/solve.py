"""Batched small pseudoinverse solves ``Z = K^+ R`` for symmetric PSD Gram matrices (DESIGN §3.1).

``K`` is (B, n, n) (or (n, n)), ``R`` is (B, n, k). Thresholds follow the singular values of the
matrix ``A~`` whose Gram ``K = A~ A~^T`` is: an eigenvalue ``lam`` of ``K`` is kept when

    lam > max(rtol^2 * lam_max, atol^2),

which is exactly SVD truncation of ``A~`` at ``s > max(rtol * s_max, atol)``.

Methods:

- ``cholesky``: ``K = L L^T``; when the factorization fails or the smallest eigenvalue
  (estimated by inverse iteration on the factor) falls under the threshold, that system falls
  back to ``eigh`` truncation: the pseudoinverse answer, never a jittered one.
- ``eigh``: ``K = V diag(lam) V^T``, ``Z = V diag(1/lam) V^T R`` over the kept eigenvalues.
- ``damped``: ``Z = (K + damping I)^-1 R`` (``damping`` absolute), Cholesky; a system that is still
  not positive definite falls back to ``eigh`` on ``K + damping I``.
- ``projector``: the truncated solve of ``eigh`` from GEMMs and one Cholesky (``projector_solve``):
  the spectral projector ``P`` onto the eigenvalues above the threshold, then
  ``Z = P (P K P + tau (I - P))^-1 P R``. It keeps what ``eigh`` keeps except within
  ``PROJECTOR_BAND`` of the threshold.

The kernel behind ``cholesky`` and ``damped`` is ``cholesky_factor_solve`` (``revgn.ops.cholesky``;
one system per program on GPU); the fallback logic here is shared by every backend.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch


SOLVE_METHODS = ("cholesky", "eigh", "damped", "projector")

#: half-width of the band around the threshold ``tau`` (relative to ``||K - tau I||_F``) inside
#: which ``projector`` may keep an eigenvalue in part (see ``spectral_projector``)
PROJECTOR_BAND = 1e-8

#: status codes, per system
SOLVED, FELL_BACK, NONFINITE = 0, 1, 2


class GramSolution(NamedTuple):
    Z: torch.Tensor       # (B, n, k)
    rank: torch.Tensor    # (B,) int64: eigenvalues used
    status: torch.Tensor  # (B,) int32: SOLVED, FELL_BACK (cholesky -> eigh), NONFINITE


def _start_vector(K):
    n = K.shape[-1]
    # Deterministic, and not orthogonal to any structured eigenvector in practice.
    v = torch.linspace(1.0, 2.0, n, dtype=K.dtype, device=K.device)
    v = v * torch.where(torch.arange(n, device=K.device) % 2 == 0, 1.0, -0.7).to(K.dtype)
    return v.expand(*K.shape[:-1]).unsqueeze(-1).contiguous()


def largest_eigenvalue(K, iters: int = 12):
    """Power-iteration estimate of ``lam_max`` (a lower bound converging from below)."""
    # the ones vector (a Gram with a bias column leans towards it) plus the alternating start:
    # not orthogonal to the top eigenvector of a matrix with entries of either sign either
    v = torch.ones(*K.shape[:-1], 1, dtype=K.dtype, device=K.device) + _start_vector(K)
    for _ in range(iters):
        v = K @ v
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(K.dtype).tiny)
    return (v.transpose(-1, -2) @ K @ v).squeeze(-1).squeeze(-1)


def smallest_eigenvalue(K, L, iters: int = 6):
    """Inverse-iteration estimate of ``lam_min`` from the Cholesky factor (an upper bound)."""
    v = _start_vector(K)
    for _ in range(iters):
        v = torch.linalg.solve_triangular(
            L.mT, torch.linalg.solve_triangular(L, v, upper=False), upper=True)
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(K.dtype).tiny)
    return (v.transpose(-1, -2) @ K @ v).squeeze(-1).squeeze(-1)


def eigh_solve(K, R, rtol: float, atol: float):
    """Truncated spectral solve; returns ``(Z, rank)``."""
    lam, V = torch.linalg.eigh(K)
    lam_max = lam[..., -1:].clamp_min(0)
    keep = lam > torch.maximum(rtol * rtol * lam_max, torch.full_like(lam_max, atol * atol))
    keep &= lam > 0
    rank = keep.sum(dim=-1)
    # eigenvalues ascend, so the kept ones are the last `rank`: apply only the widest of those
    # columns (the truncated solve at the paper's rtol keeps about half)
    width = int(rank.max()) if rank.numel() else 0
    lam, V, keep = lam[..., lam.shape[-1] - width:], V[..., V.shape[-1] - width:], \
        keep[..., keep.shape[-1] - width:]
    inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    Z = V @ (inv.unsqueeze(-1) * (V.transpose(-1, -2) @ R))
    return Z, rank


def spectral_projector(K, tau, band: float = PROJECTOR_BAND):
    """``P = (I + sign(K - tau I)) / 2``, the projector onto the eigenvectors of the symmetric
    ``K`` (B, n, n) whose eigenvalues exceed ``tau`` (B, 1, 1), by GEMMs alone.

    Newton-Schulz on ``X0 = (K - tau I) / s`` with ``s = ||K - tau I||_F >= ||K - tau I||_2``:
    ``X <- X (3 I - X^2) / 2`` maps each eigenvalue ``x`` of ``X`` to ``x (3 - x^2) / 2``,
    which grows a small ``|x|`` by 1.5 per step and then converges to ``sign(x)`` quadratically.
    The step count is fixed (no host synchronization): enough to bring ``|x| = band`` to 1/2,
    then seven quadratic steps (1/2 -> ``eps``). An eigenvalue with ``|lam - tau| < band s``
    may end anywhere in ``[-1, 1]``: ``projector_solve`` then keeps that direction in part.
    """
    n = K.shape[-1]
    eye = torch.eye(n, dtype=K.dtype, device=K.device)
    X = K - tau * eye
    X = X / torch.linalg.matrix_norm(X).clamp_min(torch.finfo(K.dtype).tiny)[..., None, None]
    steps = math.ceil(math.log(0.5 / band) / math.log(1.5)) + 7
    for _ in range(steps):
        X = 0.5 * X @ (3.0 * eye - X @ X)
        X = 0.5 * (X + X.mT)  # rounding breaks symmetry a little each step; keep it exact
    return 0.5 * (eye + X)


def projector_solve(K, R, rtol: float, atol: float, band: float = PROJECTOR_BAND):
    """Truncated spectral solve without an eigen-decomposition; returns ``(Z, rank)``.

    ``tau = max(rtol^2 lam_max, atol^2)`` with ``lam_max`` from power iteration (its Rayleigh
    quotient: relative error ``(lam_2 / lam_1)^(2k)``, which widens the band accordingly).
    With ``P = spectral_projector(K, tau)``, ``M = P K P + tau (I - P)`` is SPD (eigenvalues
    ``lam > tau`` on the kept directions, ``tau`` on the rest) and
    ``Z = P M^-1 P R = sum over kept lam of v v^T R / lam``: ``eigh_solve``'s answer.
    ``rank`` is ``trace(P)`` rounded. When ``tau`` is 0 (no threshold) the smallest positive
    eigenvalues decide nothing: ``eigh`` should be used instead.
    """
    lam_max = largest_eigenvalue(K, iters=40).clamp_min(0)
    tau = torch.clamp_min(rtol * rtol * lam_max, atol * atol)
    # K = 0 (no threshold to split at): the pseudoinverse is 0, as eigh gives
    empty = tau <= 0
    P = spectral_projector(K, tau[..., None, None], band)
    n = K.shape[-1]
    eye = torch.eye(n, dtype=K.dtype, device=K.device)
    M = P @ K @ P + tau[..., None, None] * (eye - P)
    L, info = torch.linalg.cholesky_ex(0.5 * (M + M.mT))
    Z = P @ torch.cholesky_solve(P @ R, L)
    rank = torch.diagonal(P, dim1=-2, dim2=-1).sum(-1).round().to(torch.int64)
    Z = torch.where((info == 0)[..., None, None], Z, torch.full_like(Z, float("nan")))
    Z = torch.where(empty[..., None, None], torch.zeros_like(Z), Z)
    rank = torch.where(empty, torch.zeros_like(rank), rank)
    return Z, rank


def gram_solve(K, R, method: str = "cholesky", rtol: float = 0.0, atol: float = 0.0,
               damping: float = 0.0, *, ops) -> GramSolution:
    """Solve ``K Z = R`` with pseudoinverse semantics; see the module docstring. ``ops``
    (``revgn.ops.bind``) supplies ``cholesky_factor_solve``."""
    if method not in SOLVE_METHODS:
        raise ValueError(f"unknown gram_solve method {method!r}; choose one of {SOLVE_METHODS}")
    unbatched = K.dim() == 2
    if unbatched:
        K, R = K.unsqueeze(0), R.unsqueeze(0)
    B, n = K.shape[0], K.shape[-1]
    status = torch.zeros(B, dtype=torch.int32, device=K.device)
    rank = torch.full((B,), n, dtype=torch.int64, device=K.device)

    if method == "eigh":
        Z, rank = eigh_solve(K, R, rtol, atol)
    elif method == "projector":
        Z, rank = projector_solve(K, R, rtol, atol)
    else:
        shift = damping if method == "damped" else 0.0
        L, Z, info = ops.cholesky_factor_solve(K, R, float(shift))
        failed = info != 0
        if method == "cholesky" and (rtol > 0 or atol > 0):
            # Estimates are harmless on the failed systems (their L is garbage, their verdict is
            # already "failed"), so run them on the whole batch rather than gather a subset.
            thresh = torch.clamp_min(rtol * rtol * largest_eigenvalue(K), atol * atol)
            failed = failed | ~(smallest_eigenvalue(K, L) > thresh)
        if failed.any():
            Kf = K[failed]
            if shift:
                Kf = Kf + shift * torch.eye(n, dtype=K.dtype, device=K.device)
            Zf, rank_f = eigh_solve(Kf, R[failed], rtol, atol)
            Z = Z.clone()
            Z[failed] = Zf
            rank[failed] = rank_f
            status[failed] = FELL_BACK
    bad = ~torch.isfinite(Z).flatten(1).all(dim=1)
    status = torch.where(bad, torch.full_like(status, NONFINITE), status)
    if unbatched:
        Z = Z.squeeze(0)
    return GramSolution(Z, rank, status)

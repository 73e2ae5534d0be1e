"""Batched small Cholesky factor-and-solve (DESIGN §3.1), the kernel behind ``gram_solve``'s
``cholesky`` and ``damped`` methods:

    K + damping I = L L^T,    L w = R,    L^T Z = w

``info`` follows LAPACK: 0, or the order of the first leading minor that is not positive
definite; ``L`` and ``Z`` of such a system are unspecified. The fallback to ``eigh`` is
``gram_solve``'s (``revgn.ops.solve``), shared by every backend.
"""
from __future__ import annotations

import torch


def cholesky_factor_solve_ref(K, R, damping: float):
    """Factor ``K + damping I = L L^T`` and solve; returns ``(L, Z, info)``.

    ``info`` (B,) int32 is 0 on success, else the order of the first non-positive leading minor
    (LAPACK's convention); ``Z`` is unspecified for failed systems.
    """
    if damping:
        K = K + damping * torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    L, info = torch.linalg.cholesky_ex(K)
    Z = torch.cholesky_solve(R, L)
    return L, Z, info.to(torch.int32)


def cholesky_factor_solve_fake(K: torch.Tensor, R: torch.Tensor, damping: float
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shape only: ``L`` like ``K`` (..., n, n), ``Z`` like ``R``, ``info`` (...) int32."""
    return K.new_empty(K.shape), R.new_empty(R.shape), K.new_empty(K.shape[:-2],
                                                                   dtype=torch.int32)

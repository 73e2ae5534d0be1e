"""Jacobian-transpose products of a coupling (DESIGN §3.1).

With ``Z = K^+ T`` from the Gram solve (``gram``, ``gram_solve``):

    dW^T = A^T Z,  db = 1^T Z      (jt_product; jt_update_ applies W += alpha dW, b += alpha db)
"""
from __future__ import annotations

import torch


def jt_product_ref(A, Z):
    """``(dW, db) = (Z^T A, 1^T Z)``: dW is (h, M), the layout of W."""
    return Z.t() @ A, Z.sum(dim=0)


def jt_product_fake(A: torch.Tensor, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape only: ``dW`` (h, M), ``db`` (h,)."""
    return A.new_empty(Z.shape[1], A.shape[1]), A.new_empty(Z.shape[1])


def jt_update_ref(W, b, A, Z, alpha: float):
    """In place: ``W += alpha * Z^T A``, ``b += alpha * 1^T Z`` (b may be None)."""
    W.addmm_(Z.t(), A, alpha=alpha)
    if b is not None:
        b.add_(Z.sum(dim=0), alpha=alpha)


def jt_update_fake(W, b, A, Z, alpha: float) -> None:
    """In place: nothing to allocate."""
    return None

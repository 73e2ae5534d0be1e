"""Jacobian-transpose products of a coupling (DESIGN §3.1).

With ``A~ = [A, 1]`` (n x (M+1)) the pseudoinverse solve goes through the n x n Gram matrix:

    K    = A A^T + 1 1^T           (gram)
    Z    = K^+ T                   (gram_solve)
    dW^T = A^T Z,  db = 1^T Z      (jt_product; jt_update_ applies W += alpha dW, b += alpha db)
"""
from __future__ import annotations

import torch


def gram_ref(A, bias: bool):
    """``K = A A^T (+ 1 1^T when bias)``, symmetric (n x n)."""
    K = A @ A.t()
    if bias:
        K = K + 1
    return K


def jt_product_ref(A, Z):
    """``(dW, db) = (Z^T A, 1^T Z)``: dW is (h, M), the layout of W."""
    return Z.t() @ A, Z.sum(dim=0)


def jt_update_ref(W, b, A, Z, alpha: float):
    """In place: ``W += alpha * Z^T A``, ``b += alpha * 1^T Z`` (b may be None)."""
    W.addmm_(Z.t(), A, alpha=alpha)
    if b is not None:
        b.add_(Z.sum(dim=0), alpha=alpha)


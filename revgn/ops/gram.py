"""The Gram matrix of a coupling's activations (DESIGN §3.1).

With ``A~ = [A, 1]`` (n x (M+1)) the pseudoinverse solve goes through the n x n Gram matrix

    K = A~ A~^T = A A^T + 1 1^T

(``gram_solve`` then solves ``K Z = T``; ``jt`` applies ``Z``).
"""
from __future__ import annotations

import torch


def gram_ref(A, bias: bool):
    """``K = A A^T (+ 1 1^T when bias)``, symmetric (n x n)."""
    K = A @ A.t()
    if bias:
        K = K + 1
    return K


def gram_fake(A: torch.Tensor, bias: bool) -> torch.Tensor:
    """Shape only (``torch.compile``, ``opcheck``): ``K`` is (n, n)."""
    return A.new_empty(A.shape[0], A.shape[0])

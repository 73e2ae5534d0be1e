"""Per-sample losses for EGN and the symmetric factor of their output Hessians.

For a batch of ``b`` outputs ``f_i in R^c`` the loss is the mean ``L = (1/b) sum_i l_i(f_i)``,
``r_i = -dl_i/df_i`` is the pseudo-residual and ``Q_i = d2 l_i/df_i^2 = F_i F_i^T`` the output
Hessian with an exact factor ``F_i`` (no jitter):

| loss | l_i | r_i | F_i |
|---|---|---|---|
| mse | ``1/2 ||f - y||^2`` | ``y - f`` | ``I`` |
| cross_entropy | ``-log softmax(f)_y`` | ``onehot(y) - p`` | ``diag(sqrt p) (I - sqrt p sqrt p^T)`` |
| bce (with logits) | ``sum_c BCE(f_c, y_c)`` | ``y - sigmoid(f)`` | ``diag(sqrt(q (1 - q)))`` |

For cross-entropy ``I - s s^T`` (``s = sqrt p``, ``||s|| = 1``) is a projector, so
``F F^T = diag(sqrt p) (I - s s^T) diag(sqrt p) = diag(p) - p p^T``. ``r`` lies in the range of
``F`` (``1^T r = 0``), and ``r = F t`` with ``t = r / sqrt(p)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

EGN_LOSSES = ("mse", "cross_entropy", "bce")


@dataclass
class OutputModel:
    """``r`` (b, c), the factor ``F`` (b, c, c), and ``t`` with ``F t = r`` (b, c)."""
    r: torch.Tensor
    factor: torch.Tensor
    t: torch.Tensor


def mean_loss(f: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "cross_entropy":
        return F.cross_entropy(f, y)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(f, y, reduction="sum") / f.shape[0]
    return 0.5 * (f - y).pow(2).sum() / f.shape[0]


def output_model(f: torch.Tensor, y: torch.Tensor, loss: str) -> OutputModel:
    b, c = f.shape
    if loss == "mse":
        r = y - f
        return OutputModel(r, torch.eye(c, dtype=f.dtype, device=f.device).expand(b, c, c), r)
    if loss == "bce":
        q = torch.sigmoid(f)
        r = y - q
        root = (q * (1 - q)).sqrt()
        t = torch.where(root > 0, r / torch.where(root > 0, root, torch.ones_like(root)),
                        torch.zeros_like(r))
        return OutputModel(r, torch.diag_embed(root), t)
    p = torch.softmax(f, dim=1)
    r = F.one_hot(y, c).to(f.dtype) - p
    s = p.sqrt()
    projector = torch.eye(c, dtype=f.dtype, device=f.device) - s[:, :, None] * s[:, None, :]
    factor = s[:, :, None] * projector
    t = torch.where(s > 0, r / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(r))
    return OutputModel(r, factor, t)


def hessian(f: torch.Tensor, loss: str) -> torch.Tensor:
    """``Q_i`` (b, c, c), for tests and the predicted-reduction model."""
    b, c = f.shape
    if loss == "mse":
        return torch.eye(c, dtype=f.dtype, device=f.device).expand(b, c, c)
    if loss == "bce":
        q = torch.sigmoid(f)
        return torch.diag_embed(q * (1 - q))
    p = torch.softmax(f, dim=1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]

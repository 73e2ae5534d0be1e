"""Per-sample losses for EGN, their residuals and an exact symmetric factor of their Hessians.

Normalization: for a batch of ``b`` outputs ``f_i in R^c`` the objective is the MEAN of per-sample
losses, ``L = (1/b) sum_i l_i(f_i)``, each ``l_i`` summed (not averaged) over the ``c`` outputs:

- mse: ``l_i = 1/2 ||f - y||^2`` (torch: ``0.5 * mse_loss(f, y, reduction="sum") / b`` for L),
  ``r_i = y - f``, ``Q_i = I``, ``F_i = I``.
- cross_entropy: ``l_i = -log softmax(f)_y`` (torch: ``cross_entropy(f, y)``),
  ``r_i = onehot(y) - p``, ``Q_i = diag(p) - p p^T``, ``F_i = diag(s)(I - s s^T)``, ``s = sqrt p``.
- bce (with logits): ``l_i = sum_c BCE(f_c, y_c)`` (torch:
  ``binary_cross_entropy_with_logits(f, y, reduction="sum") / b``), ``r_i = y - q``,
  ``q = sigmoid f``, ``Q_i = diag(q (1 - q))``, ``F_i = diag(sqrt(q (1 - q)))``.

Here ``r_i = -dl_i/df_i`` is the pseudo-residual, ``Q_i = d2 l_i/df_i^2`` the output Hessian and
``F_i`` an exact factor ``Q_i = F_i F_i^T``.

For cross-entropy ``||s|| = 1``, so ``I - s s^T`` is an orthogonal projector and
``F F^T = diag(s)(I - s s^T) diag(s) = diag(p) - p p^T`` exactly: the softmax Hessian's null space
(the all-ones direction) is carried by the factor, no jitter ``Q + eps I`` is needed.

The row system uses the split ``r = F t + rest``: ``t = r / s`` (``r / sqrt(q(1-q))`` for bce)
where the scale is positive and 0 where it underflowed, ``rest = r - F t``. For cross-entropy
``1^T r = 0`` gives ``F t = r`` whenever every ``p > 0``; ``rest`` is then rounding noise, and it is
the exact remainder when a probability underflows to 0 (a saturated logit), where ``Q`` has a zero
row that ``r`` does not. Everything here is computed in float64 (the arrays are only ``b x c``) so
that underflow needs a logit gap above ~700 rather than ~90.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

EGN_LOSSES = ("mse", "cross_entropy", "bce")


@dataclass
class OutputModel:
    """The loss seen from the outputs, float64: ``r`` (b, c), ``factor`` ``F`` (b, c, c),
    ``t`` and ``rest`` (b, c) with ``r = F t + rest`` exactly up to rounding."""
    r: torch.Tensor
    factor: torch.Tensor
    t: torch.Tensor
    rest: torch.Tensor


def mean_loss(f: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """``L = (1/b) sum_i l_i(f_i)`` (see the table in the module docstring)."""
    b = f.shape[0]
    if loss == "cross_entropy":
        return F.cross_entropy(f, y)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(f, y, reduction="sum") / b
    return 0.5 * (f - y).pow(2).sum() / b


def _divide_where_positive(r, scale):
    positive = scale > 0
    return torch.where(positive, r / torch.where(positive, scale, torch.ones_like(scale)),
                       torch.zeros_like(r))


def output_model(f: torch.Tensor, y: torch.Tensor, loss: str) -> OutputModel:
    f = f.detach().to(torch.float64)
    b, c = f.shape
    eye = torch.eye(c, dtype=f.dtype, device=f.device)
    if loss == "mse":
        r = y.to(f.dtype) - f
        return OutputModel(r, eye.expand(b, c, c), r, torch.zeros_like(r))
    if loss == "bce":
        q = torch.sigmoid(f)
        r = y.to(f.dtype) - q
        scale = (q * (1 - q)).sqrt()
        t = _divide_where_positive(r, scale)
        return OutputModel(r, torch.diag_embed(scale), t, r - scale * t)
    p = torch.softmax(f, dim=1)
    r = F.one_hot(y, c).to(f.dtype) - p
    s = p.sqrt()
    factor = s[:, :, None] * (eye - s[:, :, None] * s[:, None, :])
    t = _divide_where_positive(r, s)
    return OutputModel(r, factor, t, r - torch.einsum("icd,id->ic", factor, t))


def hessian(f: torch.Tensor, loss: str) -> torch.Tensor:
    """``Q_i = d2 l_i / df_i^2`` (b, c, c) in ``f``'s dtype."""
    b, c = f.shape
    if loss == "mse":
        return torch.eye(c, dtype=f.dtype, device=f.device).expand(b, c, c)
    if loss == "bce":
        q = torch.sigmoid(f)
        return torch.diag_embed(q * (1 - q))
    p = torch.softmax(f, dim=1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]

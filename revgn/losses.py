"""Per-sample losses and the GN output step ``e_i = H_i^+ g_i`` (DESIGN §3).

``g_i = dl_i/df_i`` and ``H_i = d2 l_i / df_i^2`` for logits ``f_i in R^k``. One GN step moves the
outputs, to first order, by ``Delta f_i = -lr * e_i``.

| loss / curvature | e_i |
|---|---|
| mse, ``l = 1/2 ||f - y||^2`` | ``f_i - y_i`` |
| cross_entropy, identity | ``p_i - onehot(y_i)`` |
| cross_entropy, exact | ``pinv(diag(p) - p p^T) (p - onehot(y))`` |
| cross_entropy, damped | ``(diag(p) - p p^T + lambda I)^-1 (p - onehot(y))`` |
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from revgn.ops.solve import gram_solve
from revgn.ops.table import reference_ops

LOSSES = ("cross_entropy", "mse")
CURVATURES = ("identity", "exact", "damped")


def batch_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean over the batch of the per-sample loss."""
    if loss == "cross_entropy":
        return F.cross_entropy(logits, y)
    return 0.5 * (logits - y).pow(2).sum(dim=1).mean()


def softmax_pinv_closed_form(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``pinv(diag(p) - p p^T) (p - onehot(y))`` in closed form.

    With ``H = diag(p) - p p^T`` (all ``p > 0``) the null space of ``H`` is ``span(1)`` and
    ``H (g / p) = g - p (1^T g) = g`` because ``1^T g = 0``. The minimum-norm solution removes the
    mean: ``e = g/p - mean(g/p)``, i.e. ``e_j = 1/(k p_y) - [j = y] / p_y``.
    """
    k = p.shape[1]
    p_y = p.gather(1, y[:, None])
    e = torch.full_like(p, 1.0) / (k * p_y)
    return e.scatter_add(1, y[:, None], -1.0 / p_y)


def softmax_hessian(p: torch.Tensor) -> torch.Tensor:
    """Per-sample ``diag(p) - p p^T``, (n, k, k)."""
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def output_step(logits: torch.Tensor, y: torch.Tensor, loss: str, curvature: str = "identity",
                damping: float = 0.0, ops=None) -> torch.Tensor:
    """``e`` (n x k): the output-space GN step ``H^+ g`` per sample (see the module table).
    ``ops`` (``revgn.ops.bind``) runs the damped curvature's small solves (the references when
    None: the step of a loss is not an op of the sweep)."""
    if loss == "mse":
        return logits - y
    p = torch.softmax(logits, dim=1)
    g = p - F.one_hot(y, logits.shape[1]).to(p.dtype)
    if curvature == "identity":
        return g
    if curvature == "exact":
        return softmax_pinv_closed_form(p, y)
    # damped: one small SPD system per sample, (H_i + lambda I) e_i = g_i
    H = softmax_hessian(p) + damping * torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
    return gram_solve(H, g[:, :, None], "cholesky", ops=ops or reference_ops()).Z[:, :, 0]

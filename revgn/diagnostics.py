"""Diagnostics of the lazy vs feature-learning regimes (DESIGN §5).

- ``empirical_ntk``: ``Theta = J J^T`` on a probe batch, ``J = d f / d theta`` (n k x P);
  ``ntk_similarity`` is the kernel alignment ``<Theta_0, Theta_t>_F / (|Theta_0| |Theta_t|)``
  (``ntk_distance = 1 - similarity``, Fort et al. 2020).
- ``linear_cka``: centered kernel alignment with linear kernels (Kornblith et al. 2019),
  ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)``; ``block_cka`` compares each block's
  output with the same block at initialization.
- ``batch_loss_change``: percent change of the loss on the batch a step was taken on.
- ``weight_cosine``: cosine between current and initial weights, per coupling.
"""
from __future__ import annotations

import torch


def _named(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def empirical_ntk(model, x: torch.Tensor) -> torch.Tensor:
    """``J J^T`` (n k x n k), rows ordered sample-major; accumulated one parameter at a time so
    that only one block of the Jacobian exists at once."""
    named = _named(model)
    params = {n: p.detach() for n, p in named}
    theta = None
    for name, _ in named:
        def f(p, name=name):
            return torch.func.functional_call(model, {**params, name: p}, (x,))
        block = torch.func.jacrev(f)(params[name])          # (n, k, *shape)
        block = block.reshape(block.shape[0] * block.shape[1], -1)
        term = block @ block.t()
        theta = term if theta is None else theta + term
    return theta


def ntk_similarity(K0: torch.Tensor, K1: torch.Tensor) -> float:
    return float((K0 * K1).sum() / (K0.norm() * K1.norm()))


def ntk_distance(K0: torch.Tensor, K1: torch.Tensor) -> float:
    return 1.0 - ntk_similarity(K0, K1)


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    X = X.reshape(X.shape[0], -1).to(torch.float64)
    Y = Y.reshape(Y.shape[0], -1).to(torch.float64)
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    hsic = (Y.t() @ X).pow(2).sum()
    return float(hsic / ((X.t() @ X).norm() * (Y.t() @ Y).norm()))


@torch.no_grad()
def block_cka(model, model_init, x) -> list[float]:
    """CKA of every block's output stream against the same block at initialization."""
    return [linear_cka(a, b) for a, b in zip(model.block_outputs(x), model_init.block_outputs(x))]


def batch_loss_change(loss_before: float, loss_after: float) -> float:
    """``100 (after - before) / before``: negative when the step lowered the batch's loss."""
    return 100.0 * (loss_after - loss_before) / loss_before


def _cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


@torch.no_grad()
def weight_cosine(model, model_init) -> dict:
    """``{"block{l}.{F|G}": cosine, ..., "all": cosine}`` over each coupling's ``[W, b]``."""
    out, now_all, init_all = {}, [], []
    for (l, name, c), (_, _, c0) in zip(model.couplings(), model_init.couplings()):
        now = torch.cat([c.W.reshape(-1)] + ([c.b] if c.b is not None else []))
        init = torch.cat([c0.W.reshape(-1)] + ([c0.b] if c0.b is not None else []))
        out[f"block{l}.{name}"] = _cosine(now, init)
        now_all.append(now)
        init_all.append(init)
    out["all"] = _cosine(torch.cat(now_all), torch.cat(init_all))
    return out

"""Diagnostics of the lazy vs feature-learning regimes (DESIGN §5, Buffelli et al. Figs. 3-4).

- Empirical NTK on a probe batch of ``n`` inputs, model outputs ``f in R^{n x k}``:
  ``Theta = J J^T`` (``nk x nk``), ``J = d vec(f) / d theta`` with rows ordered sample-major
  (row ``i k + c`` is output ``c`` of sample ``i``).
- Kernel similarity (alignment, cosine in Frobenius geometry) and Fort et al.'s (2020) kernel
  distance:  ``sim(K0, K1) = <K0, K1>_F / (||K0||_F ||K1||_F)``,  ``dist = 1 - sim``;
  kernel velocity between checkpoints ``t < t'``: ``dist(K_t, K_t') / (t' - t)``.
- Buffelli et al.'s own NTK measure (their code, ``compute_ntk_similarity``): on a probe batch,
  with the network's output ``f`` taken *before* the fixed readout (the stream ``X_L``, n x d) and
  one Gaussian direction ``u ~ N(0, I_{nd})`` shared by both checkpoints,
  ``sim_u(K0, K1) = <K0 u, K1 u> / (||K0 u|| ||K1 u||)``, ``K u = J (J^T u)``. (They average
  ``K v_s`` over 100 draws ``v_s`` before the cosine, which is ``K`` times the mean draw, itself
  one Gaussian direction up to scale: one direction is the same measure.) It is a cosine of two
  vectors, not of two kernels: it is 1 whenever ``K1 u`` is parallel to ``K0 u``.
- Linear CKA (Kornblith et al. 2019) of representations ``X (n x p)``, ``Y (n x q)``, with
  ``H = I - 11^T/n``:
  ``CKA = HSIC(XX^T, YY^T) / sqrt(HSIC(XX^T, XX^T) HSIC(YY^T, YY^T))``,
  ``HSIC(K, L) = tr(K H L H)``, computed as ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``
  with column-centered ``Xc = H X``, ``Yc = H Y``.
- Per-batch loss change (Fig. 3): ``100 (L_after - L_before) / L_before`` on the batch the step
  was taken on.
- Weight cosine to initialization: ``<theta, theta_0> / (||theta|| ||theta_0||)`` per coupling,
  per block and overall.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def _trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def empirical_ntk(model, x: torch.Tensor) -> torch.Tensor:
    """``Theta = J J^T = sum_p J_p J_p^T`` over the trainable parameters ``p`` of ``model`` on
    the probe batch ``x``; one parameter's Jacobian ``J_p`` (``nk x numel(p)``) exists at a time.
    Outputs with more than two dimensions are flattened per sample."""
    named = _trainable(model)
    if not named:
        raise ValueError("the model has no trainable parameters")
    params = {n: p.detach() for n, p in named}
    theta = None
    for name in params:
        def f(p, name=name):
            out = torch.func.functional_call(model, {**params, name: p}, (x,))
            return out.reshape(out.shape[0], -1)
        jac = torch.func.jacrev(f)(params[name])              # (n, k, *p.shape)
        jac = jac.reshape(jac.shape[0] * jac.shape[1], -1)
        term = jac @ jac.t()
        theta = term if theta is None else theta + term
    return theta


def ntk_similarity(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """``<K0, K1>_F / (||K0||_F ||K1||_F)``: 1 when the kernels are proportional; in [0, 1] for
    positive semi-definite kernels."""
    K0, K1 = K0.to(torch.float64), K1.to(torch.float64)
    return float((K0 * K1).sum() / (K0.norm() * K1.norm()))


def kernel_direction_product(fn, params: dict, u: torch.Tensor) -> torch.Tensor:
    """``K u = J (J^T u)`` for ``K = J J^T``, ``J = d fn(params) / d params``, without forming
    ``J``: one reverse-mode product ``J^T u`` and one forward-mode product ``J w``."""
    _, pullback = torch.func.vjp(fn, params)
    (w,) = pullback(u)
    return torch.func.jvp(fn, (params,), (w,))[1]


def ntk_direction_similarity(model_a, model_b, x: torch.Tensor, u: torch.Tensor,
                             output=None) -> float:
    """Buffelli et al.'s NTK measure ``cos(K_a u, K_b u)`` of two checkpoints on the probe batch
    ``x`` along the direction ``u`` (shaped like the output). ``output(model, x)`` is the output
    the kernel is of; by default the stream ``model.stream(x)`` before the fixed readout, as
    the authors take it."""
    output = output or (lambda model, inp: model.stream(inp))

    def product(model):
        view = _OutputView(model, output)
        params = {f"model.{n}": p.detach() for n, p in _trainable(model)}
        fn = lambda p: torch.func.functional_call(view, p, (x,))  # noqa: E731
        return kernel_direction_product(fn, params, u).to(torch.float64).flatten()

    a, b = product(model_a), product(model_b)
    return float(a @ b / (a.norm() * b.norm()))


class _OutputView(torch.nn.Module):
    """``output(model, x)`` as a module's forward, so ``functional_call`` can swap the model's
    parameters in a method other than ``forward``."""

    def __init__(self, model, output):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x):
        return self.output(self.model, x)


def ntk_distance(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """Fort et al.'s kernel distance ``1 - ntk_similarity(K0, K1)``."""
    return 1.0 - ntk_similarity(K0, K1)


def kernel_velocity(kernels, times) -> list[float]:
    """Rate of change of the kernel between consecutive checkpoints:
    ``dist(K_j, K_{j+1}) / (t_{j+1} - t_j)`` (Fort et al.'s kernel velocity)."""
    kernels, times = list(kernels), list(times)
    if len(kernels) != len(times):
        raise ValueError(f"{len(kernels)} kernels but {len(times)} times")
    return [ntk_distance(a, b) / (t1 - t0)
            for a, b, t0, t1 in zip(kernels, kernels[1:], times, times[1:])]


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same ``n`` examples (rows); invariant to
    orthogonal transforms and isotropic scaling of either. NaN when either is constant."""
    X = X.reshape(X.shape[0], -1).to(torch.float64)
    Y = Y.reshape(Y.shape[0], -1).to(torch.float64)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows, Y {Y.shape[0]}")
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    denominator = (X.t() @ X).norm() * (Y.t() @ Y).norm()
    if denominator == 0:
        return math.nan
    return float((Y.t() @ X).pow(2).sum() / denominator)


@torch.no_grad()
def block_cka(model, model_init, x) -> list[float]:
    """``[CKA(X_l(theta), X_l(theta_0)) for l = 1..L]``: each block's output stream on ``x``
    against the same block of the model at initialization (``block_outputs``)."""
    return [linear_cka(a, b) for a, b in zip(model.block_outputs(x), model_init.block_outputs(x))]


def batch_loss_change(loss_before: float, loss_after: float) -> float:
    """``100 (after - before) / before``: negative when the step lowered the batch's loss."""
    return 100.0 * (loss_after - loss_before) / loss_before


def measure_batch_loss_change(model, loss_fn: Callable, step: Callable, x, y) -> dict:
    """Take ``step(x, y)`` and report the loss on that same batch before and after it:
    ``{"before", "after", "percent"}``. ``loss_fn(outputs, y)`` returns a scalar tensor."""
    with torch.no_grad():
        before = float(loss_fn(model(x), y))
    step(x, y)
    with torch.no_grad():
        after = float(loss_fn(model(x), y))
    return dict(before=before, after=after, percent=batch_loss_change(before, after))


def _cosine(a, b) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


def _coupling_vector(c) -> torch.Tensor:
    return torch.cat([c.W.reshape(-1)] + ([c.b.reshape(-1)] if c.b is not None else []))


@torch.no_grad()
def weight_cosine(model, model_init) -> dict:
    """Cosine between current and initial ``[W, b]``: ``"block{l}.{F|G}"`` per coupling,
    ``"block{l}"`` per block (both couplings' vectors joined), ``"all"`` over every coupling."""
    out, per_block = {}, {}
    for (l, name, c), (_, _, c0) in zip(model.couplings(), model_init.couplings()):
        now, init = _coupling_vector(c).double(), _coupling_vector(c0).double()
        out[f"block{l}.{name}"] = _cosine(now, init)
        per_block.setdefault(l, []).append((now, init))
    for l, pairs in per_block.items():
        out[f"block{l}"] = _cosine(torch.cat([a for a, _ in pairs]),
                                   torch.cat([b for _, b in pairs]))
    every = [pair for pairs in per_block.values() for pair in pairs]
    out["all"] = _cosine(torch.cat([a for a, _ in every]), torch.cat([b for _, b in every]))
    return out

"""``SGN``: inexact damped Gauss-Newton in parameter space by truncated conjugate gradient, the
baseline Korbit et al. compare EGN with (the stochastic Gauss-Newton of Gargiani et al., 2020).

Same objective, damping and step rules as ``EGN`` (``revgn.egn.optimizer``); only the direction
differs. With ``G = (1/b) J^T Q J`` and ``grad L = -(1/b) J^T r``, ``d`` approximately solves

    (G + lambda I_P) d = (1/b) J^T r

by at most ``cg_iters`` conjugate-gradient iterations from ``d = 0``, stopping early when the
residual falls below ``cg_tol`` times the right-hand side. Each iteration costs one
Jacobian-vector product (forward mode) and one vector-Jacobian product (reverse mode); neither
``J`` nor ``G`` is formed. With ``cg_iters >= P`` (and exact arithmetic) ``d`` is EGN's direction;
with fewer it lies in the Krylov space ``span{g, A g, ..., A^(k-1) g}``, ``A = G + lambda I``.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from revgn.egn.input_checks import check_outputs, check_targets
from revgn.egn.losses import EGN_LOSSES, hessian, output_model
from revgn.egn.optimizer import EGN


def conjugate_gradient(matvec, rhs: list[torch.Tensor], iters: int, tol: float):
    """Solve ``A d = rhs`` for symmetric positive definite ``A`` given as ``matvec`` on lists of
    tensors (one per parameter). Returns ``(d, iterations, relative residual)``."""
    def dot(a, b):
        return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))

    d = [torch.zeros_like(t) for t in rhs]
    res = [t.clone() for t in rhs]
    direction = [t.clone() for t in rhs]
    rhs_norm = math.sqrt(dot(rhs, rhs))
    rr = rhs_norm ** 2
    if not math.isfinite(rhs_norm):  # hand the caller a non-finite d: it refuses to apply it
        return [torch.full_like(t, math.nan) for t in rhs], 0, math.nan
    if rhs_norm == 0:
        return d, 0, 0.0
    done = 0
    for done in range(1, iters + 1):
        Ap = matvec(direction)
        curvature = dot(direction, Ap)
        if not math.isfinite(curvature):
            return [torch.full_like(t, math.nan) for t in rhs], done, math.nan
        if not curvature > 0:  # A is positive definite for lambda > 0; stop on round-off
            done -= 1
            break
        alpha = rr / curvature
        d = [x + alpha * p for x, p in zip(d, direction)]
        res = [r - alpha * a for r, a in zip(res, Ap)]
        rr_new = dot(res, res)
        if math.sqrt(rr_new) <= tol * rhs_norm:
            rr = rr_new
            break
        direction = [r + (rr_new / rr) * p for r, p in zip(res, direction)]
        rr = rr_new
    return d, done, math.sqrt(rr) / rhs_norm


class SGN(EGN):
    """Truncated-CG damped Gauss-Newton (see the module docstring).

    Args: those of ``EGN`` (``lr``, ``loss``, ``damping`` > 0, ``line_search``, ``momentum``,
    ``adaptive_damping``, ...), and
        cg_iters: the most conjugate-gradient iterations per step (each one JVP and one VJP).
        cg_tol: stop when ``||residual|| <= cg_tol ||(1/b) J^T r||``.

    ``last_cg`` holds the last step's ``(iterations, relative residual)``.
    """

    def __init__(self, model, lr: float = 1.0, loss: str = "mse", damping: float = 1.0,
                 cg_iters: int = 10, cg_tol: float = 1e-6, **kwargs):
        if kwargs.get("jacobian", "auto") != "auto":
            raise ValueError("SGN forms no Jacobian: leave jacobian='auto'")
        if not damping > 0:
            raise ValueError(f"SGN needs damping > 0 (CG needs a positive definite system); "
                             f"got {damping}")
        if isinstance(cg_iters, bool) or not isinstance(cg_iters, int) or cg_iters < 1:
            raise ValueError(f"cg_iters must be a positive int; got {cg_iters!r}")
        if not 0 <= cg_tol < 1:
            raise ValueError(f"cg_tol must be in [0, 1); got {cg_tol}")
        super().__init__(model, lr=lr, loss=loss, damping=damping, **kwargs)
        self.cg_iters, self.cg_tol = cg_iters, cg_tol
        self.last_cg = None

    def jacobian_path(self, x) -> str:
        return "cg"

    def _solve(self, x, y):
        params = self._params()
        outputs, primals = self._outputs_fn(x, params)
        with torch.no_grad():
            f, pullback = torch.func.vjp(outputs, *primals)
        check_outputs(f, x.shape[0])
        y = check_targets(f, y, self.loss, EGN_LOSSES)
        om = output_model(f, y, self.loss)
        b = f.shape[0]
        Q = hessian(f.detach().to(torch.float64), self.loss)
        lam = float(self.param_groups[0]["damping"])

        def pull(w):  # (1/b) J^T w
            with torch.no_grad():
                return [t / b for t in pullback(w.to(f.dtype))]

        def matvec(v):  # (G + lambda I) v
            with torch.no_grad():
                Jv = torch.func.jvp(outputs, primals, tuple(v))[1]
            QJv = torch.einsum("icd,id->ic", Q, Jv.to(torch.float64))
            return [g + lam * t for g, t in zip(pull(QJv), v)]

        d, iters, residual = conjugate_gradient(matvec, pull(om.r), self.cg_iters, self.cg_tol)
        self.last_cg = (iters, residual)
        return SimpleNamespace(path="cg"), f.detach(), y, om, dict(zip(params, d))

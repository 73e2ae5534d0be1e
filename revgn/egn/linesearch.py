"""Step-size and damping control for EGN: stochastic Armijo backtracking on the batch and the
trust-region style damping rule (DESIGN §4)."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class SearchResult:
    alpha: float       # accepted step size, 0.0 when none was accepted
    loss: float        # loss at the accepted step (the starting loss when none was)
    trials: int        # loss evaluations
    accepted: bool
    last_tried: float  # the smallest step size evaluated


def first_trial(alpha_prev: float | None, lr: float, grow: float, alpha_max: float) -> float:
    """``min(grow * alpha_prev, alpha_max)``; ``min(lr, alpha_max)`` before any search."""
    return min(lr if alpha_prev is None else grow * alpha_prev, alpha_max)


def armijo(loss_at, loss0: float, slope: float, alpha: float, c: float = 0.1,
           shrink: float = 0.8, max_trials: int = 15) -> SearchResult:
    """Backtracking: the first of ``alpha, shrink alpha, shrink^2 alpha, ...`` (at most
    ``max_trials``) with

        loss_at(alpha) <= loss0 + c * alpha * slope,        slope = g^T d.

    A NaN loss fails the test. When none passes, ``alpha = 0`` (the caller does not move)."""
    tried = alpha
    for k in range(1, max_trials + 1):
        tried = alpha
        loss = loss_at(alpha)
        if loss <= loss0 + c * alpha * slope:
            return SearchResult(alpha, loss, k, True, alpha)
        alpha *= shrink
    return SearchResult(0.0, loss0, max_trials, False, tried)


def adapt_damping(lam: float, rho: float | None, increase: float, decrease: float,
                  low: float, high: float) -> float:
    """``lambda * increase`` when ``rho < 0.25`` (the quadratic model over-promised, or no step
    was taken: ``rho`` None or NaN), ``lambda * decrease`` when ``rho > 0.75``, clamped to
    ``[low, high]``."""
    if rho is None or math.isnan(rho) or rho < 0.25:
        lam *= increase
    elif rho > 0.75:
        lam *= decrease
    return min(max(lam, low), high)

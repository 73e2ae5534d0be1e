"""Per-coupling pseudoinverse solves ``D = pinv(A~) T`` (DESIGN §3.1).

``A~ = [A, 1]`` is n x (M+1) (no ones column without bias), ``T`` is the coupling's target tangent
(n x h). ``D``'s first M rows are ``dW^T`` and its last row is ``db``. For a wide ``A~``
(``n <= M+1``) the solve goes through the n x n Gram matrix ``K = A~ A~^T``:

    Z = K^+ T,    dW = Z^T A,    db = 1^T Z,    realized change  A~ D = K Z.

Solvers (they agree where their assumptions hold):

- ``cholesky`` (default), ``eigh``, ``damped``, ``projector``: the Gram route above
  (``revgn.ops.gram_solve``); ``projector`` truncates like ``eigh`` from GEMMs and a Cholesky
  (for GPUs, where an eigen-solve is latency-bound), for ``rtol >= PROJECTOR_MIN_RTOL``.
- ``svd``: ``torch.linalg.svd`` of ``A~`` itself (the authors' method; reference only).
- ``qr``: ``A~^T = Q R``, then the SVD of the small ``R``: exact truncation without squaring the
  condition number.
- ``rsvd``: randomized range finder (Halko et al.) of rank ``rsvd_rank`` + oversampling.
- ``transpose``: ``D = A~^T T`` (a gradient-like baseline, not a pseudoinverse).

Truncation keeps singular values ``s > max(rtol * s_max, atol)``. On the Gram the relative
threshold is raised to ``gram_rtol_floor(dtype)``: singular values below about ``sqrt(eps) s_max``
are not resolvable from ``K`` (DESIGN §3.1, Precision); a finer ``rtol`` goes to the ``qr`` route.
A coupling that the Gram would truncate only because of that floor (``rtol`` below it, e.g. the
default 0) is solved by ``qr`` instead (route ``"cholesky->qr"``), unless its rank is known in
advance (a linear block); a full-rank float64 Gram solve
that misses its target by more than ``REFINE_RTOL`` is refined through ``A~``
(``refine_gram_solution``) to the accuracy of the SVD route.

``A`` may be one shard ``A_r`` of an ``A`` split by columns over ranks
(``SolverConfig.gram_reduce``, ``revgn.distributed``): ``K = sum_r A_r A_r^T + 1 1^T`` is
reduced, ``Z`` is the same on every rank, and ``Z^T A_r`` is that rank's columns of ``dW``. Such
a solve is neither refined nor sent to ``qr``: both need the whole ``A~`` on one rank.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from revgn.linear_coupling import LINEAR_SOLVERS, LinearSolve, bottleneck_gram, linear_update
from revgn.ops import OpTable, gram_solve, reference_ops
from revgn.ops.solve import FELL_BACK, NONFINITE, largest_eigenvalue
from revgn.validation import all_finite

SOLVERS = ("cholesky", "eigh", "svd", "damped", "qr", "rsvd", "transpose", "projector")
GRAM_SOLVERS = ("cholesky", "eigh", "damped", "projector")

#: finest ``rtol`` the ``projector`` solver resolves: ``tau = rtol^2 lam_max`` at least 100 times
#: its band (``revgn.ops.solve.PROJECTOR_BAND``); a finer one goes to ``eigh``
PROJECTOR_MIN_RTOL = 1e-3


def gram_rtol_floor(dtype: torch.dtype) -> float:
    """Finest relative singular-value threshold worth using on the Gram of a ``dtype`` matrix.

    ``K``'s eigenvalues carry an error of about ``eps * lam_max``, so a singular value
    ``s = sqrt(lam)`` is known to relative accuracy ``delta`` only when
    ``s >= sqrt(eps / delta) * s_max``; ``10 sqrt(eps)`` keeps every retained direction to 1%
    (float32: 3.5e-3, below the paper's rtol of 1e-2; float64: 1.5e-7).
    """
    return 10.0 * torch.finfo(dtype).eps ** 0.5


@dataclass
class SolverConfig:
    solver: str = "cholesky"
    rtol: float = 0.0
    atol: float = 0.0
    #: Tikhonov lambda of the ``damped`` solver, relative to ``s_max^2`` unless absolute
    pinv_damping: float = 0.0
    pinv_damping_relative: bool = True
    rsvd_rank: int | None = None
    rsvd_oversample: int = 10
    rsvd_power_iters: int = 2
    #: the op table (``revgn.ops.bind``) every solve runs on; the optimizers bind their own
    ops: OpTable = field(default_factory=reference_ops)
    generator: torch.Generator | None = field(default=None, repr=False)
    #: sums a Gram matrix over the shards of ``A`` (tensor parallelism over M); None: not sharded
    gram_reduce: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    #: what one step leaves for the next: each coupling's last rank (``solve_coupling``'s ``key``)
    #: and the fixed ``C C^T`` of linear couplings (``revgn.linear_coupling``)
    memo: dict = field(default_factory=dict, repr=False)


@dataclass
class CouplingSolution:
    """The solve of one coupling. ``Z`` is set on the Gram route, ``dW``/``db`` otherwise."""
    realized: torch.Tensor          # A~ D (n x h): how the coupling output moves per unit step
    rank: int
    method: str                     # the route that ran, e.g. "cholesky" or "cholesky->eigh"
    exact: bool                     # A~ D = T: full row rank and nothing truncated or damped
    Z: torch.Tensor | None = None
    dW: torch.Tensor | None = None
    db: torch.Tensor | None = None
    finite: bool = True
    bias: bool = True
    #: ``relative_residual(realized, T)``; ``solve_coupling`` fills it when the route did not
    residual: float | None = None
    #: ``realized = realized_left @ T_right`` when the target came factored (``T = e @ T_right``,
    #: ``solve_coupling``'s ``T_factors``): pushes of the realized change may use the factors
    realized_left: torch.Tensor | None = None

    def parameter_update(self, A: torch.Tensor, ops: OpTable):
        """``(dW, db)`` in the layout of ``(W, b)``; ``db`` is None without bias."""
        if self.Z is not None:
            dW, db = ops.jt_product(A, self.Z)
            return dW, (db if self.bias else None)
        return self.dW, self.db


def with_ones(A: torch.Tensor, bias: bool) -> torch.Tensor:
    """``A~ = [A, 1]`` (or ``A`` without bias)."""
    if not bias:
        return A
    return torch.cat([A, A.new_ones(A.shape[0], 1)], dim=1)


def _split(D: torch.Tensor, bias: bool):
    if bias:
        return D[:-1].t(), D[-1]
    return D.t(), None


def relative_residual(realized: torch.Tensor, target: torch.Tensor) -> float:
    """``||realized - target|| / ||target||`` (the absolute miss when the target is zero)."""
    denom = float(target.norm())
    diff = float((realized - target).norm())
    return diff / denom if denom > 0 else diff


def _default_rtol(shape, dtype, rtol: float, atol: float) -> float:
    # torch.linalg.pinv's default when neither threshold is given
    if rtol == 0.0 and atol == 0.0:
        return torch.finfo(dtype).eps * max(shape)
    return rtol


def _svd_pinv_apply(Uo, S, Vh, T, rtol: float, atol: float):
    """``V diag(1/S) U^T T`` over the kept singular values; returns ``(D, rank)``."""
    s_max = S[:1].clamp_min(0) if S.numel() else S.new_zeros(1)
    keep = S > torch.maximum(rtol * s_max, torch.full_like(s_max, atol))
    inv = torch.where(keep, 1.0 / torch.where(keep, S, torch.ones_like(S)), torch.zeros_like(S))
    D = Vh.transpose(-1, -2) @ (inv[:, None] * (Uo.transpose(-1, -2) @ T))
    return D, int(keep.sum())


def _finish_dense(At, T, D, bias, rank, method, exact, realized=None):
    dW, db = _split(D, bias)
    realized = At @ D if realized is None else realized
    return CouplingSolution(realized=realized, rank=rank, method=method, exact=exact, dW=dW,
                            db=db, finite=all_finite(D), bias=bias)


def solve_svd(A, T, bias, cfg: SolverConfig) -> CouplingSolution:
    At = with_ones(A, bias)
    rtol = _default_rtol(At.shape, At.dtype, cfg.rtol, cfg.atol)
    U, S, Vh = torch.linalg.svd(At, full_matrices=False)
    D, rank = _svd_pinv_apply(U, S, Vh, T, rtol, cfg.atol)
    return _finish_dense(At, T, D, bias, rank, "svd", rank == A.shape[0])


def solve_qr(A, T, bias, cfg: SolverConfig) -> CouplingSolution:
    At = with_ones(A, bias)
    if At.shape[0] > At.shape[1]:
        return solve_svd(A, T, bias, cfg)
    rtol = _default_rtol(At.shape, At.dtype, cfg.rtol, cfg.atol)
    # A~^T = Q R  =>  A~ = R^T Q^T; with R = Ur S Vr^T:  A~ = Vr S (Q Ur)^T, an SVD of A~.
    Q, R = torch.linalg.qr(At.t())
    Ur, S, Vrh = torch.linalg.svd(R, full_matrices=False)
    D, rank = _svd_pinv_apply(Vrh.t(), S, (Q @ Ur).t(), T, rtol, cfg.atol)
    return _finish_dense(At, T, D, bias, rank, "qr", rank == A.shape[0])


def solve_rsvd(A, T, bias, cfg: SolverConfig) -> CouplingSolution:
    At = with_ones(A, bias)
    n, m = At.shape
    rank = min(n, m) if cfg.rsvd_rank is None else min(cfg.rsvd_rank, n, m)
    width = min(rank + cfg.rsvd_oversample, m)
    omega = torch.randn(m, width, dtype=At.dtype, device=At.device, generator=cfg.generator)
    Y = At @ omega
    for _ in range(cfg.rsvd_power_iters):
        Y = At @ (At.t() @ torch.linalg.qr(Y).Q)
    Qr = torch.linalg.qr(Y).Q
    Ub, S, Vh = torch.linalg.svd(Qr.t() @ At, full_matrices=False)
    Ub, S, Vh = Ub[:, :rank], S[:rank], Vh[:rank]
    rtol = _default_rtol(At.shape, At.dtype, cfg.rtol, cfg.atol)
    D, used = _svd_pinv_apply(Qr @ Ub, S, Vh, T, rtol, cfg.atol)
    return _finish_dense(At, T, D, bias, used, "rsvd", used == n)


def solve_transpose(A, T, bias, cfg: SolverConfig) -> CouplingSolution:
    dW = T.t() @ A
    db = T.sum(dim=0) if bias else None
    realized = A @ dW.t()
    if bias:
        realized = realized + db
    return CouplingSolution(realized=realized, rank=0, method="transpose", exact=False, dW=dW,
                            db=db, finite=all_finite(dW), bias=bias)


def solve_tall(A, T, bias, cfg: SolverConfig) -> CouplingSolution:
    """``n > M + 1``: least squares through the (M+1) x (M+1) Gram ``A~^T A~`` (not exact)."""
    At = with_ones(A, bias)
    rtol = max(cfg.rtol, gram_rtol_floor(A.dtype))
    G = (At.t() @ At).to(torch.float64)
    sol = gram_solve(G, (At.t() @ T).to(torch.float64), "eigh", rtol, cfg.atol, ops=cfg.ops)
    D = sol.Z.to(A.dtype)
    return _finish_dense(At, T, D, bias, int(sol.rank), "tall-eigh", False)


#: relative residual above which a float64 Gram solve is refined (see refine_gram_solution)
REFINE_RTOL = 1e-10


def refine_gram_solution(At64, K64, T64, Z64, ops: OpTable, max_steps: int = 3):
    """Corrected semi-normal equations for the minimum-norm ``A~ D = T`` (Bjorck, Numerical
    Methods for Least Squares Problems, §6.6), float64.

    The Gram route forms ``D = A~^T Z`` with ``Z = K^-1 T`` as large as ``|T| / s_min^2``, and
    the rounding of that product alone moves ``A~ D`` by ``eps * cond(A~)^2 |T|``: 1e-4 on a
    batch whose ``A~`` has condition 1e6. Refining ``Z`` cannot win that back; refining ``D``
    can: the residual ``R = T - A~ D`` is accurate to ``eps * cond(A~)``, and each correction
    ``D += A~^T K^-1 R`` carries the same relative error as the first solve, but of the much
    smaller ``R``. Steps stop once the residual is under ``REFINE_RTOL`` or stops shrinking.
    Returns ``(D, realized, residual)``.
    """
    D = At64.t() @ Z64
    realized = At64 @ D
    err = relative_residual(realized, T64)
    for _ in range(max_steps):
        if not err > REFINE_RTOL:  # also stops on NaN
            break
        correction = gram_solve(K64, T64 - realized, "cholesky", ops=ops).Z
        candidate = D + At64.t() @ correction
        candidate_realized = At64 @ candidate
        candidate_err = relative_residual(candidate_realized, T64)
        if not candidate_err < err:
            break
        D, realized, err = candidate, candidate_realized, candidate_err
    return D, realized, err


def _floor_set_the_cut(K64, cfg: SolverConfig, rtol: float) -> bool:
    """Whether the Gram's resolution floor ``rtol``, rather than the caller's ``rtol`` or
    ``atol``, set the truncation threshold ``max(rtol s_max, atol)``."""
    if not cfg.rtol < rtol:
        return False
    return rtol * float(largest_eigenvalue(K64).max().clamp_min(0)) ** 0.5 > cfg.atol


def _truncated_last_step(cfg: SolverConfig, key, n: int) -> bool:
    """Whether this coupling's last solve, on a batch of the same size, kept fewer than ``n``
    directions (a short last batch of an epoch says nothing about the next full one)."""
    last = cfg.memo.get(("rank", key))
    return last is not None and last[0] == n and last[1] < n


def _gram_method(cfg: SolverConfig, rtol: float, n: int, max_rank: int | None,
                 key=None) -> tuple[str, str]:
    """``(method, route)`` of a Gram-space solve (not ``damped``): the configured solver,
    or ``eigh`` where its factorization is known to fail or its threshold is too fine."""
    method = cfg.solver
    if method == "cholesky" and max_rank is not None and max_rank < n:
        # A linear block's rank is known in advance: skip the doomed factorization.
        return "eigh", "cholesky->eigh (rank known)"
    if method == "projector" and rtol < PROJECTOR_MIN_RTOL:
        return "eigh", "projector->eigh (rtol below its band)"
    if method == "cholesky" and key is not None and _truncated_last_step(cfg, key, n):
        # Truncated last step: on real data the next batch almost always is too, and a failed
        # Cholesky costs as much as a third of the eigen-solve that follows it.
        return "eigh", "cholesky->eigh (truncated last step)"
    return method, method


def solve_gram(A, T, bias, cfg: SolverConfig, max_rank: int | None, key=None,
               T_factors=None) -> CouplingSolution:
    n = A.shape[0]
    method = cfg.solver
    rtol = max(cfg.rtol, gram_rtol_floor(A.dtype))
    if cfg.gram_reduce is None:
        K = cfg.ops.gram(A, bias)
    else:  # each shard holds some columns of A: K = sum over shards of A_r A_r^T, + 1 once
        K = cfg.gram_reduce(cfg.ops.gram(A, False))
        if bias:
            K = K + 1
    K64, T64 = K.to(torch.float64), T.to(torch.float64)
    damping = 0.0
    route = method
    if method == "damped":
        damping = cfg.pinv_damping
        if cfg.pinv_damping_relative:
            damping *= float(torch.linalg.eigvalsh(K64)[-1])
    else:
        method, route = _gram_method(cfg, rtol, n, max_rank, key)
    # The eigen-solve stays in float64 even for float32 data: in float32 its error is about
    # eps32 ||K||, and on the paper's MNIST workload that moved the update by 2e-2 (float64:
    # 5e-5 from the all-float64 step).
    # T = e R with e (n x k), k << h: solve for e alone, Z = K^+ e R (see _factored_solution)
    rhs = T64 if T_factors is None else T_factors[0].to(torch.float64)
    sol = gram_solve(K64, rhs, method, rtol, cfg.atol, damping, ops=cfg.ops)
    status = int(sol.status)
    if status == FELL_BACK:
        route = f"{cfg.solver}->eigh"
    rank = int(sol.rank)
    if key is not None:
        cfg.memo[("rank", key)] = (n, rank)
    if (max_rank is None and rank < n and method != "damped" and cfg.gram_reduce is None
            and status != NONFINITE and _floor_set_the_cut(K64, cfg, rtol)):
        # The Gram truncated singular values of A~ that it cannot resolve but the caller asked
        # to keep (rtol and atol below the floor): the QR of A~ resolves them, at the cost of a
        # factorization of A~ itself, paid only by such couplings. A coupling whose rank is known
        # in advance (a linear block, rank deficient by construction) keeps the Gram's cut: its
        # smallest kept directions come from near-constant input features, and resolving them
        # every step costs a QR and, on the digits demo, trains worse (0.101 vs 0.078).
        escalated = solve_qr(A, T, bias, cfg)
        escalated.method = f"{cfg.solver}->qr"
        escalated.residual = relative_residual(escalated.realized, T)
        return escalated
    exact = rank == n and method != "damped"
    if T_factors is not None:
        factored = _factored_solution(A, K, T, T_factors, sol.Z.to(A.dtype), bias, rank, route,
                                      exact, status != NONFINITE)
        if not (exact and A.dtype == torch.float64 and cfg.gram_reduce is None
                and factored.residual > REFINE_RTOL):
            return factored
        # refinement works on the whole target
        return solve_gram(A, T, bias, cfg, max_rank, key)
    Z = sol.Z.to(A.dtype)
    realized = K @ Z  # in the working dtype: only the report and the cross-term read it
    # Only float64 is refined: a float32 D = A~^T Z loses up to the order of eps32 cond(A~)^2
    # (a bound of ~7e-3 near the floor), which only float64 copies of A~ would win back. The
    # residual reported here is that of K Z and does not see this rounding of D. A sharded A~
    # is not refined.
    residual = relative_residual(realized, T)
    if (exact and A.dtype == torch.float64 and status != NONFINITE and cfg.gram_reduce is None
            and residual > REFINE_RTOL):
        At = with_ones(A, bias)
        D, realized, residual = refine_gram_solution(At, K64, T64, sol.Z, cfg.ops)
        refined = _finish_dense(At, T, D, bias, rank, f"{route}+refined", True, realized)
        refined.residual = residual
        return refined
    return CouplingSolution(realized=realized, rank=rank, method=route, exact=exact,
                            Z=Z, finite=status != NONFINITE, bias=bias, residual=residual)


def _tall(n: int, columns: int, bias: bool, cfg: SolverConfig) -> bool:
    """Whether ``A~`` (``columns`` of ``A``, + 1 with bias) is taller than wide. A sharded ``A``
    (``cfg.gram_reduce`` set) holds only some of its columns: its owner keeps ``n <= M + 1``
    (``DistributedExactGN``), so it is never tall."""
    return cfg.gram_reduce is None and n > columns + (1 if bias else 0)


def _explicit(sol: CouplingSolution, A, cfg: SolverConfig) -> CouplingSolution:
    """``sol`` with ``dW``, ``db`` formed: the sweep keeps no ``A`` of a folded coupling to
    form them from ``Z`` later."""
    if sol.Z is not None:
        sol.dW, sol.db = sol.parameter_update(A, cfg.ops)
        sol.Z = None
    return sol


def solve_linear_coupling(u, C, T, bias: bool, cfg: SolverConfig, max_rank: int | None,
                          key=None) -> CouplingSolution:
    """``pinv([u C, 1]) T`` of a linear coupling through the span of ``[u, 1]``
    (``revgn.linear_coupling``), with ``solve_gram``'s thresholds and routes; the solution
    carries the explicit ``dW = (Z^T u) C``, ``db``.

    Solvers that need ``A`` itself (``svd``, ``qr``, ``rsvd``, ``damped``, ``transpose``), a
    tall ``A~`` and an ``rtol`` finer than the Gram's floor take the generic route on
    ``A = u C``; so does a float64 solve that would need refinement, unless ``C`` is sharded.

    ``C`` may be one shard ``C_r`` of a ``C`` split by columns (``cfg.gram_reduce`` set): ``u``
    and ``T`` are whole on every shard, ``C C^T`` is summed over the shards once
    (``bottleneck_gram``), the small solve is the same everywhere, and each shard's update is
    its own columns, ``dW_r = (Z^T u) C_r``.
    """
    n = u.shape[0]
    generic = (cfg.solver not in LINEAR_SOLVERS or _tall(n, C.shape[1], bias, cfg)
               or 0.0 < cfg.rtol < gram_rtol_floor(u.dtype))
    if generic:
        A = u @ C
        return _explicit(solve_coupling(A, T, bias, cfg, max_rank, key), A, cfg)
    rtol = max(cfg.rtol, gram_rtol_floor(u.dtype))
    method, route = _gram_method(cfg, rtol, n, max_rank)
    route = "linear " + route
    work = LinearSolve(u, T, bias, bottleneck_gram(C, bias, cfg.memo, cfg.gram_reduce))
    Z64, realized64, rank, status = work.solve(method, rtol, cfg.atol, cfg.ops)
    if status == FELL_BACK:
        route = f"linear {cfg.solver}->eigh"
    exact = rank == n
    residual = relative_residual(realized64, T.to(torch.float64))
    if (exact and u.dtype == torch.float64 and status != NONFINITE and cfg.gram_reduce is None
            and residual > REFINE_RTOL):
        A = u @ C
        return _explicit(solve_coupling(A, T, bias, cfg, max_rank, key), A, cfg)
    Z = Z64.to(u.dtype)
    dW, db = linear_update(u, C, Z, bias)
    return CouplingSolution(realized=realized64.to(u.dtype), rank=rank, method=route, exact=exact,
                            dW=dW, db=db, finite=status != NONFINITE, bias=bias,
                            residual=residual)


def _factored_solution(A, K, T, T_factors, Ze, bias, rank, route, exact, finite):
    """The Gram solution of a factored target ``T = e R`` (``e`` n x k, ``R`` k x h) from
    ``Ze = K^+ e``: ``Z = Ze R``, so

        dW = Z^T A = R^T (Ze^T A),    db = (1^T Ze) R,    realized = K Z = (K Ze) R,

    ``k n M + h k M`` multiply-adds for the update instead of ``h n M``. The top block's F
    target is such a ``T``: ``E = e U^T`` has rank ``k`` (the classes)."""
    e, R = T_factors
    dW = R.t() @ (Ze.t() @ A)
    db = Ze.sum(dim=0) @ R if bias else None
    realized_left = K @ Ze
    realized = realized_left @ R
    return CouplingSolution(realized=realized, rank=rank, method=f"{route} (rank-{e.shape[1]} target)",
                            exact=exact, dW=dW, db=db, finite=finite, bias=bias,
                            residual=relative_residual(realized, T), realized_left=realized_left)


def solve_coupling(A, T, bias: bool, cfg: SolverConfig, max_rank: int | None = None,
                   key=None, T_factors=None) -> CouplingSolution:
    """Dispatch one coupling's ``pinv(A~) T`` to the configured solver; the solution carries
    its ``residual``. ``key`` names the coupling across steps (``SolverConfig.memo``);
    ``T_factors = (e, R)`` with ``T = e R`` lets the Gram route solve for ``e`` alone."""
    sol = _route(A, T, bias, cfg, max_rank, key, T_factors)
    if sol.residual is None:
        sol.residual = relative_residual(sol.realized, T)
    return sol


def _route(A, T, bias: bool, cfg: SolverConfig, max_rank: int | None, key=None,
           T_factors=None) -> CouplingSolution:
    if cfg.solver == "transpose":
        return solve_transpose(A, T, bias, cfg)
    if _tall(A.shape[0], A.shape[1], bias, cfg):
        return solve_tall(A, T, bias, cfg)
    if cfg.solver in GRAM_SOLVERS:
        if cfg.solver != "damped" and 0.0 < cfg.rtol < gram_rtol_floor(A.dtype):
            return solve_qr(A, T, bias, cfg)
        return solve_gram(A, T, bias, cfg, max_rank, key, T_factors)
    return {"svd": solve_svd, "qr": solve_qr, "rsvd": solve_rsvd}[cfg.solver](A, T, bias, cfg)

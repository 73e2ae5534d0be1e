"""The exact GN sweep back through the inverse network (DESIGN §3).

Starting from the output stream ``X_L`` and its target tangent ``E = e U^T``, every block
``l = L..1`` is inverted with its tangent and solved for the update that realizes the tangent at
its output:

1. invert G:  ``X2 = Y2 - G(Y1)``,  ``K = (s'(Y1 C_G) * (T1 C_G)) W_G^T``,  ``dX2 = T2 - K``
2. invert F:  ``X1 = Y1 - F(X2)``,  ``dX1 = T1 - (s'(X2 C_F) * (dX2 C_F)) W_F^T``
3. solve:     ``D_F = pinv(A~_F) T1``;  ``D_G = pinv(A~_G) (T2 - K')`` where ``K'`` is the push
   through G of F's realized change ``A~_F D_F`` (``K' = K`` when F realizes ``T1`` exactly)
4. carry ``(X, dX)`` to block ``l - 1``.

The sweep is a generator: a consumer may apply a block's update before the next block is
inverted (no later block reads it), so only one block's workspace is alive at a time.

The sweep reaches the couplings only through their own operations (``Coupling.forward_kept``,
``invert_with_tangent``, ``push``) and the model's (``linear_folds``, ``gram_reduce`` in the
solver config): a ``RevMLP`` computes them whole, a ``revgn.distributed.ShardedRevMLP`` sums each
rank's columns with an all-reduce. The same sweep runs for both.

A linear coupling with a bottleneck (the paper's first block) is folded: every product through
``A = u C`` goes through the ``h x h`` ``C W^T`` (``Coupling.folded``), ``A`` is never formed,
and its solve runs in the span of ``[u, 1]`` (``revgn.linear_coupling``).

Two ends of the sweep need less than a full inversion. The top block's inputs and
pre-activations are what the forward pass just computed (``forward_for_sweep`` keeps that one
block's workspace), so only its tangents are pushed. The bottom block's input tangent is never
used, so its F coupling needs only ``A_F``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from revgn.solvers import (CouplingSolution, SolverConfig, relative_residual, solve_coupling,
                           solve_linear_coupling)

TANGENT_MODES = ("analytic", "autodiff")


@dataclass
class CouplingReport:
    """How well one coupling's update realizes its target: ``||A~ D - T|| / ||T||``."""
    block: int
    coupling: str
    residual: float
    rank: int
    rows: int
    method: str
    exact: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class BlockStep:
    """One block's solves, with what is needed to apply them."""
    index: int
    A_F: torch.Tensor | None  # None for a folded coupling: its solution carries dW, db
    A_G: torch.Tensor | None
    F: CouplingSolution
    G: CouplingSolution
    reports: tuple[CouplingReport, CouplingReport]
    Y1: torch.Tensor  # G's input (F's input is X2)
    # the block's input stream and its tangent, carried to the block below (the bottom block
    # leaves X1 and dX1 unset: nothing reads them)
    X1: torch.Tensor | None
    X2: torch.Tensor
    dX1: torch.Tensor | None
    dX2: torch.Tensor
    #: relative error of the rebuilt input against an anchor, when the block has one
    drift: float | None = None


@dataclass
class TopBlock:
    """What the forward pass leaves for the sweep: the last block's workspace (its inputs,
    pre-activations and activations; None for a folded coupling) and ``folds``, the
    ``C W^T`` of every folded coupling (``ReversibleStack.linear_folds``)."""
    X1: torch.Tensor
    X2: torch.Tensor
    Y1: torch.Tensor
    P_F: torch.Tensor | None
    A_F: torch.Tensor | None
    P_G: torch.Tensor | None
    A_G: torch.Tensor | None
    folds: dict | None = None


def forward_for_sweep(model, x, anchor_every: int | None = None):
    """``(X_L, anchors, top)``: the forward pass, keeping the stream at the anchors
    (``ReversibleStack.stream_with_anchors``), the last block's workspace and the folds
    (``TopBlock``)."""
    folds = model.linear_folds()
    X, anchors = model.stream_with_anchors(x, anchor_every, blocks=model.depth - 1, folds=folds)
    x1, x2 = model.split(X)
    block = model.blocks[-1]
    P_F, A_F, out_F = block.F.forward_kept(x2, folds.get(block.F))
    y1 = x1 + out_F
    P_G, A_G, out_G = block.G.forward_kept(y1, folds.get(block.G))
    y2 = x2 + out_G
    return torch.cat([y1, y2], dim=1), anchors, TopBlock(x1, x2, y1, P_F, A_F, P_G, A_G, folds)


def _pull_back_top(block, top: TopBlock, T1, T2, bottom: bool, folds: dict, ops,
                   T1_push=None):
    """Tangents only: the primal inputs and activations come from the forward pass.
    ``T1_push = (e, R C_G)`` pushes ``T1 = e R`` through G as ``e (R C_G)``."""
    G, F = block.G, block.F
    if T1_push is not None:
        K = G.push(top.P_G, T1_push[0], ops, C=T1_push[1])
    else:
        K = G.push(top.P_G, T1, ops, folds.get(G))
    dX2 = T2 - K
    dX1 = None
    if not bottom:
        dX1 = T1 - F.push(top.P_F, dX2, ops, folds.get(F))
    return top.X1, top.X2, dX1, dX2, top.A_F, top.A_G, K


def _pull_back_analytic(block, Y1, Y2, T1, T2, bottom: bool, folds: dict, ops):
    G, F = block.G, block.F
    X2, dX2, A_G, K = G.invert_with_tangent(Y1, T1, Y2, T2, ops, folds.get(G))
    if bottom:
        A_F = F.activations(X2) if F not in folds else None
        return None, X2, None, dX2, A_F, A_G, K
    X1, dX1, A_F, _ = F.invert_with_tangent(X2, dX2, Y1, T1, ops, folds.get(F))
    return X1, X2, dX1, dX2, A_F, A_G, K


def _pull_back_autodiff(block, Y1, Y2, T1, T2):
    # Forward-mode AD through the inverse block: the authors' route, kept as a reference.
    (X1, X2), (dX1, dX2) = torch.func.jvp(block.inverse, (Y1, Y2), (T1, T2))
    return X1, X2, dX1, dX2, block.F.activations(X2), block.G.activations(Y1), None


def _cross_term(block, Y1, realized_F, K, exact_F: bool, tangent_mode: str, folds: dict,
                ops, P_G=None, realized_push=None):
    """``K'``: how F's realized change of ``Y1`` moves ``Y2`` through G. ``P_G = Y1 C_G`` when
    the forward kept it (the top block), else it is recomputed; ``realized_push = (r, R C_G)``
    when the realized change is ``r R`` (a factored target)."""
    if tangent_mode == "autodiff":
        return torch.func.jvp(block.G, (Y1,), (realized_F,))[1]
    if exact_F:
        return K
    G = block.G
    if realized_push is not None and P_G is not None:
        return G.push(P_G, realized_push[0], ops, C=realized_push[1])
    fold = folds.get(G)
    if fold is None and P_G is None:
        P_G = G.preactivation(Y1)
    return G.push(P_G, realized_F, ops, fold)


def _solve(index, name, coupling, u, A, T, cfg: SolverConfig, folds: dict,
           T_factors=None) -> CouplingSolution:
    bias, key = coupling.b is not None, (index, name)
    if coupling in folds:
        return solve_linear_coupling(u, coupling.C, T, bias, cfg, coupling.max_rank(), key)
    return solve_coupling(A, T, bias, cfg, coupling.max_rank(), key, T_factors)


def block_gn_step(index, block, Y1, Y2, T1, T2, cfg: SolverConfig, tangent_mode="analytic",
                  top: TopBlock | None = None, folds: dict | None = None, T1_factors=None):
    """Invert one block with its tangent and solve both couplings (steps 1-4 above).

    ``top`` is the forward's workspace when this is the last block; block 0 skips what only
    the block below would read. ``folds`` (``model.linear_folds()``) marks the folded couplings;
    the autodiff tangent mode folds nothing. ``T1_factors = (e, R)`` with ``T1 = e R`` and ``e``
    thin (the top block's ``E = e U^T``) make the products through ``T1`` and the F update
    rank-``k`` ones.
    """
    bottom = index == 0
    folds = {} if tangent_mode == "autodiff" else (folds or {})
    F, G = block.F, block.G
    RC_G = None
    if T1_factors is not None and (top is None or tangent_mode == "autodiff" or F in folds
                                   or G in folds):
        T1_factors = None  # only the top block's kept workspace pushes factors
    if T1_factors is not None:
        RC_G = T1_factors[1] @ G.C if G.C is not None else T1_factors[1]
    if tangent_mode == "autodiff":
        X1, X2, dX1, dX2, A_F, A_G, K = _pull_back_autodiff(block, Y1, Y2, T1, T2)
    elif top is not None:
        X1, X2, dX1, dX2, A_F, A_G, K = _pull_back_top(
            block, top, T1, T2, bottom, folds, cfg.ops,
            (T1_factors[0], RC_G) if T1_factors is not None else None)
    else:
        X1, X2, dX1, dX2, A_F, A_G, K = _pull_back_analytic(block, Y1, Y2, T1, T2, bottom,
                                                            folds, cfg.ops)
    sol_F = _solve(index, "F", F, X2, A_F, T1, cfg, folds, T1_factors)
    realized_push = None
    if sol_F.realized_left is not None and RC_G is not None:
        realized_push = (sol_F.realized_left, RC_G)
    K_cross = _cross_term(block, Y1, sol_F.realized, K, sol_F.exact, tangent_mode, folds,
                          cfg.ops, top.P_G if top is not None else None, realized_push)
    target_G = T2 - K_cross
    sol_G = _solve(index, "G", G, Y1, A_G, target_G, cfg, folds)
    n = Y1.shape[0]
    reports = (
        CouplingReport(index, "F", sol_F.residual, sol_F.rank, n,
                       sol_F.method, sol_F.exact),
        CouplingReport(index, "G", sol_G.residual, sol_G.rank, n,
                       sol_G.method, sol_G.exact),
    )
    return BlockStep(index, A_F, A_G, sol_F, sol_G, reports, Y1, X1, X2, dX1, dX2)


def gn_sweep(model, X_L: torch.Tensor, E: torch.Tensor, cfg: SolverConfig,
             tangent_mode: str = "analytic", anchors: dict | None = None,
             top: TopBlock | None = None, e: torch.Tensor | None = None):
    """Yield a ``BlockStep`` per block, last block first. Drop each one before asking for the
    next to keep one block's workspace alive.

    ``anchors`` (from ``ReversibleStack.stream_with_anchors``) maps a block index to its true
    input: the rebuilt input is compared with it (``BlockStep.drift``) and replaced by it.
    ``top`` (from ``forward_for_sweep``) spares the last block's inversion and carries the folds
    the forward used; without it linear couplings are folded here. ``e`` (n x k), with
    ``E = e U^T``, lets the top block work with ``T1 = e U_1^T`` in factored form when ``k < h``.
    """
    Y1, Y2 = model.split(X_L)
    T1, T2 = model.split(E)
    anchors = anchors or {}
    if tangent_mode == "autodiff":
        folds = {}
    else:
        folds = top.folds if top is not None and top.folds is not None else model.linear_folds()
    T1_factors = None
    if e is not None and e.shape[1] < model.half:
        T1_factors = (e, model.U[:model.half].t())
    for index in reversed(range(model.depth)):
        if top is not None:
            Y1 = top.Y1
        step = block_gn_step(index, model.blocks[index], Y1, Y2, T1, T2, cfg, tangent_mode, top,
                             folds, T1_factors if top is not None else None)
        top = None
        if index in anchors:
            A1, A2 = anchors[index]
            step.drift = relative_residual(step.X2, A2)
            step.X1, step.X2 = A1, A2
        Y1, Y2, T1, T2 = step.X1, step.X2, step.dX1, step.dX2
        yield step
        del step

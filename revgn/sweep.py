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

Two ends of the sweep need less than a full inversion. The top block's inputs and
pre-activations are what the forward pass just computed (``forward_for_sweep`` keeps that one
block's workspace), so only its tangents are pushed. The bottom block's input tangent is never
used, so its F coupling needs only ``A_F``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from revgn.ops import coupling_inverse_with_tangent, coupling_tangent
from revgn.solvers import CouplingSolution, SolverConfig, relative_residual, solve_coupling

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
    A_F: torch.Tensor
    A_G: torch.Tensor
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
    """The last block's workspace from the forward pass: its inputs and pre-activations."""
    X1: torch.Tensor
    X2: torch.Tensor
    Y1: torch.Tensor
    P_F: torch.Tensor
    A_F: torch.Tensor
    P_G: torch.Tensor
    A_G: torch.Tensor


def forward_for_sweep(model, x, anchor_every: int | None = None):
    """``(X_L, anchors, top)``: the forward pass, keeping the stream at the anchors
    (``RevMLP.stream_with_anchors``) and the last block's workspace (``TopBlock``)."""
    X, anchors = model.stream_with_anchors(x, anchor_every, blocks=model.depth - 1)
    x1, x2 = model.split(X)
    block = model.blocks[-1]
    F, G = block.F, block.G
    P_F = F.preactivation(x2)
    A_F = F._act.fn(P_F)
    y1 = x1 + (torch.addmm(F.b, A_F, F.W.t()) if F.b is not None else A_F @ F.W.t())
    P_G = G.preactivation(y1)
    A_G = G._act.fn(P_G)
    y2 = x2 + (torch.addmm(G.b, A_G, G.W.t()) if G.b is not None else A_G @ G.W.t())
    return torch.cat([y1, y2], dim=1), anchors, TopBlock(x1, x2, y1, P_F, A_F, P_G, A_G)


def _pull_back_top(block, top: TopBlock, T1, T2, bottom: bool, backend):
    """Tangents only: the primal inputs and activations come from the forward pass."""
    G, F = block.G, block.F
    K = coupling_tangent(top.P_G, T1, G.C, G.W, G.activation, backend=backend)
    dX2 = T2 - K
    dX1 = None
    if not bottom:
        dX1 = T1 - coupling_tangent(top.P_F, dX2, F.C, F.W, F.activation, backend=backend)
    return top.X1, top.X2, dX1, dX2, top.A_F, top.A_G, K


def _pull_back_analytic(block, Y1, Y2, T1, T2, bottom: bool, backend):
    G, F = block.G, block.F
    X2, dX2, A_G, K = coupling_inverse_with_tangent(Y1, T1, Y2, T2, G.C, G.W, G.b, G.activation,
                                                    backend=backend)
    if bottom:
        return None, X2, None, dX2, F.activations(X2), A_G, K
    X1, dX1, A_F, _ = coupling_inverse_with_tangent(X2, dX2, Y1, T1, F.C, F.W, F.b, F.activation,
                                                    backend=backend)
    return X1, X2, dX1, dX2, A_F, A_G, K


def _pull_back_autodiff(block, Y1, Y2, T1, T2):
    # Forward-mode AD through the inverse block: the authors' route, kept as a reference.
    (X1, X2), (dX1, dX2) = torch.func.jvp(block.inverse, (Y1, Y2), (T1, T2))
    return X1, X2, dX1, dX2, block.F.activations(X2), block.G.activations(Y1), None


def _cross_term(block, Y1, realized_F, K, exact_F: bool, tangent_mode: str):
    """``K'``: how F's realized change of ``Y1`` moves ``Y2`` through G."""
    if tangent_mode == "autodiff":
        return torch.func.jvp(block.G, (Y1,), (realized_F,))[1]
    if exact_F:
        return K
    G = block.G
    return coupling_tangent(G.preactivation(Y1), realized_F, G.C, G.W, G.activation)


def block_gn_step(index, block, Y1, Y2, T1, T2, cfg: SolverConfig, tangent_mode="analytic",
                  top: TopBlock | None = None):
    """Invert one block with its tangent and solve both couplings (steps 1-4 above).

    ``top`` is the forward's workspace when this is the last block; block 0 skips what only
    the block below would read.
    """
    bottom = index == 0
    if tangent_mode == "autodiff":
        X1, X2, dX1, dX2, A_F, A_G, K = _pull_back_autodiff(block, Y1, Y2, T1, T2)
    elif top is not None:
        X1, X2, dX1, dX2, A_F, A_G, K = _pull_back_top(block, top, T1, T2, bottom, cfg.backend)
    else:
        X1, X2, dX1, dX2, A_F, A_G, K = _pull_back_analytic(block, Y1, Y2, T1, T2, bottom,
                                                            cfg.backend)
    F, G = block.F, block.G
    sol_F = solve_coupling(A_F, T1, F.b is not None, cfg, F.max_rank())
    K_cross = _cross_term(block, Y1, sol_F.realized, K, sol_F.exact, tangent_mode)
    target_G = T2 - K_cross
    sol_G = solve_coupling(A_G, target_G, G.b is not None, cfg, G.max_rank())
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
             top: TopBlock | None = None):
    """Yield a ``BlockStep`` per block, last block first. Drop each one before asking for the
    next to keep one block's workspace alive.

    ``anchors`` (from ``RevMLP.stream_with_anchors``) maps a block index to its true input: the
    rebuilt input is compared with it (``BlockStep.drift``) and replaced by it. ``top`` (from
    ``forward_for_sweep``) spares the last block's inversion.
    """
    Y1, Y2 = model.split(X_L)
    T1, T2 = model.split(E)
    anchors = anchors or {}
    for index in reversed(range(model.depth)):
        if top is not None:
            Y1 = top.Y1
        step = block_gn_step(index, model.blocks[index], Y1, Y2, T1, T2, cfg, tangent_mode, top)
        top = None
        if index in anchors:
            A1, A2 = anchors[index]
            step.drift = relative_residual(step.X2, A2)
            step.X1, step.X2 = A1, A2
        Y1, Y2, T1, T2 = step.X1, step.X2, step.dX1, step.dX2
        yield step
        del step

"""Tensor-parallel exact GN over the bottleneck ``M`` on ``torch.distributed`` (DESIGN §2-§3).

Rank ``r`` of a group of ``w`` holds a contiguous slice of the columns of every coupling's ``C``
and ``W`` (``C_r``, ``W_r``, ``M_r`` columns; the first ``M mod w`` ranks hold one more) and the
replicated ``b`` and ``U``. With ``A_r = s(u C_r)`` (n x M_r), a coupling is a sum over ranks:

    F(u) = s(u C) W^T + b = sum_r A_r W_r^T + b

so every product that ends in ``h`` columns is a partial sum, completed by one all-reduce:

- forward: ``sum_r A_r W_r^T``, an (n, h) all-reduce per coupling; ``b`` is added once, after it;
- sweep, inversion with tangent (DESIGN §3 steps 1-2): ``x = y - b - sum_r A_r W_r^T`` and
  ``k = sum_r (s'(u C_r) * (du C_r)) W_r^T``, primal and tangent stacked into one (2n, h)
  all-reduce. The top block's primal is the forward's (only its tangents are reduced, (n, h)
  each) and the bottom block's F needs no inversion at all (only its local ``A_r``);
- solve (DESIGN §3.1): ``K = sum_r A_r A_r^T + 1 1^T``, an all-reduce of the lower triangle
  of the symmetric (n, n) partials (``n (n + 1) / 2`` elements); ``Z = K^+ T`` is
  solved redundantly on every rank from identical inputs, so every rank holds the same ``Z``;
  each rank updates its own slice, ``W_r += alpha Z^T A_r``, and ``b += alpha 1^T Z``
  identically everywhere: the update itself needs no communication;
- the F-to-G cross-term ``K' = (s'(Y1 C_G) * ((A~_F D_F) C_G)) W_G^T``, only when F's solve is
  inexact: one more (n, h) all-reduce.

``A_r`` never leaves its rank. The sharded step equals ``ExactGN``'s on the same batch, with
the Gram solvers (``cholesky``, ``eigh``, ``damped``) and ``n <= M + 1``.

Launch with ``torchrun --nproc_per_node=N -m revgn.distributed`` (gloo on CPU, NCCL on GPU);
docs/DISTRIBUTED.md derives the communication volume.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from revgn.backend import check_backend_name
from revgn.exact_gn import GNStepResult, NonFiniteStepError
from revgn.losses import CURVATURES, LOSSES, batch_loss, output_step
from revgn.model import ReversibleStack, RevMLP
from revgn.ops import bind
from revgn.solvers import GRAM_SOLVERS, SolverConfig, gram_rtol_floor, solve_gram
from revgn.sweep import CouplingReport, TopBlock, relative_residual
from revgn.validation import (all_finite, check_choice, check_features, check_nonnegative,
                              check_targets)

__all__ = ["ShardedCoupling", "ShardedRevMLP", "DistributedExactGN", "shard_model",
           "shard_bounds", "init_process_group"]


def shard_bounds(width: int, world: int, rank: int) -> tuple[int, int]:
    """Columns ``lo:hi`` of ``rank``: contiguous, sizes differing by at most one (the first
    ``width mod world`` ranks hold one more), as ``torch.tensor_split``."""
    base, extra = divmod(width, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class ShardedCoupling(nn.Module):
    """Columns ``lo:hi`` of one ``Coupling``: the partial output ``A_r W_r^T``,
    ``A_r = s(u C_r)``. ``b`` is replicated and added once, after the sum over ranks."""

    def __init__(self, coupling, lo: int, hi: int):
        super().__init__()
        W = coupling.W.detach()
        # Without a bottleneck F(u) = s(u) W^T: columns lo:hi of the identity select those of
        # u, so the ops (which take a C) serve both layouts.
        C = coupling.C if coupling.C is not None else torch.eye(
            coupling.width, dtype=W.dtype, device=W.device)
        self.register_buffer("C", C[:, lo:hi].clone())
        self.W = nn.Parameter(W[:, lo:hi].clone())
        self.b = nn.Parameter(coupling.b.detach().clone()) if coupling.b is not None else None
        self.activation = coupling.activation
        self._act = coupling._act
        self.lo, self.hi, self.full_width = lo, hi, coupling.width
        # the rank bound is a property of the whole A~, not of a slice
        self._max_rank = coupling.max_rank()

    def max_rank(self) -> int | None:
        return self._max_rank

    def preactivation(self, u):
        return u @ self.C

    def activations(self, u):
        """``A_r = s(u C_r)`` (n x M_r): this rank's columns of ``A``."""
        return self._act.fn(self.preactivation(u))

    def partial(self, u):
        """``A_r W_r^T`` (n x h): this rank's term of ``F(u) - b``."""
        return self.activations(u) @ self.W.t()


class ShardedBlock(nn.Module):
    def __init__(self, block, lo: int, hi: int):
        super().__init__()
        self.F = ShardedCoupling(block.F, lo, hi)
        self.G = ShardedCoupling(block.G, lo, hi)


class ShardedRevMLP(ReversibleStack):
    """A ``RevMLP`` split over the ranks of ``group`` along every coupling's bottleneck.

    Built from a full model that every rank constructed identically (same seed); see
    ``shard_model``. ``forward`` and ``stream`` are not differentiable across ranks (their
    all-reduces are outside autograd): the GN step needs no autograd.
    """

    def __init__(self, model: RevMLP, group=None):
        super().__init__()
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        if model.bottleneck < self.world:
            raise ValueError(f"bottleneck width {model.bottleneck} is smaller than the group "
                             f"({self.world} ranks): every rank needs at least one column")
        self.in_features, self.num_classes = model.in_features, model.num_classes
        self.half, self.bottleneck = model.half, model.bottleneck
        self.register_buffer("U", model.U.detach().clone())
        lo, hi = shard_bounds(model.bottleneck, self.world, self.rank)
        self.blocks = nn.ModuleList(ShardedBlock(block, lo, hi) for block in model.blocks)
        #: elements all-reduced so far by ``reduce`` (the payload, not the wire traffic)
        self.reduced_elements = 0

    def couplings(self):
        """``(block index, name, sharded coupling)`` in forward order, as ``RevMLP.couplings``."""
        for l, block in enumerate(self.blocks):
            yield l, "F", block.F
            yield l, "G", block.G

    def reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the group, in place; returns it."""
        self.reduced_elements += t.numel()
        dist.all_reduce(t, group=self.group)
        return t

    def reduce_symmetric(self, K: torch.Tensor) -> torch.Tensor:
        """Sum a symmetric (n, n) ``K`` over the group, sending its lower triangle only
        (``n (n + 1) / 2`` elements, about half); the result is exactly symmetric."""
        n = K.shape[0]
        rows, cols = torch.tril_indices(n, n, device=K.device)
        packed = self.reduce(K[rows, cols])
        out = torch.empty_like(K)
        out[rows, cols] = packed
        out[cols, rows] = packed
        return out

    def coupling_output(self, c: ShardedCoupling, u):
        """``F(u) = sum_r A_r W_r^T + b``: one (n, h) all-reduce."""
        return self._complete(c.partial(u), c)

    def _complete(self, partial, c: ShardedCoupling):
        """``sum_r partial_r + b``: ``b`` is added once, after the sum."""
        out = self.reduce(partial)
        return out.add_(c.b) if c.b is not None else out

    @torch.no_grad()
    def stream(self, x) -> torch.Tensor:
        """The output stream ``X_L`` (n x d), identical on every rank."""
        return self.forward_for_sweep(x)[0]

    @torch.no_grad()
    def forward(self, x) -> torch.Tensor:
        return self.stream(x) @ self.U

    @torch.no_grad()
    def forward_for_sweep(self, x):
        """``(X_L, top)``: the stream and the last block's local workspace (its inputs and
        this rank's pre-activations and ``A_r``), so that the sweep need not invert it."""
        x = check_features(x, self.in_features, self.U.dtype, self.U.device)
        x1, x2 = x[:, :self.half], x[:, self.half:]
        for block in self.blocks[:-1]:
            x1 = x1 + self.coupling_output(block.F, x2)
            x2 = x2 + self.coupling_output(block.G, x1)
        F, G = self.blocks[-1].F, self.blocks[-1].G
        P_F = F.preactivation(x2)
        A_F = F._act.fn(P_F)
        y1 = x1 + self._complete(A_F @ F.W.t(), F)
        P_G = G.preactivation(y1)
        A_G = G._act.fn(P_G)
        y2 = x2 + self._complete(A_G @ G.W.t(), G)
        return torch.cat([y1, y2], dim=1), TopBlock(x1, x2, y1, P_F, A_F, P_G, A_G)

    @torch.no_grad()
    def gather_into(self, model: RevMLP) -> RevMLP:
        """Write the full ``W`` (all-gathered) and ``b`` of every coupling into ``model``, a
        ``RevMLP`` of the same shape; a collective, so every rank must call it."""
        for (_, _, full), (_, _, part) in zip(model.couplings(), self.couplings()):
            full.W.copy_(self._gather_columns(part.W))
            if part.b is not None:
                full.b.copy_(part.b)
        return model

    def _gather_columns(self, W):
        sizes = [hi - lo for lo, hi in (shard_bounds(self.bottleneck, self.world, r)
                                        for r in range(self.world))]
        # all_gather wants equal sizes: pad every slice to the widest, trim after
        padded = W.new_zeros(W.shape[0], max(sizes))
        padded[:, :W.shape[1]] = W
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:, :s] for p, s in zip(parts, sizes)], dim=1)

    @torch.no_grad()
    def replica_spread(self) -> float:
        """Largest difference between ranks over the replicated tensors (every ``b``, ``U``):
        0 while the redundant solves agree bit for bit. A collective."""
        flat = torch.cat([self.U.flatten()] + [c.b.flatten() for _, _, c in self.couplings()
                                               if c.b is not None])
        return _spread(flat, self.group)


def _spread(values: torch.Tensor, group) -> float:
    """``max_r v - min_r v`` over the group, largest over the entries (one all-reduce)."""
    both = torch.cat([values, -values])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    n = values.numel()
    return float((both[:n] + both[n:]).max()) if n else 0.0


@torch.no_grad()
def _model_fingerprint(model: RevMLP) -> torch.Tensor:
    """Sum and sum of squares of every tensor of ``model``, in float64."""
    return torch.stack([f(t.detach().double()) for t in list(model.parameters()) +
                        list(model.buffers()) for f in (torch.sum, lambda v: v.square().sum())])


def shard_model(model: RevMLP, group=None, check: bool = True) -> ShardedRevMLP:
    """This rank's ``ShardedRevMLP`` of ``model``, which every rank of ``group`` must have built
    identically (seed every rank the same). ``check`` compares a fingerprint of the models
    across ranks (one small all-reduce) and raises when they differ."""
    if check:
        fingerprint = _model_fingerprint(model)
        # float64 sums of identical tensors; the slack covers devices that reduce differently
        if _spread(fingerprint, group) > 1e-9 * (1 + float(fingerprint.abs().max())):
            raise ValueError("the ranks hold different models: build the full RevMLP from the "
                             "same seed on every rank before sharding it")
    return ShardedRevMLP(model, group)


class DistributedExactGN(torch.optim.Optimizer):
    """``ExactGN`` on a ``ShardedRevMLP``: the same step (DESIGN §3), every rank computing its
    columns of every coupling (see the module docstring for the communication).

    Every rank must call ``step`` with the same batch. Options are ``ExactGN``'s where they
    apply: ``loss``, ``curvature``, ``damping``, ``solver`` (``cholesky``, ``eigh``,
    ``damped``), ``rtol``, ``atol``, ``pinv_damping``, ``pinv_damping_relative``,
    ``step_scaling`` (``"function"``: ``theta -= (lr / L) D``; ``"per_block"``:
    ``theta -= lr D``), ``weight_decay`` (decoupled, ``theta -= lr wd theta``), ``backend``,
    ``on_nonfinite``. The batch must satisfy ``n <= M + 1`` (the Gram route).
    """

    def __init__(self, model: ShardedRevMLP, lr: float = 1.0, loss: str = "cross_entropy",
                 curvature: str = "identity", damping: float = 0.0, solver: str = "cholesky",
                 rtol: float = 0.0, atol: float = 0.0, pinv_damping: float = 0.0,
                 pinv_damping_relative: bool = True, step_scaling: str = "function",
                 weight_decay: float = 0.0, backend: str = "auto", on_nonfinite: str = "raise"):
        if not isinstance(model, ShardedRevMLP):
            raise TypeError(f"DistributedExactGN needs a ShardedRevMLP (revgn.distributed."
                            f"shard_model); got {type(model).__name__}")
        check_choice(loss, "loss", LOSSES)
        check_choice(curvature, "curvature", CURVATURES)
        check_choice(solver, "solver", GRAM_SOLVERS)
        check_choice(step_scaling, "step_scaling", ("function", "per_block"))
        check_choice(on_nonfinite, "on_nonfinite", ("raise", "skip"))
        check_backend_name(backend)
        for name, value in (("lr", lr), ("damping", damping), ("rtol", rtol), ("atol", atol),
                            ("weight_decay", weight_decay), ("pinv_damping", pinv_damping)):
            check_nonnegative(value, name)
        if curvature != "identity" and loss != "cross_entropy":
            raise ValueError(f"curvature={curvature!r} applies to loss='cross_entropy' only")
        if curvature == "damped" and damping <= 0:
            raise ValueError("curvature='damped' needs damping > 0")
        if solver == "damped" and pinv_damping <= 0:
            raise ValueError("solver='damped' needs pinv_damping > 0")
        floor = gram_rtol_floor(model.U.dtype)
        if solver != "damped" and 0.0 < rtol < floor:
            # ExactGN would take the QR route of the whole A~, which lives on no single rank
            raise ValueError(f"rtol={rtol:g} is finer than the Gram of {model.U.dtype} "
                             f"resolves ({floor:.1e}); the sharded step solves on the Gram")
        super().__init__(model.parameters(), dict(lr=lr, weight_decay=weight_decay))
        self.model, self.loss, self.curvature, self.damping = model, loss, curvature, damping
        self.step_scaling, self.backend, self.on_nonfinite = step_scaling, backend, on_nonfinite
        self.solver_config = SolverConfig(
            solver=solver, rtol=rtol, atol=atol, pinv_damping=pinv_damping,
            pinv_damping_relative=pinv_damping_relative, ops=bind(backend, model.U.device),
            gram_reduce=model.reduce_symmetric)

    # -- the step ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, x, y) -> GNStepResult:  # noqa: D401 - signature differs from Optimizer.step
        """One GN step on the batch ``(x, y)`` (the same on every rank); returns the same
        ``GNStepResult`` on every rank.

        Each coupling's update is applied as soon as it is solved; a non-finite solution (the
        same verdict on every rank: ``Z`` is replicated) undoes the couplings already updated,
        rebuilding their ``A_r`` locally from the coupling inputs.
        """
        m = self.model
        x = check_features(x, m.in_features, m.U.dtype, m.U.device)
        y = check_targets(y, x.shape[0], self.loss, m.num_classes, m.U.dtype, m.U.device)
        n = x.shape[0]
        if n > m.bottleneck + 1:
            raise ValueError(f"batch {n} exceeds M + 1 = {m.bottleneck + 1}: the sharded step "
                             "solves on the n x n Gram; use a batch of at most M + 1")
        X, top = m.forward_for_sweep(x)
        logits = X @ m.U
        if not all_finite(logits):
            return self._nonfinite(GNStepResult(loss=float("nan")), "the model's outputs are "
                                   "not finite at these parameters", [])
        result = GNStepResult(loss=float(batch_loss(logits, y, self.loss)))
        E = output_step(logits, y, self.loss, self.curvature, self.damping,
                        self.solver_config.ops) @ m.U.t()
        applied = []
        sweep = self._sweep(X, E, top)
        del top, logits  # the sweep holds the top block's workspace until it is used
        for index, couplings, X2 in sweep:
            for name, c, u, A, sol, target in couplings:
                result.blocks.append(CouplingReport(
                    index, name, sol.residual, sol.rank, n,
                    sol.method, sol.exact))
                if not sol.finite:
                    return self._nonfinite(result, f"block {index} coupling {name} produced a "
                                           "non-finite solution", applied)
                self._apply(c, A, sol.Z, sign=1.0)
                applied.append((c, u, sol.Z))
            del couplings, A, sol  # one block's (n, M_r) workspace alive at a time
        # the bottom block rebuilds only the X2 half of the input, as in ExactGN
        result.inversion_error = relative_residual(X2, x[:, m.half:])
        result._order_blocks()
        state = self.state[self.param_groups[0]["params"][0]]
        state["step"] = state.get("step", 0) + 1
        return result

    def _sweep(self, X, E, top: TopBlock):
        """Yield ``(index, couplings, X2)`` per block, last block first; ``couplings`` holds
        ``(name, coupling, input, A_r, solution, target)`` for F and G (DESIGN §3 steps 1-4)."""
        m, cfg, reduce = self.model, self.solver_config, self.model.reduce
        Y1, Y2 = X[:, :m.half], X[:, m.half:]
        T1, T2 = E[:, :m.half], E[:, m.half:]
        for index in reversed(range(m.depth)):
            F, G = m.blocks[index].F, m.blocks[index].G
            bottom = index == 0
            P_G = None
            if top is not None:  # the forward's primal: push the tangents only
                X1, X2, A_F, A_G, P_G = top.X1, top.X2, top.A_F, top.A_G, top.P_G
                K = reduce(self._tangent(G, P_G, T1))
                dX2 = T2 - K
                dX1 = None if bottom else T1 - reduce(self._tangent(F, top.P_F, dX2))
                top = None
            else:
                X2, dX2, A_G, K = self._invert(G, Y1, T1, Y2, T2)
                if bottom:  # nothing reads the input tangent of the bottom F: A_F alone
                    X1, dX1, A_F = None, None, F.activations(X2)
                else:
                    X1, dX1, A_F, _ = self._invert(F, X2, dX2, Y1, T1)
            sol_F = solve_gram(A_F, T1, F.b is not None, cfg, F.max_rank())
            if sol_F.exact:  # A~_F D_F = T1: the cross-term is G's tangent K already
                K_cross = K
            else:
                P_G = G.preactivation(Y1) if P_G is None else P_G
                K_cross = reduce(self._tangent(G, P_G, sol_F.realized))
            target_G = T2 - K_cross
            sol_G = solve_gram(A_G, target_G, G.b is not None, cfg, G.max_rank())
            yield index, (("F", F, X2, A_F, sol_F, T1), ("G", G, Y1, A_G, sol_G, target_G)), X2
            del A_F, A_G, sol_F, sol_G
            Y1, Y2, T1, T2 = X1, X2, dX1, dX2

    def _tangent(self, c: ShardedCoupling, pre, du):
        """This rank's term of ``k = (s'(P) * (du C)) W^T``; ``pre`` is not modified."""
        return self.solver_config.ops.coupling_tangent(pre, du, c.C, c.W, c.activation)

    def _invert(self, c: ShardedCoupling, u, du, y, dy):
        """``(x, dx, A_r, k)``: ``x = y - b - sum_r A_r W_r^T``, ``k = sum_r S_r W_r^T``,
        ``dx = dy - k``, ``S_r = s'(u C_r) * (du C_r)``.

        The op, run with ``y = dy = 0`` and no bias, returns this rank's ``-A_r W_r^T`` and
        ``-S_r W_r^T``; one all-reduce of the two stacked (2n, h) sums them over ranks.
        """
        zeros = torch.zeros_like(y)
        neg_x, neg_k, A, _ = self.solver_config.ops.coupling_inverse_with_tangent(
            u, du, zeros, zeros, c.C, c.W, None, c.activation)
        n = y.shape[0]
        both = self.model.reduce(torch.cat([neg_x, neg_k]))
        x = y + both[:n]
        if c.b is not None:
            x = x - c.b
        return x, dy + both[n:], A, -both[n:]

    def _scale(self) -> float:
        lr = self.param_groups[0]["lr"]
        return lr / self.model.depth if self.step_scaling == "function" else lr

    def _apply(self, c: ShardedCoupling, A, Z, sign: float):
        """``theta <- (1 - lr wd) theta - scale D`` on this rank's slice (``W_r``, ``b``);
        ``sign=-1`` undoes it."""
        group = self.param_groups[0]
        decay = group["lr"] * group["weight_decay"]
        params = [c.W] + ([c.b] if c.b is not None else [])
        if decay and sign > 0:
            for p in params:
                p.mul_(1 - decay)
        self.solver_config.ops.jt_update_(c.W, c.b, A, Z, -sign * self._scale())
        if decay and sign < 0:
            for p in params:
                p.div_(1 - decay)

    def _nonfinite(self, result: GNStepResult, why: str, applied) -> GNStepResult:
        for c, u, Z in reversed(applied):
            self._apply(c, c.activations(u), Z, sign=-1.0)
        if self.on_nonfinite == "raise":
            raise NonFiniteStepError(f"{why}; the parameters were left unchanged "
                                     "(on_nonfinite='skip' reports instead of raising)")
        result._order_blocks()
        result.applied, result.skipped_reason = False, why
        return result


def init_process_group(backend: str | None = None, timeout_s: float = 120.0):
    """Join the group that torchrun's environment describes (``MASTER_ADDR``, ``RANK``, ...):
    NCCL when CUDA is available (one device per local rank), else gloo."""
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return backend

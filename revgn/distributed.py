"""Tensor-parallel exact GN over the bottleneck ``M`` on ``torch.distributed`` (DESIGN §2-§3).

Rank ``r`` of a group of ``w`` holds a contiguous slice of the columns of every coupling's ``C``
and ``W`` (``C_r``, ``W_r``, ``M_r`` columns; the first ``M mod w`` ranks hold one more) and the
replicated ``b`` and ``U``. With ``A_r = s(u C_r)`` (n x M_r), a coupling is a sum over ranks:

    F(u) = s(u C) W^T + b = sum_r A_r W_r^T + b

so every product that ends in ``h`` columns is a partial sum, completed by one all-reduce.
The step is ``ExactGN``'s own code (``revgn.sweep``, ``revgn.exact_gn``): ``ShardedCoupling``
and ``ShardedRevMLP`` answer the sweep's questions about a coupling and a model with the sums:

- forward: ``sum_r A_r W_r^T``, an (n, h) all-reduce per coupling; ``b`` is added once, after it;
- sweep, inversion with tangent (DESIGN §3 steps 1-2): ``x = y - b - sum_r A_r W_r^T`` and
  ``k = sum_r (s'(u C_r) * (du C_r)) W_r^T``, primal and tangent stacked into one (2n, h)
  all-reduce. The top block's primal is the forward's (only its tangents are reduced, (n, h)
  each) and the bottom block's F needs no inversion at all (only its local ``A_r``);
- solve (DESIGN §3.1): ``K = sum_r A_r A_r^T + 1 1^T``, an all-reduce of the lower triangle
  of the symmetric (n, n) partials (``n (n + 1) / 2`` elements; ``SolverConfig.gram_reduce``);
  ``Z = K^+ T`` is solved redundantly on every rank from identical inputs, so every rank holds
  the same ``Z``; each rank updates its own slice, ``W_r += alpha Z^T A_r``, and
  ``b += alpha 1^T Z`` identically everywhere: the update itself needs no communication. The
  top block's F target ``T1 = e R`` (``R = U_1^T``, rank ``k``) stays factored:
  ``dW_r = R^T (Ze^T A_r)`` with ``Ze = K^+ e``;
- the F-to-G cross-term ``K' = (s'(Y1 C_G) * ((A~_F D_F) C_G)) W_G^T``, only when F's solve is
  inexact: one more (n, h) all-reduce;
- a linear coupling with a bottleneck (the paper's first block) is folded:
  ``C W^T = sum_r C_r W_r^T`` is one (h, h) all-reduce per step (all folded couplings stacked),
  after which its forward, inversion and pushes are local; its solve runs in the span of
  ``[u, 1]`` with ``C C^T = sum_r C_r C_r^T`` reduced once and kept, and
  ``dW_r = (Z^T u) C_r``;
- an update formed explicitly (folded, factored) is checked for finiteness on every rank
  together (one element): a slice may overflow on one rank alone.

Every branch of the step (exactness, truncation, drift re-runs, non-finite verdicts) is taken on
replicated values, so the ranks never disagree on which collective comes next. ``A_r`` never
leaves its rank. The sharded step equals ``ExactGN``'s on the same batch, with the Gram solvers
and ``n <= M + 1``; ``DistributedExactGN`` says what it does not support and why.

Launch with ``torchrun --nproc_per_node=N -m revgn.distributed_parity`` (gloo on CPU, NCCL on
GPU); docs/DISTRIBUTED.md derives the communication volume.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from revgn.exact_gn import ExactGN
from revgn.model import Coupling, ReversibleStack, RevBlock, RevMLP
from revgn.solvers import GRAM_SOLVERS, gram_rtol_floor
from revgn.validation import check_choice

__all__ = ["ShardedCoupling", "ShardedRevMLP", "DistributedExactGN", "shard_model",
           "shard_bounds", "init_process_group"]


def shard_bounds(width: int, world: int, rank: int) -> tuple[int, int]:
    """Columns ``lo:hi`` of ``rank``: contiguous, sizes differing by at most one (the first
    ``width mod world`` ranks hold one more), as ``torch.tensor_split``."""
    base, extra = divmod(width, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class ShardedCoupling(Coupling):
    """Columns ``lo:hi`` of one ``Coupling``: ``C_r``, ``W_r`` and ``A_r = s(u C_r)``, with ``b``
    replicated. Every product that ends in ``h`` columns is this rank's partial sum, completed
    by ``reduce`` (the owning ``ShardedRevMLP.reduce``); ``b`` is added once, after the sum.

    The operations the GN sweep asks of a coupling (``Coupling.forward_kept``, ``push``,
    ``invert_with_tangent``) are the whole coupling's: a folded one (``fold = sum_r C_r W_r^T``,
    already summed by ``ShardedRevMLP.linear_folds``) needs no communication at all.
    """

    def __init__(self, coupling: Coupling, lo: int, hi: int, reduce):
        nn.Module.__init__(self)
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
        self._reduce = reduce
        # properties of the whole coupling, not of a slice: the rank bound of A~, and whether
        # A = u C with a real bottleneck (the identity columns above are no bottleneck)
        self._max_rank = coupling.max_rank()
        self._foldable = coupling.foldable()

    def max_rank(self) -> int | None:
        return self._max_rank

    def foldable(self) -> bool:
        return self._foldable

    def folded(self) -> torch.Tensor:
        """``C_r W_r^T``: this rank's term of ``C W^T`` (``ShardedRevMLP.linear_folds`` sums)."""
        return super().folded()

    def partial(self, u):
        """``A_r W_r^T`` (n x h): this rank's term of ``F(u) - b``."""
        return self.activations(u) @ self.W.t()

    def complete(self, partial):
        """``sum_r partial_r + b`` (one (n, h) all-reduce)."""
        out = self._reduce(partial)
        return out.add_(self.b) if self.b is not None else out

    def forward(self, u, fold=None):
        if fold is not None:
            return super().forward(u, fold)
        return self.complete(self.partial(u))

    def forward_kept(self, u, fold=None):
        """``(P_r, A_r, F(u))``: this rank's pre-activations and activations, the whole output."""
        if fold is not None:
            return super().forward_kept(u, fold)
        P = self.preactivation(u)
        A = self._act.fn(P)
        return P, A, self.complete(A @ self.W.t())

    def push(self, pre, du, ops, fold=None, C=None):
        """``k = sum_r (s'(P_r) * (du C_r)) W_r^T`` (one (n, h) all-reduce unless folded)."""
        k = super().push(pre, du, ops, fold, C)
        return k if fold is not None else self._reduce(k)

    def invert_with_tangent(self, u, du, y, dy, ops, fold=None):
        """``(x, dx, A_r, k)``: ``x = y - b - sum_r A_r W_r^T``, ``k = sum_r S_r W_r^T``,
        ``dx = dy - k``, ``S_r = s'(u C_r) * (du C_r)``.

        The op, run with ``y = dy = 0`` and no bias, returns this rank's ``-A_r W_r^T`` and
        ``-S_r W_r^T``; one all-reduce of the two stacked (2n, h) sums them over ranks.
        """
        if fold is not None:
            return super().invert_with_tangent(u, du, y, dy, ops, fold)
        zeros = torch.zeros_like(y)
        neg_x, neg_k, A, _ = ops.coupling_inverse_with_tangent(
            u, du, zeros, zeros, self.C, self.W, None, self.activation)
        n = y.shape[0]
        both = self._reduce(torch.cat([neg_x, neg_k]))
        x = y + both[:n]
        if self.b is not None:
            x = x - self.b
        return x, dy + both[n:], A, -both[n:]


class ShardedBlock(RevBlock):
    """A ``RevBlock`` of ``ShardedCoupling``s: its ``forward`` and ``inverse`` are the whole
    block's, each coupling output completed across ranks."""

    def __init__(self, block: RevBlock, lo: int, hi: int, reduce):
        nn.Module.__init__(self)
        self.F = ShardedCoupling(block.F, lo, hi, reduce)
        self.G = ShardedCoupling(block.G, lo, hi, reduce)


class ShardedRevMLP(ReversibleStack):
    """A ``RevMLP`` split over the ranks of ``group`` along every coupling's bottleneck.

    Built from a full model that every rank constructed identically (same seed); see
    ``shard_model``. ``forward`` and ``stream`` are not differentiable across ranks (their
    all-reduces are outside autograd): the GN step needs no autograd. What the GN step asks of
    the model (``linear_folds``, ``gram_reduce``, ``all_finite``) is summed or agreed over the
    group, so that every rank takes the same branch of the shared step.
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
        self.blocks = nn.ModuleList(ShardedBlock(block, lo, hi, self.reduce)
                                    for block in model.blocks)
        #: elements all-reduced so far by ``reduce`` (the payload, not the wire traffic)
        self.reduced_elements = 0

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

    @property
    def gram_reduce(self):
        """``K = sum_r A_r A_r^T`` (and ``C C^T = sum_r C_r C_r^T``): ``reduce_symmetric``."""
        return self.reduce_symmetric

    def linear_folds(self) -> dict:
        """``{coupling: C W^T = sum_r C_r W_r^T}`` for every folded coupling: one all-reduce of
        the stacked (h, h) terms per step, after which a folded coupling's forward, inversion,
        pushes and solve need no communication."""
        couplings = [c for _, _, c in self.couplings() if c.foldable()]
        if not couplings:
            return {}
        folds = self.reduce(torch.stack([c.folded() for c in couplings]))
        return dict(zip(couplings, folds.unbind()))

    def all_finite(self, *tensors) -> bool:
        """Whether every rank's ``tensors`` are finite (one one-element all-reduce): a rank's
        slice of an update may overflow alone, and every rank must then undo together."""
        bad = 0.0 if super().all_finite(*tensors) else 1.0
        flag = self.reduce(torch.tensor([bad], dtype=self.U.dtype, device=self.U.device))
        return float(flag) == 0.0

    @torch.no_grad()
    def stream(self, x) -> torch.Tensor:
        """The output stream ``X_L`` (n x d), identical on every rank."""
        return super().stream(x)

    @torch.no_grad()
    def forward(self, x) -> torch.Tensor:
        return super().forward(x)

    @torch.no_grad()
    def gather_into(self, model: RevMLP) -> RevMLP:
        """Write the full ``W`` (all-gathered) and ``b`` of every coupling into ``model``, a
        ``RevMLP`` of the same shape; a collective, so every rank must call it."""
        for (_, _, full), (_, _, part) in zip(model.couplings(), self.couplings()):
            full.W.copy_(self.gather_columns(part.W))
            if part.b is not None:
                full.b.copy_(part.b)
        return model

    def gather_columns(self, W):
        """The whole ``(h, M)`` from every rank's ``(h, M_r)`` columns (a collective)."""
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


class DistributedExactGN(ExactGN):
    """``ExactGN`` on a ``ShardedRevMLP``: the same step (DESIGN §3), the same code, every rank
    computing its columns of every coupling (see the module docstring for the communication).

    Every rank must call ``step`` (or ``step(closure)``, ``direction``) with the same batch;
    every rank returns the same ``GNStepResult``. ``direction`` returns this rank's slices of
    the ``W`` changes and the whole ``b`` changes. Options are ``ExactGN``'s where they apply:
    ``loss``, ``curvature``, ``damping``, ``solver`` (the Gram ones: ``cholesky``, ``eigh``,
    ``damped``, ``projector``), ``rtol``, ``atol``, ``pinv_damping``, ``pinv_damping_relative``,
    ``step_scaling``, ``weight_decay``, ``backend``, ``on_nonfinite``, ``anchor_every``,
    ``drift_tol``. As in ``ExactGN``: linear couplings are folded (their solve runs in the span
    of ``[u, 1]``), the top block's F target is kept factored (``T1 = e U_1^T``), a step whose
    rebuilt input drifts past ``drift_tol`` is undone and redone with anchors, the op table is
    bound again when the model moves to another device.

    Not supported, because each needs the whole ``A~`` (``n x (M + 1)``) on one rank, which
    no rank holds: the ``svd``, ``qr``, ``rsvd`` and ``transpose`` solvers; an ``rtol`` finer
    than the Gram resolves (``ExactGN`` sends it to ``qr``; refused with a ValueError); the
    ``qr`` escalation of a coupling truncated only by the Gram's floor and the float64
    refinement of a solve (the sharded step keeps the Gram's answer and reports its residual);
    a batch taller than ``M + 1`` (``ExactGN`` solves it on the ``(M+1) x (M+1)`` Gram
    ``A~^T A~``, whose blocks pair every rank's columns with every other's; refused). Also not
    offered: ``tangent_mode="autodiff"`` (the all-reduces are outside autograd) and ``noise``
    (a per-slice RMS would differ from the whole update's).
    """

    def __init__(self, model: ShardedRevMLP, lr: float = 1.0, loss: str = "cross_entropy",
                 curvature: str = "identity", damping: float = 0.0, solver: str = "cholesky",
                 rtol: float = 0.0, atol: float = 0.0, pinv_damping: float = 0.0,
                 pinv_damping_relative: bool = True, step_scaling: str = "function",
                 weight_decay: float = 0.0, backend: str = "auto", on_nonfinite: str = "raise",
                 anchor_every: int | None = None, drift_tol: float = 1e-3):
        self._check_model(model)
        check_choice(solver, "solver", GRAM_SOLVERS)
        floor = gram_rtol_floor(model.U.dtype)
        if solver != "damped" and 0.0 < rtol < floor:
            # ExactGN would take the QR route of the whole A~, which lives on no single rank
            raise ValueError(f"rtol={rtol:g} is finer than the Gram of {model.U.dtype} "
                             f"resolves ({floor:.1e}); the sharded step solves on the Gram")
        super().__init__(model, lr=lr, loss=loss, curvature=curvature, damping=damping,
                         solver=solver, rtol=rtol, atol=atol, pinv_damping=pinv_damping,
                         pinv_damping_relative=pinv_damping_relative,
                         step_scaling=step_scaling, weight_decay=weight_decay, backend=backend,
                         on_nonfinite=on_nonfinite, anchor_every=anchor_every,
                         drift_tol=drift_tol)

    @staticmethod
    def _check_model(model):
        if not isinstance(model, ShardedRevMLP):
            raise TypeError(f"DistributedExactGN needs a ShardedRevMLP (revgn.distributed."
                            f"shard_model); got {type(model).__name__}")

    def _prepare(self, x, y):
        x, y = super()._prepare(x, y)
        if x.shape[0] > self.model.bottleneck + 1:
            raise ValueError(f"batch {x.shape[0]} exceeds M + 1 = {self.model.bottleneck + 1}: "
                             "the sharded step solves on the n x n Gram; use a batch of at most "
                             "M + 1")
        return x, y


def init_process_group(backend: str | None = None, timeout_s: float = 120.0):
    """Join the group that torchrun's environment describes (``MASTER_ADDR``, ``RANK``, ...):
    NCCL when CUDA is available (one device per local rank), else gloo."""
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return backend

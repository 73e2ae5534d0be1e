"""Tensor-parallel exact GN over the bottleneck ``M`` on ``torch.distributed`` (DESIGN §3).

Every rank holds a contiguous slice of the columns of every coupling's ``C`` and ``W``
(``C_r``, ``W_r``; uneven splits allowed) and the replicated ``b`` and ``U``. With
``A_r = s(u C_r)``:

- forward: ``F(u) = sum_r A_r W_r^T + b``: one all-reduce of (n, h) per coupling;
- sweep: the inversion and its tangent need ``sum_r [A_r W_r^T; S_r W_r^T]``: one all-reduce of
  (2n, h) per coupling, primal and tangent stacked;
- solve: ``K = sum_r A_r A_r^T + 1``: one all-reduce of (n, n) per coupling; ``Z = K^+ T`` is
  solved redundantly on every rank (identical inputs, identical ``Z``), and each rank updates
  its own slice, ``W_r += alpha Z^T A_r`` (``b`` identically everywhere);
- the F-to-G cross-term, when F's solve is inexact: one more (n, h) all-reduce.

Launch with ``torchrun --nproc_per_node=N -m revgn.distributed`` (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import argparse
import datetime
import os

import torch
import torch.distributed as dist

from revgn.exact_gn import GNStepResult
from revgn.losses import batch_loss, output_step
from revgn.ops import coupling_inverse_with_tangent, coupling_tangent, jt_update_
from revgn.solvers import GRAM_SOLVERS, SolverConfig, solve_gram
from revgn.sweep import CouplingReport, relative_residual
from revgn.validation import check_choice, check_features, check_targets


def _all_reduce(t: torch.Tensor, group=None) -> torch.Tensor:
    dist.all_reduce(t, group=group)
    return t


class ShardedCoupling:
    """Columns ``lo:hi`` of one coupling: ``u -> s(u C_r) W_r^T`` (+ ``b`` after the sum)."""

    def __init__(self, coupling, lo: int, hi: int):
        width = coupling.width
        # Without a bottleneck the coupling is s(u) W^T: a column selection plays the part of C.
        C = coupling.C if coupling.C is not None else torch.eye(
            width, dtype=coupling.W.dtype, device=coupling.W.device)
        self.C = C[:, lo:hi].detach().clone()
        self.W = coupling.W.detach()[:, lo:hi].clone()
        self.b = coupling.b.detach().clone() if coupling.b is not None else None
        self.activation = coupling.activation
        self._act = coupling._act
        self.full_width = width
        self.max_rank = coupling.max_rank()

    def partial(self, u):
        return self._act.fn(u @ self.C) @ self.W.t()


class ShardedRevMLP:
    """A ``RevMLP`` split over the ranks of ``group`` along every coupling's bottleneck."""

    def __init__(self, model, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.in_features, self.num_classes = model.in_features, model.num_classes
        self.half, self.bottleneck = model.half, model.bottleneck
        self.U = model.U.detach().clone()
        self.blocks = []
        for block in model.blocks:
            pair = []
            for coupling in (block.F, block.G):
                bounds = torch.tensor_split(torch.arange(coupling.width), self.world)[self.rank]
                lo, hi = (int(bounds[0]), int(bounds[-1]) + 1) if len(bounds) else (0, 0)
                pair.append(ShardedCoupling(coupling, lo, hi))
            self.blocks.append(tuple(pair))

    @property
    def depth(self):
        return len(self.blocks)

    def coupling(self, c: ShardedCoupling, u):
        out = _all_reduce(c.partial(u), self.group)
        return out + c.b if c.b is not None else out

    def stream(self, x):
        x1, x2 = x[:, :self.half], x[:, self.half:]
        for F, G in self.blocks:
            x1 = x1 + self.coupling(F, x2)
            x2 = x2 + self.coupling(G, x1)
        return torch.cat([x1, x2], dim=1)

    def forward(self, x):
        return self.stream(x.reshape(x.shape[0], -1)) @ self.U

    def full_weights(self):
        """Every coupling's full ``W`` (all-gathered; for checks and checkpoints)."""
        out = []
        for pair in self.blocks:
            for c in pair:
                sizes = [len(s) for s in torch.tensor_split(torch.arange(c.full_width),
                                                            self.world)]
                # all_gather needs equal sizes: pad every slice to the widest, trim after
                padded = torch.zeros(c.W.shape[0], max(sizes), dtype=c.W.dtype, device=c.W.device)
                padded[:, :c.W.shape[1]] = c.W
                parts = [torch.empty_like(padded) for _ in range(self.world)]
                dist.all_gather(parts, padded, group=self.group)
                out.append(torch.cat([p[:, :w] for p, w in zip(parts, sizes)], dim=1))
        return out


class DistributedExactGN:
    """``ExactGN`` on a ``ShardedRevMLP``: the same step, computed with the ranks' slices.

    Options as ``ExactGN``; the solvers are the Gram-based ones (``cholesky``, ``eigh``,
    ``damped``), and the batch must satisfy ``n <= M + 1``.
    """

    def __init__(self, model: ShardedRevMLP, lr: float = 1.0, loss: str = "cross_entropy",
                 curvature: str = "identity", damping: float = 0.0, solver: str = "cholesky",
                 rtol: float = 0.0, atol: float = 0.0, pinv_damping: float = 0.0,
                 step_scaling: str = "function", weight_decay: float = 0.0,
                 backend: str = "auto"):
        check_choice(solver, "solver", GRAM_SOLVERS)
        check_choice(step_scaling, "step_scaling", ("function", "per_block"))
        self.model, self.lr, self.loss = model, lr, loss
        self.curvature, self.damping = curvature, damping
        self.step_scaling, self.weight_decay, self.backend = step_scaling, weight_decay, backend
        self.config = SolverConfig(solver=solver, rtol=rtol, atol=atol, pinv_damping=pinv_damping,
                                   backend=backend,
                                   gram_reduce=lambda K: _all_reduce(K, model.group))

    def _invert(self, c: ShardedCoupling, u, du, y, dy):
        """``(x, dx, A_r, k)`` of one coupling: the partial products of this rank's columns,
        summed over ranks in one all-reduce."""
        neg_x, neg_k, A, _ = coupling_inverse_with_tangent(
            u, du, torch.zeros_like(y), torch.zeros_like(dy), c.C, c.W, None, c.activation,
            backend=self.backend)
        both = _all_reduce(torch.cat([neg_x, neg_k]), self.model.group)
        n = y.shape[0]
        x = y + both[:n]
        if c.b is not None:
            x = x - c.b
        k = -both[n:]
        return x, dy - k, A, k

    def _solve(self, c: ShardedCoupling, A, T):
        return solve_gram(A, T, c.b is not None, self.config, c.max_rank)

    def _apply(self, c: ShardedCoupling, A, Z, scale):
        decay = self.lr * self.weight_decay
        if decay:
            c.W.mul_(1 - decay)
            if c.b is not None:
                c.b.mul_(1 - decay)
        jt_update_(c.W, c.b, A, Z, -scale, backend=self.backend)

    @torch.no_grad()
    def step(self, x, y) -> GNStepResult:
        m = self.model
        x = check_features(x, m.in_features, m.U.dtype, m.U.device)
        y = check_targets(y, x.shape[0], self.loss, m.num_classes, m.U.dtype, m.U.device)
        n = x.shape[0]
        if n > m.bottleneck + 1:
            raise ValueError(f"batch {n} exceeds M + 1 = {m.bottleneck + 1}: the distributed "
                             "step needs the wide case; use a smaller batch")
        X = m.stream(x)
        logits = X @ m.U
        result = GNStepResult(loss=float(batch_loss(logits, y, self.loss)))
        E = output_step(logits, y, self.loss, self.curvature, self.damping) @ m.U.t()
        scale = self.lr / m.depth if self.step_scaling == "function" else self.lr
        Y1, Y2, T1, T2 = X[:, :m.half], X[:, m.half:], E[:, :m.half], E[:, m.half:]
        for index in reversed(range(m.depth)):
            F, G = m.blocks[index]
            X2, dX2, A_G, K = self._invert(G, Y1, T1, Y2, T2)
            X1, dX1, A_F, _ = self._invert(F, X2, dX2, Y1, T1)
            sol_F = self._solve(F, A_F, T1)
            K_cross = K if sol_F.exact else _all_reduce(coupling_tangent(
                Y1 @ G.C, sol_F.realized, G.C, G.W, G.activation, backend=self.backend), m.group)
            target_G = T2 - K_cross
            sol_G = self._solve(G, A_G, target_G)
            for name, c, A, sol, target in (("F", F, A_F, sol_F, T1), ("G", G, A_G, sol_G,
                                                                         target_G)):
                result.blocks.append(CouplingReport(index, name, relative_residual(
                    sol.realized, target), sol.rank, n, sol.method, sol.exact))
                self._apply(c, A, sol.Z, scale)
            Y1, Y2, T1, T2 = X1, X2, dX1, dX2
        result.inversion_error = relative_residual(torch.cat([Y1, Y2], dim=1), x)
        return result


def init_process_group(backend: str | None = None, timeout_s: float = 120.0):
    """Join the group torchrun describes (``MASTER_ADDR``, ``RANK``, ...): gloo on CPU, NCCL on
    GPU."""
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def parity_run(steps: int, dtype=torch.float64, depth=2, d=12, M=37, n=10, loss="cross_entropy",
               seed=0, device="cpu"):
    """Train ``steps`` steps tensor-parallel and return ``(full model, sharded W's, losses)``
    built from ``seed``, so that a single process can replay the same steps."""
    import revgn
    torch.manual_seed(seed)
    model = revgn.RevMLP(d, 3, depth=depth, bottleneck=M, init_std=0.3).to(device, dtype)
    sharded = ShardedRevMLP(model)
    opt = DistributedExactGN(sharded, lr=0.5, loss=loss)
    losses = []
    for x, y in parity_batches(steps, n, d, loss, dtype, seed, device):
        losses.append(opt.step(x, y).loss)
    return model, sharded.full_weights(), losses


def parity_batches(steps, n, d, loss, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x = torch.randn(n, d, generator=g, dtype=dtype)
        y = (torch.randint(0, 3, (n,), generator=g) if loss == "cross_entropy"
             else torch.randn(n, 3, generator=g, dtype=dtype))
        yield x.to(device), y.to(device)


def _spawned_parity(rank, world, port, dtype_name, loss, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    init_process_group("gloo", timeout_s=60)
    try:
        _, weights, losses = parity_run(3, getattr(torch, dtype_name), loss=loss)
        if rank == 0:
            torch.save({"weights": weights, "losses": losses}, out_path)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="torchrun -m revgn.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "mse"])
    parser.add_argument("--check", action="store_true",
                        help="rank 0 replays the steps in one process and compares")
    args = parser.parse_args(argv)
    init_process_group()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    model, weights, losses = parity_run(args.steps, dtype, loss=args.loss, device=device)
    rank = dist.get_rank()
    if rank == 0:
        print(f"world {dist.get_world_size()}: loss per step " + ", ".join(f"{v:.6f}" for v in losses))
        if args.check:
            print(f"max relative difference to one process: {single_process_gap(weights, args):.2e}")
    dist.destroy_process_group()
    return 0


def single_process_gap(weights, args) -> float:
    import revgn
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = revgn.RevMLP(12, 3, depth=2, bottleneck=37, init_std=0.3).to(dtype=dtype)
    opt = revgn.ExactGN(model, lr=0.5, loss=args.loss, backend="reference")
    for x, y in parity_batches(args.steps, 10, 12, args.loss, dtype, 0):
        opt.step(x, y)
    full = [c.W for _, _, c in model.couplings()]
    return max(float((a.cpu() - b).norm() / b.norm()) for a, b in zip(weights, full))


if __name__ == "__main__":
    raise SystemExit(main())

"""The multi-process parity harness of ``DistributedExactGN`` against one-process ``ExactGN``:
the cases, the comparison, a loopback launcher (``run_local``) and the
``torchrun -m revgn.distributed_parity`` entry point.

Every rank builds the same ``RevMLP`` from a seed, shards it, and trains on the same seeded
batches; rank 0 then replays the steps with ``ExactGN`` on the full model and compares.
"""
from __future__ import annotations

import argparse
import copy
import os
import socket
import tempfile
import warnings
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from revgn.distributed import DistributedExactGN, init_process_group, shard_bounds, shard_model
from revgn.distributed_comm import tensor_parallel_elements
from revgn.exact_gn import ExactGN
from revgn.model import RevMLP
from revgn.solvers import GRAM_SOLVERS


@dataclass
class ParityCase:
    """A small model, its batches and the optimizer options, all derived from ``seed``."""
    loss: str = "cross_entropy"
    dtype: str = "float64"
    d: int = 12
    k: int = 3
    M: int = 37
    depth: int = 2
    n: int = 10
    steps: int = 3
    lr: float = 0.5
    seed: int = 0
    bottleneck: bool = True
    init_std: float = 0.3
    #: the paper's linear first block (its couplings are folded) unless set to a nonlinear one
    first_activation: str = "identity"
    #: step through ``step(closure)`` on the sharded side (one process steps on ``(x, y)``)
    closure: bool = False
    #: std of the initial biases (RevMLP starts them at 0; nonzero ones show b is added once)
    bias_std: float = 0.1
    options: dict = field(default_factory=dict)

    def model(self, device="cpu") -> RevMLP:
        torch.manual_seed(self.seed)
        model = RevMLP(self.d, self.k, depth=self.depth, bottleneck=self.M,
                       init_std=self.init_std, first_activation=self.first_activation,
                       inverted_bottleneck=self.bottleneck).to(device, getattr(torch, self.dtype))
        g = torch.Generator().manual_seed(self.seed + 2)
        with torch.no_grad():
            for _, _, c in model.couplings():
                c.b.copy_(self.bias_std * torch.randn(c.b.shape, generator=g, dtype=c.b.dtype))
        return model

    def batches(self, device="cpu"):
        dtype = getattr(torch, self.dtype)
        g = torch.Generator().manual_seed(self.seed + 1)
        for _ in range(self.steps):
            x = torch.randn(self.n, self.d, generator=g, dtype=dtype)
            y = (torch.randint(0, self.k, (self.n,), generator=g) if self.loss == "cross_entropy"
                 else torch.randn(self.n, self.k, generator=g, dtype=dtype))
            yield x.to(device), y.to(device)

    def optimizer_kwargs(self) -> dict:
        return dict(lr=self.lr, loss=self.loss, **self.options)


def _rel(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _thetas(model):
    """Every coupling's parameters ``theta = [W, b]``, flattened (DESIGN §3)."""
    return [torch.cat([p.detach().flatten() for p in c.parameters()])
            for _, _, c in model.couplings()]


def _per_coupling(tensors):
    """``[W, b]`` pairs of a list in ``model.parameters()`` order, each flattened into one."""
    return [torch.cat([w.flatten(), b.flatten()]) for w, b in zip(tensors[::2], tensors[1::2])]


def _replay(model, case: ParityCase, device, dtype=None):
    """``(optimizer, results)``: ``ExactGN`` on ``model`` over the case's batches (cast to
    ``dtype`` if given)."""
    opt = ExactGN(model, **case.optimizer_kwargs())
    with warnings.catch_warnings():  # rank reports are compared, not announced
        warnings.simplefilter("ignore", RuntimeWarning)
        return opt, [opt.step(x.to(dtype or x.dtype), y.to(dtype) if y.is_floating_point() and
                              dtype else y) for x, y in case.batches(device)]


def _sharded_steps(opt: DistributedExactGN, case: ParityCase, device):
    """``(results, reduced elements per step, last batch)`` of the case on the sharded side."""
    model, results, reduced = opt.model, [], []
    for x, y in case.batches(device):
        before = model.reduced_elements
        results.append(opt.step(lambda: (x, y)) if case.closure else opt.step(x, y))
        reduced.append(model.reduced_elements - before)
    return results, reduced, (x, y)


def _predicted(case: ParityCase, model: RevMLP, results) -> list:
    """All-reduced elements of each step from ``distributed_comm``, given what each step did:
    which couplings were folded and solved in their span, which F solves were inexact, and
    which steps were redone with anchors (twice the traffic; ``C C^T`` is summed once)."""
    folded = [l for l, block in enumerate(model.blocks) if block.F.foldable()]
    span = all(r.method.startswith("linear") for r in results[0].blocks if r.block in folded)

    def elements(result, first):
        inexact = sum(not r.exact for r in result.blocks
                      if r.coupling == "F" and r.block not in folded)
        return tensor_parallel_elements(case.n, case.d // 2, case.depth, inexact, folded,
                                        case.k, span, first)["total"]
    return [elements(r, i == 0) + (elements(r, False) if r.reanchored else 0)
            for i, r in enumerate(results)]


def _report_key(r):
    return r.block, r.coupling, r.rank, r.exact, r.method


def parity(case: ParityCase, device="cpu") -> dict | None:
    """Run on every rank of the default group; rank 0 returns the comparison with one process,
    the others None. Relative differences ``||a - b|| / ||b||``:

    ``forward``: the sharded forward against the full one, before training. After
    ``case.steps`` steps: ``W``, the largest over the gathered ``W``'s; ``theta``, over every
    coupling's ``[W, b]``; ``tensors``, over every parameter tensor (``b``'s included);
    ``losses``, over the per-step losses; ``direction``, over every coupling's ``[dW, db]`` of
    ``direction()`` on the last batch after the steps. ``reports``: every coupling's rank,
    exactness and route, and every step's anchoring (``anchor_every``, ``reanchored``) agree;
    ``methods``: the routes the sharded step took. For float32, ``float64``: ``theta`` and the
    direction of the sharded and of the one-process runs against ``ExactGN`` in float64 from
    the same start. ``replica_spread``: how far the replicated ``b``'s ended apart across
    ranks. ``reduced_per_step`` against ``predicted_per_step``: all-reduced elements of each
    step, counted and from ``distributed_comm``.
    """
    full = case.model(device)
    initial = copy.deepcopy(full)
    sharded = shard_model(full)
    x0 = next(case.batches(device))[0]
    forward = _rel(sharded(x0), full(x0))
    opt = DistributedExactGN(sharded, **case.optimizer_kwargs())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        results, reduced, (x, y) = _sharded_steps(opt, case, device)
        deltas = [sharded.gather_columns(d) if d.dim() == 2 else d
                  for d in opt.direction(x, y)[0]]
    gathered = sharded.gather_into(copy.deepcopy(initial))
    spread = sharded.replica_spread()
    if dist.get_rank() != 0:
        return None
    reference_opt, reference = _replay(full, case, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reference_deltas = reference_opt.direction(x, y)[0]
    W_pairs = [(g.W, f.W) for (_, _, g), (_, _, f) in zip(gathered.couplings(), full.couplings())]
    out = dict(
        case=asdict(case), world=dist.get_world_size(), forward=forward,
        W=max(_rel(a, b) for a, b in W_pairs),
        theta=max(_rel(a, b) for a, b in zip(_thetas(gathered), _thetas(full))),
        tensors=max(_rel(a, b) for a, b in zip(gathered.parameters(), full.parameters())),
        losses=max(abs(a.loss - b.loss) / max(abs(b.loss), 1e-300)
                   for a, b in zip(results, reference)),
        direction=max(_rel(a, b) for a, b in zip(_per_coupling(deltas),
                                                  _per_coupling(reference_deltas))),
        reports=all([_report_key(a) for a in r.blocks] == [_report_key(b) for b in s.blocks]
                    and (r.anchor_every, r.reanchored) == (s.anchor_every, s.reanchored)
                    for r, s in zip(results, reference)),
        methods=sorted({b.method for r in results for b in r.blocks}),
        reanchored=[r.reanchored for r in results],
        replica_spread=spread, loss_per_step=[r.loss for r in results],
        reduced_per_step=reduced, predicted_per_step=_predicted(case, full, results))
    if case.dtype == "float32":
        exact = initial.double()
        exact_opt, _ = _replay(exact, case, device, torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            exact_deltas = _per_coupling(exact_opt.direction(
                x.double(), y.double() if y.is_floating_point() else y)[0])
        out["float64"] = dict(
            distributed=max(_rel(a, b) for a, b in zip(_thetas(gathered), _thetas(exact))),
            single=max(_rel(a, b) for a, b in zip(_thetas(full), _thetas(exact))),
            direction_distributed=max(_rel(a, b) for a, b in zip(_per_coupling(deltas),
                                                                 exact_deltas)),
            direction_single=max(_rel(a, b) for a, b in zip(_per_coupling(reference_deltas),
                                                            exact_deltas)))
    return out


def parity_cases(cases) -> list | None:
    """``parity`` for every case, in one process group."""
    out = [parity(case) for case in cases]
    return out if dist.get_rank() == 0 else None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 when asked (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_worker(rank, world, port, timeout_s, fn, args, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    if any(name == "lo" for _, name in socket.if_nameindex()):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's own sockets on loopback too
    torch.set_num_threads(1)  # the ranks share the machine's cores
    init_process_group("gloo", timeout_s=timeout_s)
    try:
        result = fn(*args)
        if rank == 0:
            torch.save(result, out_path)
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def run_local(world: int, fn, *args, timeout_s: float = 60.0):
    """``fn(*args)`` on ``world`` spawned processes forming a gloo group on 127.0.0.1; returns
    rank 0's result. ``fn`` must be importable by name (the children unpickle it), and a
    collective that hangs fails after ``timeout_s``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        try:
            mp.spawn(_local_worker, args=(world, free_port(), timeout_s, fn, args, out),
                     nprocs=world, join=True)
        except mp.ProcessExitedException:
            # A rank killed by a signal while the group forms (seen once in a full test run:
            # gloo aborting a rank, its port taken between free_port() and the rendezvous) is
            # retried once on a fresh port; an exception raised by ``fn`` is not retried.
            mp.spawn(_local_worker, args=(world, free_port(), timeout_s, fn, args, out),
                     nprocs=world, join=True)
        return torch.load(out, weights_only=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m revgn.distributed_parity",
        description="Train a seeded RevMLP tensor-parallel over the bottleneck for a few GN "
                    "steps; print the loss per step and, with --check, the gap to one process.")
    defaults = ParityCase()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--loss", default=defaults.loss, choices=["cross_entropy", "mse"])
    parser.add_argument("--dtype", default=defaults.dtype, choices=["float32", "float64"])
    # (names that no torchrun option starts with: torchrun matches abbreviations)
    parser.add_argument("--width", type=int, default=defaults.d, help="input width d (even)")
    parser.add_argument("--bottleneck", type=int, default=defaults.M, help="bottleneck M")
    parser.add_argument("--classes", type=int, default=defaults.k)
    parser.add_argument("--depth", type=int, default=defaults.depth)
    parser.add_argument("--batch", type=int, default=defaults.n, help="n, at most M + 1")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--solver", default="cholesky", choices=list(GRAM_SOLVERS))
    parser.add_argument("--rtol", type=float, default=0.0)
    parser.add_argument("--pinv-damping", type=float, default=0.0, help="for --solver damped")
    parser.add_argument("--anchor-every", type=int, default=None)
    parser.add_argument("--first-activation", default=defaults.first_activation,
                        help="activation of the first block (identity: folded)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--check", action="store_true",
                        help="rank 0 replays the steps with ExactGN in one process and compares")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="with --check: rank 0 also writes the comparison as JSON to FILE")
    args = parser.parse_args(argv)
    if args.out and not args.check:
        parser.error("--out writes the comparison of --check; add --check")
    case = ParityCase(loss=args.loss, dtype=args.dtype, d=args.width, k=args.classes,
                      M=args.bottleneck, depth=args.depth, n=args.batch, steps=args.steps,
                      lr=args.lr, seed=args.seed, first_activation=args.first_activation,
                      options=dict(solver=args.solver, rtol=args.rtol,
                                   pinv_damping=args.pinv_damping,
                                   anchor_every=args.anchor_every))
    backend = init_process_group()
    device = f"cuda:{torch.cuda.current_device()}" if backend == "nccl" else "cpu"
    try:
        if args.check:
            report = parity(case, device)
            losses = report["loss_per_step"] if report else None
        else:
            sharded = shard_model(case.model(device))
            opt = DistributedExactGN(sharded, **case.optimizer_kwargs())
            losses = [opt.step(x, y).loss for x, y in case.batches(device)]
        if dist.get_rank() == 0:
            world = dist.get_world_size()
            widths = [hi - lo for lo, hi in (shard_bounds(case.M, world, r) for r in range(world))]
            print(f"{backend}, {world} ranks, M = {case.M} split {widths}")
            for i, loss in enumerate(losses):
                print(f"step {i + 1}: loss {loss:.10g}")
            if args.check:
                print(f"one process vs {report['world']} ranks, max relative difference: W "
                      f"{report['W']:.2e}, [W, b] {report['theta']:.2e}, any tensor "
                      f"{report['tensors']:.2e}, losses {report['losses']:.2e}, forward "
                      f"{report['forward']:.2e}, direction {report['direction']:.2e}; ranks, "
                      f"exactness, routes and anchoring agree: {report['reports']}; replica "
                      f"spread {report['replica_spread']:.1e}")
                if "float64" in report:
                    f64 = report["float64"]
                    print(f"[W, b] against ExactGN in float64: {report['world']} ranks "
                          f"{f64['distributed']:.2e}, one process {f64['single']:.2e}")
                print(f"all-reduced elements per step: {report['reduced_per_step']} "
                      f"(predicted {report['predicted_per_step']})")
                if args.out:
                    from revgn.cli.common import write_record
                    write_record(args.out, dict(report, backend=backend))
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

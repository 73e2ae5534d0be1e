"""Communication and compute of one GN step when a ``RevMLP`` is spread over ``w`` ranks.

Communication is counted in elements handed to the collectives (the payload, independent of
``w``); per rank on the wire, a ring all-reduce of ``S`` sends and receives ``2 S (w - 1) / w``
and an all-gather of a total ``S`` receives ``S (w - 1) / w``. Batch ``n``, half-width
``h = d / 2``, bottleneck ``M``, ``L`` blocks (``2L`` couplings).

- tensor parallel over ``M`` (``revgn.distributed``): all-reduces only, see
  ``tensor_parallel_elements``;
- data parallel over the batch: inversion and tangents are row-local, but the solve couples
  all samples through ``K = A~ A~^T``, so the rows of ``A`` (n x M) and of the target ``T``
  (n x h) must be all-gathered per coupling (``data_parallel_elements``);
- replicated compute over sharded storage: all-gather every ``W`` (h x M) once per step.

Compute per coupling (DESIGN §3.2, multiply-accumulates): forward ``2 n h M``, inversion with
tangent ``4 n h M``, Gram ``n^2 M``, update ``n M h``, solve ``n^3 / 3 + n^2 h``.

``python -m revgn.distributed_comm`` prints the tables of docs/DISTRIBUTED.md.
"""
from __future__ import annotations

import argparse

PAPER_SHAPES = {
    "MNIST": dict(n=1024, d=784, M=8000, L=2, k=10),
    "CIFAR-10": dict(n=1024, d=3072, M=8000, L=6, k=10),
}


def tensor_parallel_elements(n: int, h: int, L: int, inexact_blocks: int = 0,
                             folded_blocks=(), k: int | None = None, span_solve: bool = True,
                             first_step: bool = False) -> dict:
    """All-reduced elements per step of ``DistributedExactGN`` (what ``reduce`` counts).

    A block in ``folded_blocks`` (linear couplings with a bottleneck, e.g. the paper's first)
    sums ``C W^T`` once per step, ``h^2`` per coupling (``folds``), and then needs nothing else:
    its forward, inversion, pushes and cross-term go through that ``h x h`` product, and its
    solve runs in the span of ``[u, 1]`` with ``C C^T`` summed once (``h (h + 1) / 2`` per
    coupling, on the ``first_step`` only). With a solver that needs ``A`` (``span_solve`` False:
    ``damped``) a folded coupling solves on the reduced Gram like any other.

    Every other block: forward (n, h) per coupling. Sweep: the top block pushes tangents only,
    (n, h) for G and, when a block lies below, for F; a middle block reduces (2n, h) for G and
    F; the bottom one (2n, h) for G (its F needs only its local ``A_F``). Gram: the lower
    triangle of (n, n), ``n (n + 1) / 2``, per coupling. Cross-term: (n, h) per block
    (``inexact_blocks``, counted among these) whose F solve is inexact.

    ``flags``: one element per update formed explicitly, whose finiteness every rank must agree
    on: each folded coupling's, and the top F's when its target is kept factored (``k < h``
    classes and the top block not folded).
    """
    nh = n * h
    folded = set(folded_blocks)
    whole = [l for l in range(L) if l not in folded]
    sweep = 0
    for l in whole:
        if l == L - 1:
            sweep += nh if L == 1 else 2 * nh
        else:
            sweep += 2 * nh if l == 0 else 4 * nh
    gram_couplings = 2 * len(whole) + (0 if span_solve else 2 * len(folded))
    out = dict(
        forward=2 * len(whole) * nh, folds=2 * len(folded) * h * h, sweep=sweep,
        gram=gram_couplings * n * (n + 1) // 2,
        bottleneck_gram=2 * len(folded) * h * (h + 1) // 2 if span_solve and first_step else 0,
        cross=inexact_blocks * nh,
        flags=2 * len(folded) + (1 if k is not None and k < h and L - 1 not in folded else 0))
    out["total"] = sum(out.values())
    return out


def data_parallel_elements(n: int, h: int, M: int, L: int, split_solve: bool = False) -> dict:
    """All-gathered elements per step when the batch is split.

    The least that must move is ``A`` and ``T`` per coupling; every rank then computes the
    Gram (``n^2 M``) and the update (``n M h``) of the whole batch itself. ``split_solve``
    splits those too: each rank computes its rows of ``K`` and its columns of ``dW``, and the
    (n, n) ``K`` and the (h, M) ``dW`` are all-gathered as well.
    """
    out = dict(A=2 * L * n * M, T=2 * L * n * h)
    if split_solve:
        out.update(K=2 * L * n * n, dW=2 * L * h * M)
    out["total"] = sum(out.values())
    return out


def replicated_elements(h: int, M: int, L: int) -> dict:
    """All-gathered elements per step when every rank computes the whole step on the whole
    batch from parameters stored sharded: every ``W`` (h x M) once (``b`` is replicated)."""
    return dict(W=2 * L * h * M, total=2 * L * h * M)


def macs_per_rank(scheme: str, n: int, h: int, M: int, L: int, world: int) -> float:
    """Multiply-accumulates per rank per step (DESIGN §3.2 per coupling, times ``2L``)."""
    stream = 6 * n * h * M                 # forward + inversion with tangent: split by rows or M
    solve_side = n * n * M + n * M * h     # Gram + update
    small = n ** 3 / 3 + n * n * h         # the n x n solve, redundant in every scheme
    split = {"tensor parallel": stream + solve_side, "data parallel": stream,
             "data parallel, solve split": stream + solve_side, "replicated": 0}[scheme]
    return 2 * L * (split / world + (stream + solve_side - split) + small)


def scheme_rows(n: int, d: int, M: int, L: int, k: int):
    """``(label, scheme, payload elements, wire factor)`` for one shape; the wire factor is 2
    for a ring all-reduce and 1 for an all-gather (times ``(w - 1) / w`` per rank)."""
    h = d // 2
    tp = "tensor parallel"

    def elements(**kw):
        return tensor_parallel_elements(n, h, L, k=k, **kw)["total"]
    # the paper's first block is linear: folded, it costs h^2 per coupling and nothing more; a
    # block's F solve is inexact when its A~ is rank deficient or a truncating rtol cuts it
    return [
        ("tensor parallel, no block folded, every F solve exact", tp, elements(), 2),
        ("tensor parallel, first block folded (paper), other F solves exact", tp,
         elements(folded_blocks=(0,)), 2),
        ("tensor parallel, first block folded (paper), the other F solves inexact", tp,
         elements(folded_blocks=(0,), inexact_blocks=L - 1), 2),
        ("data parallel (all-gather A, T)", "data parallel",
         data_parallel_elements(n, h, M, L)["total"], 1),
        ("data parallel, solve split (+ K, dW)", "data parallel, solve split",
         data_parallel_elements(n, h, M, L, split_solve=True)["total"], 1),
        ("replicated (all-gather W)", "replicated", replicated_elements(h, M, L)["total"], 1)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m revgn.distributed_comm",
                                     description="Communication per GN step, paper shapes.")
    parser.add_argument("--itemsize", type=int, default=4, help="bytes per element")
    parser.add_argument("--world", type=int, nargs="+", default=[2, 8])
    args = parser.parse_args(argv)
    print("| shape | scheme | payload (MB) | " +
          " | ".join(f"wire per rank, w = {w} (MB)" for w in args.world) + " | " +
          " | ".join(f"GMAC per rank, w = {w}" for w in args.world) + " |")
    print("|---|---|---:|" + "---:|" * 2 * len(args.world))
    for name, s in PAPER_SHAPES.items():
        for label, scheme, elements, factor in scheme_rows(**s):
            mb = args.itemsize * elements / 1e6
            wire = [f"{factor * (w - 1) / w * mb:.1f}" for w in args.world]
            macs = [f"{macs_per_rank(scheme, s['n'], s['d'] // 2, s['M'], s['L'], w) / 1e9:.0f}"
                    for w in args.world]
            print(f"| {name} | {label} | {mb:.1f} | " + " | ".join(wire + macs) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

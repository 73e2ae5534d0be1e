"""Brute-force exactness table: ``||J(theta) delta + lr e|| / ||lr e||`` per configuration.

    python benchmarks/exactness_table.py [--out docs/figures/exactness.json]

``delta`` is one ExactGN step's parameter change and ``J(theta) delta`` its first-order effect
on the batch outputs, computed independently by forward-mode AD through the model
(``torch.func.jvp``). Function scaling must give ``-lr e``; per_block ``-lr L e``.
"""
import argparse
import itertools
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import revgn  # noqa: E402
import revgn.solvers  # noqa: E402
from revgn.cli.common import write_record  # noqa: E402
from revgn.losses import output_step  # noqa: E402
from tests.helpers import labels, make_model, output_jvp, rel_err  # noqa: E402

CASES = [
    # depth, d, M, n, activation
    (1, 8, 32, 9, "tanh"),
    (2, 16, 64, 24, "relu"),
    (3, 12, 48, 20, "gelu"),
    (4, 10, 40, 17, "tanh"),
]
LOSSES = [("mse", "identity", 0.0), ("cross_entropy", "identity", 0.0),
          ("cross_entropy", "exact", 0.0), ("cross_entropy", "damped", 0.1)]


def error(case, loss_cfg, scaling, dtype, seed=0):
    depth, d, M, n, act = case
    loss, curvature, damping = loss_cfg
    torch.manual_seed(seed)
    model = make_model(d, 3, depth, M, activation=act, std=0.3, dtype=dtype)
    x = torch.randn(n, d, dtype=dtype)
    y = labels(n, 3) if loss == "cross_entropy" else torch.randn(n, 3, dtype=dtype)
    opt = revgn.ExactGN(model, lr=0.5, loss=loss, curvature=curvature, damping=damping,
                        step_scaling=scaling)
    deltas, result = opt.direction(x, y)
    target = -0.5 * (depth if scaling == "per_block" else 1) * output_step(
        model(x), y, loss, curvature, damping)
    return rel_err(output_jvp(model, x, deltas), target), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="write the table as JSON to this file")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"{'depth':>5} {'d':>4} {'M':>4} {'n':>4} {'act':>5} {'loss':>14} {'curvature':>9} "
          f"{'scaling':>9} {'float64':>10} {'float32':>10}")
    worst = {torch.float64: 0.0, torch.float32: 0.0}
    inexact = 0
    rows = []
    for case, loss_cfg, scaling in itertools.product(CASES, LOSSES, ["function", "per_block"]):
        cells = []
        depth, d, M, n, act = case
        row = dict(depth=depth, d=d, M=M, n=n, activation=act, loss=loss_cfg[0],
                   curvature=loss_cfg[1], damping=loss_cfg[2], step_scaling=scaling)
        for dtype in (torch.float64, torch.float32):
            err, result = error(case, loss_cfg, scaling, dtype)
            exact = result.exact
            if exact:
                worst[dtype] = max(worst[dtype], err)
            inexact += not exact
            cells.append(f"{err:9.1e}{' ' if exact else '*'}")
            name = str(dtype).removeprefix("torch.")
            row[name], row[f"{name}_exact"] = err, bool(exact)
            row[f"{name}_routes"] = [f"{c.block}{c.coupling}: {c.method}" for c in result.blocks]
        rows.append(row)
        print(f"{depth:>5} {d:>4} {M:>4} {n:>4} {act:>5} {loss_cfg[0]:>14} {loss_cfg[1]:>9} "
              f"{scaling:>9} {cells[0]:>10} {cells[1]:>10}")
    print(f"worst over exact steps: float64 {worst[torch.float64]:.1e} (bound 1e-8), "
          f"float32 {worst[torch.float32]:.1e} (bound 5e-3)")
    if inexact:
        print(f"* {inexact} steps reported exact=False: a coupling's A~ has singular values under "
              f"the Gram floor (revgn.solvers.gram_rtol_floor) and was truncated")
    ill = ill_conditioned()
    if args.out:
        write_record(args.out, dict(error="||J delta + lr e|| / ||lr e||", cases=rows,
                                    worst=dict(float64=worst[torch.float64],
                                               float32=worst[torch.float32]),
                                    ill_conditioned=ill))


def ill_conditioned():
    """An ill-conditioned float64 batch (depth 3, M = n + 3): the Gram route before and after
    its refinement, against the SVD and QR routes. Returns the rows printed."""
    depth, d, M, n = 3, 4, 15, 12
    torch.manual_seed(2)
    model = make_model(d, 3, depth, M, activation="gelu", std=0.5)
    x, y = torch.randn(n, d, dtype=torch.float64), torch.randint(0, 3, (n,))
    target = -0.3 * output_step(model(x), y, "cross_entropy")
    print(f"\nill-conditioned batch: depth {depth}, d {d}, M {M}, n {n}, gelu, cross_entropy")
    print(f"{'solver':>20} {'error':>10} {'max residual':>13} {'max |delta|':>12}")
    rows = []
    for solver, refine in [("cholesky", False), ("cholesky", True), ("eigh", True),
                           ("svd", True), ("qr", True)]:
        saved = revgn.solvers.REFINE_RTOL
        revgn.solvers.REFINE_RTOL = saved if refine else float("inf")
        try:
            opt = revgn.ExactGN(model, lr=0.3, loss="cross_entropy", solver=solver)
            deltas, result = opt.direction(x, y)
        finally:
            revgn.solvers.REFINE_RTOL = saved
        name = solver if refine or solver not in ("cholesky", "eigh") else f"{solver} unrefined"
        size = max(float(dlt.abs().max()) for dlt in deltas)
        err = rel_err(output_jvp(model, x, deltas), target)
        print(f"{name:>20} {err:10.1e} {result.max_residual:13.1e} {size:12.4g}")
        rows.append(dict(solver=name, error=err, max_residual=float(result.max_residual),
                         max_abs_delta=size))
    return dict(depth=depth, d=d, M=M, n=n, activation="gelu", loss="cross_entropy",
                solvers=rows)


if __name__ == "__main__":
    main()

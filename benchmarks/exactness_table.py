"""Brute-force exactness table: ``||J(theta) delta + lr e|| / ||lr e||`` per configuration.

    python benchmarks/exactness_table.py

``delta`` is one ExactGN step's parameter change and ``J(theta) delta`` its first-order effect
on the batch outputs, computed independently by forward-mode AD through the model
(``torch.func.jvp``). Function scaling must give ``-lr e``; per_block ``-lr L e``.
"""
import itertools
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import revgn  # noqa: E402
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
    return rel_err(output_jvp(model, x, deltas), target), result.exact


def main():
    warnings.simplefilter("ignore")
    print(f"{'depth':>5} {'d':>4} {'M':>4} {'n':>4} {'act':>5} {'loss':>14} {'curvature':>9} "
          f"{'scaling':>9} {'float64':>10} {'float32':>10}")
    worst = {torch.float64: 0.0, torch.float32: 0.0}
    for case, loss_cfg, scaling in itertools.product(CASES, LOSSES, ["function", "per_block"]):
        errs = {}
        for dtype in (torch.float64, torch.float32):
            errs[dtype], exact = error(case, loss_cfg, scaling, dtype)
            worst[dtype] = max(worst[dtype], errs[dtype])
        depth, d, M, n, act = case
        print(f"{depth:>5} {d:>4} {M:>4} {n:>4} {act:>5} {loss_cfg[0]:>14} {loss_cfg[1]:>9} "
              f"{scaling:>9} {errs[torch.float64]:10.1e} {errs[torch.float32]:10.1e}")
    print(f"worst: float64 {worst[torch.float64]:.1e} (bound 1e-8), "
          f"float32 {worst[torch.float32]:.1e} (bound 5e-3)")


if __name__ == "__main__":
    main()

"""``revgn egn-examples``: EGN vs Adam vs SGD on scikit-learn's bundled digits (classification)
and diabetes (regression) data. Prints training loss by epoch and by wall time, and the test
metric, whatever they show."""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

import revgn
from revgn.egn.losses import mean_loss


def _split(X, y, seed, train_fraction=0.8):
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    n = int(train_fraction * len(X))
    mean, std = X[:n].mean(0), X[:n].std(0) + 1e-6
    return (X[:n] - mean) / std, y[:n], (X[n:] - mean) / std, y[n:]


def digits(seed):
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return _split(torch.tensor(X, dtype=torch.float32), torch.tensor(y), seed)


def diabetes(seed):
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True)
    xtr, ytr, xte, yte = _split(torch.tensor(X, dtype=torch.float32),
                                torch.tensor(y, dtype=torch.float32)[:, None], seed)
    mu, sd = ytr.mean(), ytr.std()
    return xtr, (ytr - mu) / sd, xte, (yte - mu) / sd


TASKS = {
    "digits": dict(data=digits, loss="cross_entropy", widths=(64, 64, 10),
                   lrs={"egn": 1.0, "adam": 1e-2, "sgd": 0.1}),
    "diabetes": dict(data=diabetes, loss="mse", widths=(10, 32, 1),
                     lrs={"egn": 1.0, "adam": 1e-2, "sgd": 0.05}),
}
#: EGN variants: (label, options); lambda = 1 throughout
EGN_VARIANTS = (
    ("egn", dict(damping=1.0)),
    ("egn+ls", dict(damping=1.0, line_search=True, alpha_max=8.0)),
    ("egn+ls+ad", dict(damping=1.0, line_search=True, adaptive_damping=True)),
)


def _mlp(widths):
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _metric(task, model, x, y):
    with torch.no_grad():
        out = model(x)
        if task["loss"] == "cross_entropy":
            return "test acc", float((out.argmax(1) == y).float().mean())
        return "test R^2", float(1 - (out - y).pow(2).sum() / (y - y.mean()).pow(2).sum())


def run_task(name, epochs, batch_size, seed):
    task = TASKS[name]
    xtr, ytr, xte, yte = task["data"](seed)
    # one untimed direction on a throwaway model: loading (or building) the compiled backend and
    # torch.func's first-call setup are not charged to the first optimizer's first epoch
    revgn.EGN(_mlp(task["widths"]), loss=task["loss"]).direction(xtr[:8], ytr[:8])
    rows = []
    runs = [(label, "egn", task["lrs"]["egn"], options) for label, options in EGN_VARIANTS]
    runs += [(k, k, lr, None) for k, lr in task["lrs"].items() if k != "egn"]
    for label, opt_name, lr, options in runs:
        torch.manual_seed(seed)
        model = _mlp(task["widths"])
        if opt_name == "egn":
            opt = revgn.EGN(model, lr=lr, loss=task["loss"], **options)
        elif opt_name == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=lr)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        history, elapsed, rhos = [], 0.0, []
        for epoch in range(epochs):
            perm = torch.randperm(len(xtr), generator=gen)
            t0 = time.perf_counter()
            for i in range(0, len(xtr), batch_size):
                xb, yb = xtr[perm[i:i + batch_size]], ytr[perm[i:i + batch_size]]
                if opt_name == "egn":
                    rho = opt.step(xb, yb).rho
                    if rho is not None and math.isfinite(rho):
                        rhos.append(rho)
                else:
                    opt.zero_grad(set_to_none=True)
                    mean_loss(model(xb), yb, task["loss"]).backward()
                    opt.step()
            elapsed += time.perf_counter() - t0
            with torch.no_grad():
                history.append((epoch + 1, elapsed, float(mean_loss(model(xtr), ytr,
                                                                    task["loss"]))))
        metric, value = _metric(task, model, xte, yte)
        row = dict(optimizer=label, lr=lr, options=options, history=history, metric=metric,
                   value=value)
        if opt_name == "egn":
            # what adaptive damping did: the damping it ended at, and the typical rho it saw
            row["final_damping"] = float(opt.param_groups[0]["damping"])
            row["median_rho"] = statistics.median(rhos) if rhos else None
        rows.append(row)
    return rows


def format_task(name, rows) -> str:
    epochs = [h[0] for h in rows[0]["history"]]
    # at most five columns, evenly spaced, always the first and the last epoch
    shown = sorted({epochs[round(k * (len(epochs) - 1) / 4)] for k in range(5)})
    head = "".join(f"{'ep ' + str(e):>16}" for e in shown)
    lines = [f"{name}: training loss (wall seconds) by epoch; {rows[0]['metric']} at the end",
             f"{'optimizer':<12}{'lr':>7}{head}{rows[0]['metric']:>12}"]
    for r in rows:
        cells = "".join(f"{h[2]:>9.4f} ({h[1]:4.1f})" for h in r["history"] if h[0] in shown)
        lines.append(f"{r['optimizer']:<12}{r['lr']:>7g}{cells}{r['value']:>12.3f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from revgn.cli.common import EXIT_STATUS, HelpFormatter, positive_int
    parser = argparse.ArgumentParser(
        prog="revgn egn-examples",
        description="EGN vs Adam vs SGD on scikit-learn's bundled digits (classification) and "
                    "diabetes (regression) data: training loss by epoch and by wall time, and the "
                    "test metric, as tables on stdout (and as JSON with --out).",
        epilog=EXIT_STATUS, formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=positive_int, default=10,
                        help="passes over each training set")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="examples per step")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits, init and batches")
    parser.add_argument("--quick", action="store_true", help="2 epochs, overriding --epochs (CI)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="also write every run (history, test metric, EGN's final damping "
                             "and median rho) as JSON to FILE")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    print("; ".join(f"{label}: {', '.join(f'{k}={v}' for k, v in options.items())}"
                    for label, options in EGN_VARIANTS))
    print(f"{epochs} epochs, batch {args.batch_size}, seed {args.seed}; loss: mean over the "
          f"training set, mse as 1/2 ||f - y||^2 per example")
    print()
    results = {}
    for name in TASKS:
        results[name] = run_task(name, epochs, args.batch_size, args.seed)
        print(format_task(name, results[name]))
        print()
    if args.out:
        from revgn.cli.common import write_record
        write_record(args.out, dict(epochs=epochs, batch_size=args.batch_size, seed=args.seed,
                                    history_columns=["epoch", "seconds", "train_loss"],
                                    tasks=results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``revgn demo``: RevMLP on scikit-learn's bundled digits with ExactGN, Adam and SGD."""
from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F

import revgn
from revgn.data import load_digits_dataset


def _make_optimizer(name, model, lr):
    if name == "gn":
        return revgn.ExactGN(model, lr=lr)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr)


def _train_step(name, opt, model, xb, yb):
    if name == "gn":
        opt.step(xb, yb)
        return
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(xb), yb).backward()
    opt.step()


def run(epochs: int = 5, batch_size: int = 128, bottleneck: int = 1024, depth: int = 2,
        seed: int = 0, lrs=None):
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("bottleneck", bottleneck), ("depth", depth)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    lrs = lrs or {"gn": 1.0, "adam": 1e-3, "sgd": 0.1}
    data = load_digits_dataset(seed)
    xtr, ytr, xte, yte = data.x_train, data.y_train, data.x_test, data.y_test
    # load (or build, the first time) the fastest backend before anything is timed
    backend = revgn.backend.resolve("auto", xtr.device)
    rows = []
    for name, lr in lrs.items():
        torch.manual_seed(seed)
        model = revgn.RevMLP(xtr.shape[1], 10, depth=depth, bottleneck=bottleneck)
        opt = _make_optimizer(name, model, lr)
        gen = torch.Generator().manual_seed(seed)
        elapsed, steps = 0.0, 0
        with warnings.catch_warnings():
            # the paper's linear first block is rank deficient at this batch size, by design
            warnings.simplefilter("ignore", RuntimeWarning)
            for _ in range(epochs):
                perm = torch.randperm(len(xtr), generator=gen)
                for i in range(0, len(xtr), batch_size):
                    idx = perm[i:i + batch_size]
                    t0 = time.perf_counter()
                    _train_step(name, opt, model, xtr[idx], ytr[idx])
                    elapsed += time.perf_counter() - t0
                    steps += 1
        with torch.no_grad():
            train_loss = F.cross_entropy(model(xtr), ytr).item()
            test_acc = (model(xte).argmax(1) == yte).float().mean().item()
        rows.append(dict(optimizer=name, lr=lr, train_loss=train_loss, test_acc=test_acc,
                         ms_per_step=1e3 * elapsed / steps))
    return rows, backend, (len(xtr), len(xte))


def format_table(rows) -> str:
    lines = [f"{'optimizer':<10}{'lr':>8}{'train loss':>12}{'test acc':>10}{'ms/step':>10}"]
    for r in rows:
        lines.append(f"{r['optimizer']:<10}{r['lr']:>8g}{r['train_loss']:>12.4f}"
                     f"{r['test_acc']:>10.3f}{r['ms_per_step']:>10.2f}")
    return "\n".join(lines)


def main(args) -> int:
    rows, backend, (n_train, n_test) = run(epochs=args.epochs, batch_size=args.batch_size,
                                           bottleneck=args.bottleneck, depth=args.depth,
                                           seed=args.seed)
    print(f"RevMLP(64 -> 10, depth {args.depth}, bottleneck {args.bottleneck}) on scikit-learn "
          f"digits ({n_train} train / {n_test} test), batch {args.batch_size}, {args.epochs} "
          f"epochs, {torch.get_num_threads()} threads")
    print(format_table(rows))
    print(f"(ExactGN backend: {backend})")
    if args.out:
        from revgn.cli.common import write_record
        write_record(args.out, dict(epochs=args.epochs, batch_size=args.batch_size,
                                    bottleneck=args.bottleneck, depth=args.depth, seed=args.seed,
                                    n_train=n_train, n_test=n_test, backend=backend, rows=rows))
    return 0

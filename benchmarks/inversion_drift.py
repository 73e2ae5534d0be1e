"""Inversion drift against depth: ``||inverse(stream(x)) - x|| / ||x||`` in float32.

    python benchmarks/inversion_drift.py --out docs/figures/inversion_drift.png

The GN sweep rebuilds every block's input by inverting the blocks above it, so this is the error
of the activations the deepest solve sees. Weights are drawn at several scales (the paper's
init_std 1e-3, and larger, as after training).
"""
import argparse
import json

import torch

import revgn


def drift(depth, init_std, n=128, d=64, M=256, activation="relu", seed=0):
    torch.manual_seed(seed)
    model = revgn.RevMLP(d, 10, depth=depth, bottleneck=M, activation=activation,
                         init_std=init_std)
    x = torch.randn(n, d)
    with torch.no_grad():
        rebuilt = model.inverse(model.stream(x))
        ref = model.double().inverse(model.double().stream(x.double()))
    return float((rebuilt.double() - x.double()).norm() / x.norm()), float(
        (ref - x.double()).norm() / x.norm())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--stds", type=float, nargs="+", default=[1e-3, 3e-2, 1e-1])
    args = parser.parse_args()
    table = {std: [drift(L, std)[0] for L in args.depths] for std in args.stds}
    print("depth " + "".join(f"{'std=' + format(s, 'g'):>14}" for s in args.stds))
    for i, L in enumerate(args.depths):
        print(f"{L:5d} " + "".join(f"{table[s][i]:14.2e}" for s in args.stds))
    if args.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        for s in args.stds:
            ax.loglog(args.depths, table[s], "o-", label=f"init_std={s:g}")
        ax.set_xlabel("depth L (blocks)")
        ax.set_ylabel("relative inversion error (float32)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out, dpi=110)
        with open(args.out.rsplit(".", 1)[0] + ".json", "w") as f:
            json.dump({"depths": args.depths, "errors": {str(k): v for k, v in table.items()}},
                      f, indent=1)


if __name__ == "__main__":
    main()

"""Figures: train/test curves with seed bands, and diagnostic panels."""
from __future__ import annotations

import collections

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _grouped(runs, key):
    groups = collections.OrderedDict()
    for run in runs:
        if all(key in row and row[key] is not None for row in run["history"]):
            groups.setdefault(run["label"], []).append(run)
    return groups


def _band(ax, runs, key, label):
    epochs = [row["epoch"] for row in runs[0]["history"]]
    values = np.array([[row[key] for row in run["history"]] for run in runs], dtype=float)
    mean = values.mean(0)
    line, = ax.plot(epochs, mean, label=label)
    if len(runs) > 1:
        ax.fill_between(epochs, values.min(0), values.max(0), alpha=0.25, color=line.get_color())


def curves(result, path):
    """Train and test loss (and accuracy when there is one) against epochs, one line per
    optimizer, shaded between the seeds' minimum and maximum."""
    plt = _plt()
    keys = ["train_loss", "test_loss"]
    if all(row.get("test_acc") is not None for run in result["runs"] for row in run["history"]):
        keys.append("test_acc")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.3))
    for ax, key in zip(np.atleast_1d(axes), keys):
        for label, runs in _grouped(result["runs"], key).items():
            _band(ax, runs, key, label)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        if "loss" in key:
            ax.set_yscale("log")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(f"{result['experiment']} ({result['config']['dataset']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def diagnostics_panels(result, path):
    """NTK similarity to init, per-block CKA to init, weight cosine: whichever were tracked."""
    plt = _plt()
    runs = result["runs"]
    panels = []
    if any("ntk_similarity" in r["history"][-1] for r in runs):
        panels.append(("ntk_similarity", "NTK similarity to init"))
    if any("cka" in r["history"][-1] for r in runs):
        panels.append(("cka", "CKA of each block to init"))
    if any("weight_cosine" in r["history"][-1] for r in runs):
        panels.append(("weight_cosine", "weight cosine to init"))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.3))
    for ax, (key, title) in zip(np.atleast_1d(axes), panels):
        for label, group in _grouped(runs, key).items():
            if key == "cka":
                blocks = len(group[0]["history"][0]["cka"])
                for b in range(blocks):
                    epochs = [row["epoch"] for row in group[0]["history"]]
                    values = np.mean([[row["cka"][b] for row in r["history"]] for r in group], 0)
                    ax.plot(epochs, values, label=f"{label} block {b + 1}")
            else:
                _band(ax, group, key, label)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def batch_change_hist(result, path):
    plt = _plt()
    runs = [r for r in result["runs"] if "batch_loss_change" in r]
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(4.6, 3.3))
    by = collections.defaultdict(list)
    for r in runs:
        by[r["label"]] += r["batch_loss_change"]
    for label, values in by.items():
        ax.plot(np.arange(len(values)), values, lw=0.8, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss change on the step's batch (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def arbel_panel(result, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for opt in ("gn", "gd"):
        rows = [r for r in result["runs"] if r["optimizer"] == opt]
        stds = sorted({r["init_std"] for r in rows})
        test = [np.mean([r["history"][-1]["test_loss"] for r in rows if r["init_std"] == s])
                for s in stds]
        refit = [np.mean([r["refit_test_loss"] for r in rows if r["init_std"] == s]) for s in stds]
        line, = ax.loglog(stds, test, "o-", label=f"{opt} test")
        ax.loglog(stds, refit, "s--", color=line.get_color(), label=f"{opt} last-layer refit")
    ax.set_xlabel("hidden-layer init std")
    ax.set_ylabel("test MSE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True

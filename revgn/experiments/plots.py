"""Figures (matplotlib, Agg): train/test curves with seed bands, diagnostic panels, the per-batch
loss change, and Arbel et al.'s init-scale sweep. Each function writes one PNG and returns
whether it drew anything."""
from __future__ import annotations

import os

import numpy as np

from revgn.experiments.report import grouped


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _series(run, get):
    rows = [row for row in run["history"] if get(row) is not None]
    return [row["epoch"] for row in rows], [get(row) for row in rows]


def _band(ax, runs, get, label, log=False):
    """Mean over seeds, shaded between the seeds' minimum and maximum."""
    epochs, _ = _series(runs[0], get)
    values = np.array([_series(r, get)[1] for r in runs], dtype=float)
    if values.size == 0:
        return
    line, = ax.plot(epochs, values.mean(0), label=label)
    if len(runs) > 1:
        ax.fill_between(epochs, values.min(0), values.max(0), alpha=0.25, color=line.get_color())
    if log:
        ax.set_yscale("log")


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return True


def _enough_colors(axes, runs):
    """tab20 instead of the 10-colour default when more than 10 groups share an axis."""
    if len(grouped(runs)) > 10:
        for ax in np.ravel(axes):
            ax.set_prop_cycle(color=_plt().cm.tab20.colors)


def _legend_label(groups, label) -> str:
    """The run's label, with the number of seeds its curve averages when that differs between
    the curves (``--sweep-seeds``)."""
    if len({len(group) for group in groups.values()}) == 1:
        return label
    n = len(groups[label])
    return f"{label} ({n} seed{'s' * (n > 1)})"


def curves(result, path) -> bool:
    """Train and test loss (and test accuracy for classification) against epochs."""
    plt = _plt()
    runs = result["runs"]
    keys = ["train_loss", "test_loss"]
    if any(row.get("test_acc") is not None for r in runs for row in r["history"]):
        keys.append("test_acc")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.3), squeeze=False)
    _enough_colors(axes, runs)
    groups = grouped(runs)
    for ax, key in zip(axes[0], keys):
        for label, group in groups.items():
            _band(ax, group, lambda row, key=key: row.get(key), _legend_label(groups, label),
                  log="loss" in key)
        ax.set_xlabel("step" if result["config"].get("full_batch") else "epoch")
        ax.set_title(key.replace("_", " "))
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{result['experiment']} ({result['config']['dataset']})", fontsize=10)
    return _save(fig, path)


def curves_by_time(result, path) -> bool:
    """Train and test loss against cumulative training seconds (evaluation excluded), mean over
    seeds at each evaluated epoch: drawn for the experiments that compare optimizers of very
    different cost per step (EGN, SGN)."""
    if not any(r["optimizer"] in ("egn", "sgn") for r in result["runs"]):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8.8, 3.3), squeeze=False)
    _enough_colors(axes, result["runs"])
    groups = grouped(result["runs"])
    for ax, key in zip(axes[0], ("train_loss", "test_loss")):
        for label, group in groups.items():
            rows = [[row for row in r["history"] if row.get(key) is not None] for r in group]
            seconds = np.mean([[row["seconds"] for row in rs] for rs in rows], axis=0)
            values = np.mean([[row[key] for row in rs] for rs in rows], axis=0)
            ax.plot(seconds, values, label=_legend_label(groups, label))
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_yscale("log")
        ax.set_xlabel("training seconds (mean over seeds)")
        ax.set_title(key.replace("_", " ") + " against wall time")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{result['experiment']} ({result['config']['dataset']})", fontsize=10)
    return _save(fig, path)


def diagnostics_panels(result, path) -> bool:
    """NTK similarity to init, kernel velocity, per-block CKA to init, weight cosine to init:
    whichever were tracked."""
    runs = result["runs"]
    tracked = {k for r in runs for k in r["history"][-1]}
    panels = [(k, t) for k, t in (("ntk_similarity", "NTK similarity to init"),
                                  ("ntk_direction_similarity",
                                   "NTK similarity to init, authors' form cos(K0 u, K u)"),
                                  ("ntk_velocity", "NTK velocity (distance / epoch)"),
                                  ("cka", "linear CKA of each block to init"),
                                  ("weight_cosine", "weight cosine to init"))
              if k in tracked]
    if not panels:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.3), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for label, group in grouped(runs).items():
            if key == "cka":
                for b in range(len(group[0]["history"][0]["cka"])):
                    _band(ax, group, lambda row, b=b: row["cka"][b], f"{label} block {b + 1}")
            elif key == "weight_cosine":
                _band(ax, group, lambda row: row["weight_cosine"]["all"], label)
            else:
                _band(ax, group, lambda row, key=key: row.get(key), label,
                      log=key == "ntk_velocity")
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def batch_change(result, path) -> bool:
    """Percent loss change on the batch each step was taken on, against the step (mean over
    seeds; with 50 steps or more also a running mean over 10 steps)."""
    groups = {label: [r["batch_loss_change"] for r in group if "batch_loss_change" in r]
              for label, group in grouped(result["runs"]).items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.3))
    for label, series in groups.items():
        n = min(len(s) for s in series)
        mean = np.mean([s[:n] for s in series], axis=0)
        line, = ax.plot(np.arange(n), mean, lw=0.6, alpha=0.35 if n >= 50 else 1.0,
                        marker="." if n < 50 else None, label=label)
        if n >= 50:  # a running mean over 10 steps, on top of the raw series
            smooth = np.convolve(mean, np.ones(10) / 10, mode="valid")
            ax.plot(np.arange(9, n), smooth, lw=1.2, color=line.get_color())
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss change on the step's batch (%)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def arbel(result, path) -> bool:
    """Left: final test MSE (solid), the test MSE of the readout refit on the trained features
    (dashed) and of the random-features refit on the initial ones (black dotted) against the
    init std, mean over seeds; a red ring marks an init std where some run of that group hit
    its step cap. Right: training loss against steps (mean over seeds), colored by init std,
    one line style per group, with the stopping threshold."""
    runs = result["runs"]
    if not runs:
        return False
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    groups = grouped(runs, "group")
    stds = sorted({r["init_std"] for r in runs})
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(stds)))
    styles = ["-", "--", ":", "-."]
    first = next(iter(groups.values()))
    rf = [np.mean([r["rf_test_loss"] for r in first if r["init_std"] == s]) for s in stds]
    left.loglog(stds, rf, "k:", marker="^", label="random features (init refit)")
    for (group, members), style in zip(groups.items(), styles * len(groups)):
        at = {s: [r for r in members if r["init_std"] == s] for s in stds}
        test = [np.mean([r["test_loss"] for r in at[s]]) for s in stds]
        refit = [np.mean([r["refit_test_loss"] for r in at[s]]) for s in stds]
        line, = left.loglog(stds, test, "o-", label=f"{group} test")
        left.loglog(stds, refit, "s--", color=line.get_color(), label=f"{group} refit readout")
        capped = [i for i, s in enumerate(stds) if not all(r["converged"] for r in at[s])]
        if capped:
            left.scatter([stds[i] for i in capped], [test[i] for i in capped], s=120,
                         facecolors="none", edgecolors="r", zorder=3)
        for s, color in zip(stds, colors):
            for r in at[s]:
                steps, loss = _series(r, lambda row: row["train_loss"])
                right.plot(np.array(steps) + 1, loss, style, color=color, lw=0.8, alpha=0.7)
    for group, style in zip(groups, styles * len(groups)):
        right.plot([], [], style, color="gray", label=group)
    for s, color in zip(stds, colors):
        right.plot([], [], "-", color=color, label=f"std {s:g}")
    left.scatter([], [], s=120, facecolors="none", edgecolors="r", label="some run hit its cap")
    right.set_xscale("log")
    right.set_yscale("log")
    cfg = result["config"]
    right.set_title(f"runs stop at {cfg['rel_tol']:g} x their initial loss", fontsize=9)
    left.set_xlabel("hidden-layer init std")
    left.set_ylabel("test MSE")
    left.legend(fontsize=6)
    right.set_xlabel("step + 1")
    right.set_ylabel("training loss (one line per run)")
    right.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def draw_all(result, out_dir) -> list[str]:
    """Every figure that applies to ``result``; returns the file names written."""
    if result["experiment"] == "arbel-regimes":
        figures = [("arbel.png", arbel)]
    else:
        figures = [("curves.png", curves), ("time.png", curves_by_time),
                   ("diagnostics.png", diagnostics_panels),
                   ("batch_change.png", batch_change)]
    return [name for name, fn in figures if fn(result, os.path.join(out_dir, name))]

"""``revgn experiment NAME``: the papers' experiments, one command each (DESIGN §5).

Each writes ``DIR/results.json`` (``{"experiment", "config", "runs": [{"optimizer", "seed",
"history": [{"epoch", "train_loss", "train_acc", "test_loss", "test_acc", ...}]}]}``), PNG
figures, and prints a summary table. Finished runs are checkpointed atomically under
``DIR/runs/``; running the same command again skips them (resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from revgn.data import DATASETS, load_dataset
from revgn.experiments import arbel, plots
from revgn.experiments.progress import Progress
from revgn.experiments.registry import EXPERIMENTS
from revgn.experiments.training import run

NAMES = tuple(EXPERIMENTS) + ("arbel-regimes",)


def build_parser():
    p = argparse.ArgumentParser(prog="revgn experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=NAMES)
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--bottleneck", type=int, default=None)
    p.add_argument("--width", type=int, default=None,
                   help="arbel-regimes: hidden units of the student (paper: 5000)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="a CI-sized run (seconds)")
    p.add_argument("--out", required=True)
    return p


def make_config(args) -> dict:
    quick = args.quick
    cfg = dict(
        experiment=args.name, dataset=args.dataset, quick=quick,
        epochs=args.epochs or (2 if quick else 30),
        seeds=args.seeds or ([0] if quick else [42, 43, 44]),
        batch_size=args.batch_size or (128 if quick else 256),
        model=dict(depth=2, bottleneck=args.bottleneck or (128 if quick else 1024),
                   init_std=1e-3),
        adam_lr=1e-3, sgd_lr=0.1, device=args.device,
        notes=["model sizes scaled down for CPU (paper: bottleneck 8000, batch 1024); Adam 1e-3 "
               "instead of the paper's 1e-4 for the short runs"],
    )
    if args.name == "arbel-regimes":
        cfg.update(teacher_train=500, teacher_test=2000 if quick else 10000,
                   init_stds=[0.1, 3.0] if quick else [0.03, 0.3, 1.0, 3.0, 10.0],
                   width=args.width or (100 if quick else 1000),
                   steps=args.epochs or (5 if quick else 100))
    return cfg


def _subset(data, cfg):
    if cfg["quick"]:
        data.x_train, data.y_train = data.x_train[:512], data.y_train[:512]
        data.x_test, data.y_test = data.x_test[:256], data.y_test[:256]
        data.notes.append("quick: 512 train / 256 test examples")
    if cfg["experiment"] == "fullbatch":
        data.x_train, data.y_train = data.x_train[:1024], data.y_train[:1024]
        data.notes.append(f"full batch: the first {len(data.x_train)} training examples")
    return data


def _atomic_json(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _run_all(specs_or_grid, runner, out_dir, label):
    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    results = []
    progress = Progress(len(specs_or_grid), label)
    for key, job in specs_or_grid:
        path = os.path.join(out_dir, "runs", f"{key}.json")
        if os.path.exists(path):
            with open(path) as f:
                results.append(json.load(f))
            progress.update(1, f"{key} (done before)")
            continue
        result = runner(job, progress)
        _atomic_json(path, result)
        results.append(result)
    progress.close()
    return results


def summary(result) -> str:
    lines = [f"{result['experiment']} on {result['config']['dataset']}: final epoch, mean over "
             f"seeds", f"{'run':<24}{'train loss':>12}{'test loss':>12}{'test acc':>10}"
             f"{'seconds':>9}"]
    groups = {}
    for r in result["runs"]:
        groups.setdefault(r["label"], []).append(r)
    for label, runs in groups.items():
        last = [r["history"][-1] for r in runs]
        mean = lambda k: sum(row[k] for row in last) / len(last)  # noqa: E731
        acc = f"{mean('test_acc'):>10.3f}" if last[0].get("test_acc") is not None else f"{'-':>10}"
        extra = ""
        if "refit_test_loss" in runs[0]:
            extra = f"  refit test {sum(r['refit_test_loss'] for r in runs) / len(runs):.4g}"
        lines.append(f"{label:<24}{mean('train_loss'):>12.4g}{mean('test_loss'):>12.4g}{acc}"
                     f"{mean('seconds'):>9.1f}{extra}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = make_config(args)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    if args.name == "arbel-regimes":
        grid, data = arbel.runs(cfg)
        jobs = [(f"{opt}-std{std:g}-seed{seed}", (opt, std, seed)) for opt, std, seed in grid]

        def runner(job, progress):
            out = arbel.run_one(*job, steps=cfg["steps"], width=cfg["width"], data=data)
            progress.update(1, out["label"])
            return out
        runs = _run_all(jobs, runner, args.out, args.name)
        extra, figures = {}, []
        if plots.arbel_panel({"runs": runs}, os.path.join(args.out, "arbel.png")):
            figures.append("arbel.png")
    else:
        data = _subset(load_dataset(args.dataset, args.data_dir), cfg)
        cfg["notes"] += data.notes
        specs, extra = EXPERIMENTS[args.name](cfg)
        runs = _run_all([(s.key, s) for s in specs],
                        lambda s, p: run(s, data, args.device, p), args.out, args.name)
        figures = []
    result = dict(experiment=args.name, config=cfg, runs=runs, **extra)
    if args.name != "arbel-regimes":
        plots.curves(result, os.path.join(args.out, "curves.png"))
        figures.append("curves.png")
        if plots.diagnostics_panels(result, os.path.join(args.out, "diagnostics.png")):
            figures.append("diagnostics.png")
        if plots.batch_change_hist(result, os.path.join(args.out, "batch_change.png")):
            figures.append("batch_change.png")
    result["figures"] = figures
    result["seconds"] = time.perf_counter() - t0
    _atomic_json(os.path.join(args.out, "results.json"), result)
    print(summary(result))
    print(f"wrote {args.out}/results.json and {', '.join(figures)}", file=sys.stderr)
    return 0

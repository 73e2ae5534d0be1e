"""Command line and configuration of ``revgn experiment``.

Defaults are sized for a CPU and say so in ``config["notes"]``; ``--paper`` restores the paper's
sizes and hyperparameters (Buffelli et al., DESIGN §5): bottleneck 8000, batch 1024, 100
epochs, Adam 1e-4 (1e-5 for CIFAR-10 full batch), SGD 0.1 (0.01 CIFAR-10), depth 2 (6 CIFAR-10).
"""
from __future__ import annotations

import argparse

from revgn.data import DATASETS

PAPER = dict(bottleneck=8000, batch_size=1024, epochs=100, adam_lr=1e-4, seeds=[42, 43, 44])
CPU = dict(bottleneck=1024, batch_size=256, epochs=30, adam_lr=1e-3, seeds=[42, 43, 44])
QUICK = dict(bottleneck=128, batch_size=128, epochs=2, adam_lr=1e-3, seeds=[0])
QUICK_EXAMPLES = (512, 256)  # training, test examples of a --quick run


def build_parser(names) -> argparse.ArgumentParser:
    from revgn.cli.common import EXIT_STATUS, HelpFormatter, positive_float, positive_int
    p = argparse.ArgumentParser(
        prog="revgn experiment",
        description="The papers' experiments (docs/EXPERIMENTS.md). Each writes DIR/results.json, "
                    "PNG figures and a summary table; finished runs are kept under DIR/runs/ and "
                    "skipped when the same command runs again. Defaults are sized for a CPU.",
        epilog=EXIT_STATUS, formatter_class=HelpFormatter)
    p.add_argument("name", choices=names, help="the experiment")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="default: digits (teacher for arbel-regimes)")
    p.add_argument("--data-dir", default=None,
                   help="MNIST IDX or CIFAR-10 python-batches folder (default for MNIST: "
                        "$REVGN_MNIST_DIR, else shared/data/mnist beside the checkout)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="default: 30, 2 with --quick, 100 with --paper (arbel-regimes: GN "
                        "steps, default 100, 5 with --quick)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="one run per seed; default: 42 43 44 (0 with --quick)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="default: 256, 128 with --quick, 1024 with --paper")
    p.add_argument("--bottleneck", type=positive_int, default=None,
                   help="inverted bottleneck M; default: 1024, 128 with --quick, 8000 with --paper")
    p.add_argument("--depth", type=positive_int, default=None,
                   help="reversible blocks L; default: 2 (6 for cifar10)")
    p.add_argument("--gn-lr", type=positive_float, default=None,
                   help="GN learning rate (default: the experiment's, per_block scaling)")
    p.add_argument("--adam-lr", type=positive_float, default=None,
                   help="default: 1e-3 (--paper: 1e-4, 1e-5 for CIFAR-10 full batch)")
    p.add_argument("--adam-lrs", type=positive_float, nargs="+", default=None, metavar="LR",
                   help="an Adam learning-rate sweep: one Adam run per rate and seed, labelled "
                        "'adam lr=LR' (replaces --adam-lr; the first rate is the one the switch "
                        "experiment uses)")
    p.add_argument("--eval-every", type=positive_int, default=None, metavar="K",
                   help="evaluate the training and test sets every K epochs (full batch: "
                        "steps) and at the last (default: 1); full-batch runs still record the "
                        "training loss of every step (the loss before the next step)")
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="a line added to config['notes'] in results.json (repeatable): how and "
                        "where the run was made; it does not change the runs, so a folder "
                        "resumes with or without it")
    p.add_argument("--sgd-lr", type=positive_float, default=None,
                   help="default: 0.1 (0.01 for cifar10)")
    p.add_argument("--width", type=positive_int, default=None,
                   help="arbel-regimes: hidden units of the student (default: 1000, 100 with "
                        "--quick; paper: 5000)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the runs train (cuda needs a visible GPU)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--paper", action="store_true",
                      help="the paper's sizes and hyperparameters (GPU-sized)")
    size.add_argument("--quick", action="store_true", help="a CI-sized run (seconds)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for results.json, the figures and runs/ (created; the same "
                        "command again resumes there)")
    return p


def _pick(value, default):
    return default if value is None else value


def make_config(args) -> dict:
    """Every setting the runs depend on, resolved from the flags and the dataset."""
    if args.quick and args.paper:
        from revgn.cli.common import UsageError
        raise UsageError("--quick and --paper exclude each other")
    arbel = args.name == "arbel-regimes"
    dataset = args.dataset or ("teacher" if arbel else "digits")
    base = dict(experiment=args.name, dataset=dataset, data_dir=args.data_dir, quick=args.quick,
                paper=args.paper, device=args.device,
                seeds=_pick(args.seeds, (QUICK if args.quick else CPU)["seeds"]))
    return dict(base, **(arbel_config(args) if arbel else revmlp_config(args, dataset)))


def revmlp_config(args, dataset) -> dict:
    """Model, batch and optimizer settings of the reversible-MLP experiments."""
    size = QUICK if args.quick else PAPER if args.paper else CPU
    cifar = dataset == "cifar10"
    adam_lr = 1e-5 if args.paper and cifar and args.name == "fullbatch" else size["adam_lr"]
    adam_lrs = list(args.adam_lrs) if args.adam_lrs else [_pick(args.adam_lr, adam_lr)]
    if args.adam_lrs and args.adam_lr is not None:
        from revgn.cli.common import UsageError
        raise UsageError("--adam-lr and --adam-lrs exclude each other")
    if len(set(adam_lrs)) != len(adam_lrs):
        from revgn.cli.common import UsageError
        raise UsageError(f"--adam-lrs repeats a rate: {adam_lrs}")
    notes = []
    if not args.paper:
        notes.append(f"sized for a CPU: bottleneck {size['bottleneck']}, batch "
                     f"{size['batch_size']}, {size['epochs']} epochs, Adam {size['adam_lr']:g} "
                     "(paper: bottleneck 8000, batch 1024, 100 epochs, Adam 1e-4; --paper)")
    if args.quick:
        notes.append(f"quick: the first {QUICK_EXAMPLES[0]} training and {QUICK_EXAMPLES[1]} "
                     "test examples")
    return dict(
        epochs=_pick(args.epochs, size["epochs"]),
        batch_size=_pick(args.batch_size, size["batch_size"]),
        model=dict(depth=_pick(args.depth, 6 if cifar else 2),
                   bottleneck=_pick(args.bottleneck, size["bottleneck"]), init_std=1e-3),
        gn_lr=args.gn_lr,
        adam_lr=adam_lrs[0],
        adam_lrs=adam_lrs,
        eval_every=_pick(args.eval_every, 1),
        sgd_lr=_pick(args.sgd_lr, 0.01 if cifar else 0.1),
        notes=notes,
    )


def arbel_config(args) -> dict:
    """Arbel et al.'s sweep: student width, init scales, GN step sizes and step budgets."""
    quick = args.quick
    width = _pick(args.width, 100 if quick else 5000 if args.paper else 1000)
    steps = _pick(args.epochs, 5 if quick else 100)
    # GD needs far more steps than GN to approach its fixed point; compare both near it
    gd_steps = steps * (4 if quick else 50)
    return dict(
        teacher_train=500, teacher_test=2000 if quick else 10000,
        init_stds=[0.1, 3.0] if quick else [0.03, 0.3, 1.0, 3.0, 10.0],
        gn_lrs=[args.gn_lr] if args.gn_lr is not None else [1.0] if quick else [1.0, 0.1],
        width=width, steps=steps, gd_steps=gd_steps,
        notes=[f"student: {width} SiLU units with 1/H output scaling (paper 5000); GN is "
               f"revgn.EGN (damping 1e-6) for {steps} steps; GD runs full batch at the largest "
               f"stable step for {gd_steps} steps; float64 on the CPU"],
    )

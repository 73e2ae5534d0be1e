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
                   help="default: 30, 2 with --quick, 100 with --paper (arbel-regimes: GN's "
                        "step cap, default 1000, 100 with --quick, 2e6 with --paper)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="one run per seed; default: 42 43 44 (0 with --quick)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="default: 256, 128 with --quick, 1024 with --paper")
    p.add_argument("--bottleneck", type=positive_int, default=None,
                   help="inverted bottleneck M; default: 1024, 128 with --quick, 8000 with --paper")
    p.add_argument("--depth", type=positive_int, default=None,
                   help="reversible blocks L; default: 2 (6 for cifar10)")
    p.add_argument("--gn-lr", type=positive_float, default=None,
                   help="GN learning rate (default: the experiment's, per_block scaling; "
                        "arbel-regimes: the authors' step size, EGN lr = it / n)")
    p.add_argument("--adam-lr", type=positive_float, default=None,
                   help="default: 1e-3 (--paper: 1e-4, 1e-5 for CIFAR-10 full batch)")
    p.add_argument("--adam-lrs", type=positive_float, nargs="+", default=None, metavar="LR",
                   help="an Adam learning-rate sweep: one Adam run per rate and seed, labelled "
                        "'adam lr=LR' (replaces --adam-lr; the first rate is the one the switch "
                        "experiment uses)")
    p.add_argument("--sweep-seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="the seeds of the baselines beyond the main pair: Adam's other rates "
                        "and SGD run on these seeds only, GN and Adam's first rate on every "
                        "--seeds seed (default: every seed)")
    p.add_argument("--eval-every", type=positive_int, default=None, metavar="K",
                   help="evaluate the training and test sets every K epochs (full batch: "
                        "steps) and at the last (default: 1); full-batch runs still record the "
                        "training loss of every step (the loss before the next step)")
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="a line added to config['notes'] in results.json (repeatable): how and "
                        "where the run was made; it does not change the runs, so a folder "
                        "resumes with or without it")
    sgd = p.add_mutually_exclusive_group()
    sgd.add_argument("--sgd-lr", type=positive_float, default=None,
                     help="default: 0.1 (0.01 for cifar10)")
    sgd.add_argument("--no-sgd", action="store_true",
                     help="leave the SGD baseline out (GN against Adam alone: a long run, say)")
    p.add_argument("--width", type=positive_int, default=None,
                   help="arbel-regimes: hidden units of the student (default: 1000, 100 with "
                        "--quick, 5000 with --paper)")
    p.add_argument("--init-stds", type=positive_float, nargs="+", default=None, metavar="STD",
                   help="arbel-regimes: the hidden layer's init std grid (paper: 0.01 0.1 0.5 1 "
                        "5 10 100)")
    p.add_argument("--rel-tol", type=positive_float, default=None,
                   help="arbel-regimes: every run stops when its training loss reaches REL_TOL "
                        "times its initial loss (default 1e-4, 1e-3 with --quick, 1e-8 with "
                        "--paper)")
    p.add_argument("--gd-steps", type=positive_int, default=None,
                   help="arbel-regimes: GD's step cap (default 50000, 1000 with --quick, 2e6 with "
                        "--paper)")
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
    regression = args.name == "egn-regression"
    dataset = args.dataset or ("teacher" if arbel else "diabetes" if regression else "digits")
    base = dict(experiment=args.name, dataset=dataset, data_dir=args.data_dir, quick=args.quick,
                paper=args.paper, device=args.device,
                seeds=_pick(args.seeds, (QUICK if args.quick else CPU)["seeds"]))
    if not arbel and any(v is not None for v in (args.init_stds, args.rel_tol, args.gd_steps)):
        from revgn.cli.common import UsageError
        raise UsageError("--init-stds, --rel-tol and --gd-steps are arbel-regimes options")
    if (arbel or regression) and args.sweep_seeds is not None:
        from revgn.cli.common import UsageError
        raise UsageError("--sweep-seeds is an option of the reversible-MLP experiments")
    if arbel:
        return dict(base, **arbel_config(args))
    if regression:
        return dict(base, **egn_regression_config(args))
    cfg = dict(base, **revmlp_config(args, dataset))
    if args.sweep_seeds is not None:
        cfg["sweep_seeds"] = _sweep_seeds(cfg, args.sweep_seeds)
    return cfg


def _sweep_seeds(cfg, sweep_seeds) -> list[int]:
    """``--sweep-seeds`` in the order of the seeds; refused when it is not among them or would
    change no run (an experiment with one Adam rate and no SGD, say)."""
    from revgn.cli.common import UsageError
    from revgn.experiments.registry import EXPERIMENTS
    seeds = cfg["seeds"]
    if not set(sweep_seeds) <= set(seeds):
        raise UsageError(f"--sweep-seeds {sweep_seeds} must be among the seeds {seeds}")
    cfg = dict(cfg, sweep_seeds=[s for s in seeds if s in sweep_seeds])
    seeds_of = {}
    for spec in EXPERIMENTS[cfg["experiment"]](cfg)[0]:
        seeds_of.setdefault(spec.label or spec.optimizer, set()).add(spec.seed)
    subset = set(cfg["sweep_seeds"])
    if subset != set(cfg["seeds"]) and subset not in seeds_of.values():
        raise UsageError(f"--sweep-seeds changes no run of {cfg['experiment']}: it applies to "
                         "Adam's rates after the first (--adam-lrs) and to SGD")
    return cfg["sweep_seeds"]


EGN_REGRESSION = dict(epochs=100, batch_size=32, width=64)


def egn_regression_config(args) -> dict:
    """Korbit et al.'s comparison (``registry.egn_regression``): a one-hidden-layer tanh MLP,
    mini-batch mean squared error; every rate is the experiment's own (no --adam-lr)."""
    from revgn.cli.common import UsageError
    if args.no_sgd or any(v is not None for v in (args.adam_lr, args.adam_lrs, args.sgd_lr,
                                                  args.gn_lr, args.bottleneck, args.depth)):
        raise UsageError("egn-regression sets its own rates and model: --adam-lr(s), "
                         "--sgd-lr, --no-sgd, --gn-lr, --bottleneck and --depth do not apply")
    epochs = _pick(args.epochs, 3 if args.quick else EGN_REGRESSION["epochs"])
    notes = ["EGN and SGN: lr 1, damping 1 (lambda of the mean loss), SGN at most 10 CG "
             "iterations; line search: stochastic Armijo on the batch (c 0.1, shrink 0.8, grow "
             "1.5, alpha_max 8); momentum: beta 0.9, bias-corrected; Adam and SGD over a "
             "learning-rate sweep",
             "the network and sizes are this library's choices, not Korbit et al.'s (their "
             "regression sets are not bundled here); --paper changes nothing for this "
             "experiment"]
    return dict(epochs=epochs, batch_size=_pick(args.batch_size, EGN_REGRESSION["batch_size"]),
                model=dict(arch="mlp", width=EGN_REGRESSION["width"]),
                eval_every=_pick(args.eval_every, 1), notes=notes)


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
    epochs = _pick(args.epochs, size["epochs"])
    batch_size = _pick(args.batch_size, size["batch_size"])
    bottleneck = _pick(args.bottleneck, size["bottleneck"])
    notes = []
    if not args.paper:
        notes.append(f"sized for a CPU: bottleneck {bottleneck}, batch {batch_size}, {epochs} "
                     f"epochs, Adam {', '.join(f'{lr:g}' for lr in adam_lrs)} (paper: "
                     "bottleneck 8000, batch 1024, 100 epochs, Adam 1e-4; --paper)")
    if args.quick:
        notes.append(f"quick: the first {QUICK_EXAMPLES[0]} training and {QUICK_EXAMPLES[1]} "
                     "test examples")
    if args.no_sgd:
        notes.append("no SGD baseline (--no-sgd)")
    return dict(
        epochs=epochs,
        batch_size=batch_size,
        model=dict(depth=_pick(args.depth, 6 if cifar else 2), bottleneck=bottleneck,
                   init_std=1e-3),
        gn_lr=args.gn_lr,
        adam_lr=adam_lrs[0],
        adam_lrs=adam_lrs,
        eval_every=_pick(args.eval_every, 1),
        sgd_lr=None if args.no_sgd else _pick(args.sgd_lr, 0.01 if cifar else 0.1),
        notes=notes,
    )


# Arbel et al.'s settings, from their code (github.com/MichaelArbel/Implicit-Bias-Gauss-Newton:
# configs/config.yaml, script.sh, training.py, core/optimizers/GN.py): a 5000-unit SiLU student,
# a 5-unit SiLU teacher with N(0, 1) parameters, 500 / 10,000 samples, init std grid
# {0.01, 0.1, 0.5, 1, 5, 10, 100} of the hidden weights and biases, readout 0, GN step 10 with
# eps = max(1e-7, s_min(J J^T)), stop at 1e-8 times the initial loss or 2e6 steps, seeds 1-5
ARBEL_PAPER = dict(width=5000, init_stds=[0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 100.0],
                   seeds=[1, 2, 3, 4, 5], gn_lrs=[10.0, 100.0], rel_tol=1e-8,
                   gn_max_steps=2_000_000, gd_max_steps=2_000_000, teacher_test=10000)
ARBEL_CPU = dict(width=1000, init_stds=[0.01, 0.1, 1.0, 10.0, 100.0], seeds=[42, 43, 44],
                 gn_lrs=[10.0, 100.0], rel_tol=1e-4, gn_max_steps=1000, gd_max_steps=50_000,
                 teacher_test=10000)
ARBEL_QUICK = dict(width=100, init_stds=[0.1, 10.0], seeds=[0], gn_lrs=[100.0], rel_tol=1e-3,
                   gn_max_steps=100, gd_max_steps=1000, teacher_test=1000)


def arbel_config(args) -> dict:
    """Arbel et al.'s sweep: student width, init scales, GN step sizes (the authors' units:
    EGN's lr is lr / n), the damping rule, the stopping rule and the step caps."""
    size = ARBEL_QUICK if args.quick else ARBEL_PAPER if args.paper else ARBEL_CPU
    width = _pick(args.width, size["width"])
    stds = list(_pick(args.init_stds, size["init_stds"]))
    gn_lrs = [args.gn_lr] if args.gn_lr is not None else list(size["gn_lrs"])
    rel_tol = _pick(args.rel_tol, size["rel_tol"])
    gn_cap = _pick(args.epochs, size["gn_max_steps"])
    gd_cap = _pick(args.gd_steps, size["gd_max_steps"])
    seeds = list(_pick(args.seeds, size["seeds"]))
    notes = [f"student: {width} SiLU units with 1/H output scaling (paper 5000), hidden weights "
             "and biases N(0, std^2), readout 0; teacher: 5 SiLU units, every parameter "
             "N(0, 1); teacher, samples and student drawn from each run's seed; float64 on "
             "the CPU (the authors: float32 on a GPU)",
             "GN: revgn.EGN with eps = max(1e-7, s_min(J J^T)) recomputed every step, s_min the "
             "smallest singular value of the n x n Gram of the network's Jacobian on the "
             f"training batch; step sizes {', '.join(f'{v:g}' for v in gn_lrs)} in the authors' "
             "units (EGN lr = step / n, n = 500)",
             "GD: full batch at the largest stable step measured at init, H / (2 (1 + "
             "E[phi^2])) (at width 1000: 500 at init std 0.01, 0.009 at 100); the authors' "
             "script passes step 10 to GD as well, not run here",
             f"stopping rule: every run stops when its training loss reaches {rel_tol:g} times "
             f"its initial loss (the authors: 1e-8); caps {gn_cap} GN steps and {gd_cap} GD "
             "steps; a run that hits its cap is marked unconverged",
             "random-features baseline: the readout refit by min-norm least squares on the "
             "initial hidden features; refit: the same on the trained ones"]
    if not args.paper:
        notes.append(f"sized for a CPU: width {width}, init stds "
                     f"{', '.join(f'{v:g}' for v in stds)}, seeds {seeds} (paper: --paper)")
    return dict(
        seeds=seeds,
        teacher=dict(units=5, dim=10, activation="silu", init_std=1.0),
        teacher_train=500, teacher_test=size["teacher_test"],
        width=width, init_stds=stds, readout_init="zero", hidden_init="normal(0, std^2)",
        gn_lrs=gn_lrs, gn_lr_units="authors' step size lam; EGN lr = lam / n",
        damping_rule="eps = max(damping_floor, s_min(J J^T)), each step",
        damping_floor=1e-7, gd_lr=None, rel_tol=rel_tol, gn_max_steps=gn_cap,
        gd_max_steps=gd_cap, loss="0.5 * mean (f - y)^2", dtype="float64", notes=notes,
    )


def command_line(cfg) -> list[str]:
    """The ``revgn experiment`` arguments (all but ``--out``) that rebuild ``cfg``, a config as
    results.json stores it: every setting that has a flag is given, so the runs it names do not
    depend on the defaults of the version that reads it. Arbel et al.'s two default GN step
    sizes have no flag (``--gn-lr`` takes one) and are left to the preset."""
    name = cfg["experiment"]
    argv = [name, "--dataset", cfg["dataset"]]
    if cfg.get("data_dir") is not None:
        argv += ["--data-dir", cfg["data_dir"]]
    argv += ["--paper"] if cfg.get("paper") else ["--quick"] if cfg.get("quick") else []
    if cfg.get("device", "cpu") != "cpu":
        argv += ["--device", cfg["device"]]
    argv += ["--seeds", *map(str, cfg["seeds"])]
    if name == "arbel-regimes":
        argv += ["--width", str(cfg["width"]), "--init-stds", *map(repr, cfg["init_stds"]),
                 "--rel-tol", repr(cfg["rel_tol"]), "--epochs", str(cfg["gn_max_steps"]),
                 "--gd-steps", str(cfg["gd_max_steps"])]
        if len(cfg["gn_lrs"]) == 1:
            argv += ["--gn-lr", repr(cfg["gn_lrs"][0])]
        return argv
    argv += ["--epochs", str(cfg["epochs"]), "--eval-every", str(cfg.get("eval_every", 1))]
    if not cfg.get("full_batch"):  # full batch: the batch is the training set, not a flag
        argv += ["--batch-size", str(cfg["batch_size"])]
    if name == "egn-regression":  # its model and rates are the experiment's own
        return argv
    argv += ["--depth", str(cfg["model"]["depth"]), "--bottleneck", str(cfg["model"]["bottleneck"]),
             "--adam-lrs", *map(repr, cfg["adam_lrs"])]
    argv += ["--no-sgd"] if cfg.get("sgd_lr") is None else ["--sgd-lr", repr(cfg["sgd_lr"])]
    if cfg.get("gn_lr") is not None:
        argv += ["--gn-lr", repr(cfg["gn_lr"])]
    if cfg.get("sweep_seeds"):
        argv += ["--sweep-seeds", *map(str, cfg["sweep_seeds"])]
    return argv

"""``revgn experiment NAME``: the papers' experiments, one command each (DESIGN §5;
docs/EXPERIMENTS.md).

Each writes ``DIR/results.json``::

    {"experiment", "config", "runs": [{"optimizer", "seed", "label", "lr", "settings",
                                       "history": [{"epoch", "train_loss", "train_acc",
                                                    "test_loss", "test_acc", "seconds", ...}]}],
     "figures", "seconds", ...experiment-specific fields}

PNG figures, and a summary table on stdout. Finished runs are checkpointed atomically under
``DIR/runs/``; the same command again skips them, and a run interrupted midway continues from
the state it saved every few minutes (``DIR/runs/KEY.partial.pt``).
"""
from __future__ import annotations

import os
import sys
import time

from revgn.cli.common import data_error, require_device
from revgn.data import load_dataset
from revgn.experiments import arbel, plots
from revgn.experiments.config import QUICK_EXAMPLES, build_parser, make_config
from revgn.experiments.progress import Progress
from revgn.experiments.registry import EXPERIMENTS, FULL_BATCH_EXAMPLES
from revgn.experiments.report import summary
from revgn.experiments.store import Job, atomic_json, run_jobs
from revgn.experiments.training import run

NAMES = tuple(EXPERIMENTS) + ("arbel-regimes",)


def prepare_data(cfg):
    """The dataset, cut to the quick subset and to the full batch where the experiment asks."""
    data = load_dataset(cfg["dataset"], cfg["data_dir"])
    if cfg["quick"]:
        data = data.subset(*QUICK_EXAMPLES)
    if cfg["experiment"] == "fullbatch":
        data = data.subset(FULL_BATCH_EXAMPLES)
        data.notes.append(f"full batch: the first {len(data.x_train)} training examples")
    return data


def _data_settings(cfg, data):
    return dict(dataset=cfg["dataset"], n_train=len(data.x_train), n_test=len(data.x_test),
                data_copy=data.source.get("copy"))


def _learning_rates(specs) -> dict:
    """Every learning rate the runs use, per optimizer (switch targets included)."""
    rates = {}
    for spec in specs:
        for s in (spec, spec.then):
            if s is not None:
                rates.setdefault(s.optimizer, set()).add(s.lr)
    return {name: sorted(lrs) for name, lrs in rates.items()}


def record_setup(cfg, data, specs=None) -> None:
    """Write into ``cfg`` what the results must state: the data read (``dataset``,
    ``train_size``, ``test_size``, ``data``: which copy, folder and files), the ``model``, the
    ``batch_size`` (the training set for full batch), ``epochs`` (``steps`` too for full batch),
    ``seeds`` and ``learning_rates`` (every rate, per optimizer)."""
    cfg["train_size"], cfg["test_size"] = len(data.x_train), len(data.x_test)
    cfg["data"] = data.source
    if specs is None:
        return
    cfg["learning_rates"] = _learning_rates(specs)
    outputs = data.num_classes or data.y_train.shape[1]
    if cfg["model"].get("arch") == "mlp":
        cfg["model"] = dict(arch="mlp", in_features=data.in_features, outputs=outputs,
                            activation="tanh", **{k: v for k, v in cfg["model"].items()
                                                  if k != "arch"})
    elif cfg["experiment"] != "egn":
        cfg["model"] = dict(arch="RevMLP", in_features=data.in_features, outputs=outputs,
                            first_block="linear", **cfg["model"])
    if all(s.batch_size is None for s in specs):
        cfg["full_batch"] = True
        cfg["batch_size"] = len(data.x_train)
        cfg["steps"] = cfg["epochs"]
        cfg["notes"].append(f"full batch: one step per epoch, so epochs = steps = "
                            f"{cfg['epochs']}")
    if cfg.get("eval_every", 1) > 1:
        cfg["notes"].append(
            f"the training and test sets are evaluated every {cfg['eval_every']} epochs and at the "
            "last (losses and accuracies are null in between" + (
                "; the training loss of every step is the loss before the next full-batch step)"
                if cfg.get("full_batch") else ")"))
    if len(cfg.get("adam_lrs", [])) > 1:
        cfg["notes"].append("Adam learning-rate sweep: " + ", ".join(
            f"{lr:g}" for lr in cfg["adam_lrs"]))


def revmlp_jobs(cfg, data):
    specs, extra = EXPERIMENTS[cfg["experiment"]](cfg)
    context = _data_settings(cfg, data)
    jobs = [Job(s.key, dict(spec=s.as_dict(), **context),
                lambda progress, checkpoint, s=s: run(s, data, cfg["device"], progress,
                                                      checkpoint),
                work=s.epochs, resumable=True)
            for s in specs]
    record_setup(cfg, data, specs)
    return jobs, extra


def arbel_jobs(cfg, data):
    """The runs of ``arbel-regimes``; each seed draws its own teacher and samples (``data`` is
    the first seed's, for the config)."""
    context = _data_settings(cfg, data)
    context["teacher"] = dict(cfg["teacher"], n_train=cfg["teacher_train"],
                              n_test=cfg["teacher_test"])
    per_seed = {}

    def job(key, settings):
        def fn(progress):
            seed = settings["seed"]
            if seed not in per_seed:
                per_seed[seed] = arbel.load(cfg, seed)
            out = arbel.run_one(data=per_seed[seed], **settings)
            progress.update(1, key)
            return out
        return Job(key, dict(settings, **context), fn)
    record_setup(cfg, data)
    cfg["learning_rates"] = dict(gn=list(cfg["gn_lrs"]),
                                 gd="the largest stable step, measured at init per run")
    return [job(key, settings) for key, settings in arbel.jobs(cfg)], {}


def main(argv=None) -> int:
    parser = build_parser(NAMES)
    args = parser.parse_args(argv)
    cfg = make_config(args)
    if cfg["experiment"] == "arbel-regimes" and cfg["dataset"] != "teacher":
        parser.error("arbel-regimes runs on the teacher-student data (--dataset teacher)")
    require_device(cfg["device"])
    t0 = time.perf_counter()
    if cfg["experiment"] == "arbel-regimes":
        data = arbel.load(cfg, cfg["seeds"][0])
        jobs, extra = arbel_jobs(cfg, data)
    else:
        try:
            data = prepare_data(cfg)
        except (FileNotFoundError, ValueError) as exc:  # missing or unreadable files
            raise data_error(exc, cfg["dataset"]) from None
        jobs, extra = revmlp_jobs(cfg, data)
    os.makedirs(args.out, exist_ok=True)
    cfg["notes"] += data.notes + args.note
    progress = Progress(sum(j.work for j in jobs), cfg["experiment"])
    runs = run_jobs(jobs, args.out, progress)
    progress.close()
    result = dict(experiment=cfg["experiment"], config=cfg, runs=runs, **extra)
    result["figures"] = plots.draw_all(result, args.out)
    result["seconds"] = time.perf_counter() - t0
    atomic_json(os.path.join(args.out, "results.json"), result)
    print(summary(result))
    print(f"wrote {os.path.join(args.out, 'results.json')} and {', '.join(result['figures'])}",
          file=sys.stderr)
    return 0

"""Summary tables printed after an experiment: the last history row of every run, averaged over
seeds (``mean +- std`` across seeds when there are several)."""
from __future__ import annotations

import collections
import math
import statistics


def _cell(values, fmt="{:.4g}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))}+-{fmt.format(statistics.stdev(values))}"


def _table(header, rows) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def grouped(runs, key="label"):
    groups = collections.OrderedDict()
    for run in runs:
        groups.setdefault(run[key], []).append(run)
    return groups


def summary(result) -> str:
    """The run table of an experiment (``arbel_summary`` for arbel-regimes)."""
    if result["experiment"] == "arbel-regimes":
        return arbel_summary(result)
    cfg = result["config"]
    rows = []
    extra_cols = []
    if any("ntk_similarity" in r["history"][-1] for r in result["runs"]):
        extra_cols.append(("NTK sim", lambda last, run: last.get("ntk_similarity")))
    if any("ntk_direction_similarity" in r["history"][-1] for r in result["runs"]):
        extra_cols.append(("NTK sim (authors')",
                           lambda last, run: last.get("ntk_direction_similarity")))
    if any("cka" in r["history"][-1] for r in result["runs"]):
        extra_cols.append(("CKA last block", lambda last, run: last["cka"][-1]
                           if "cka" in last else None))
    if any("weight_cosine" in r["history"][-1] for r in result["runs"]):
        extra_cols.append(("weight cos", lambda last, run: last["weight_cosine"]["all"]
                           if "weight_cosine" in last else None))
    if any("batch_loss_change" in r for r in result["runs"]):
        extra_cols.append(("batch change %", lambda last, run: statistics.fmean(
            run["batch_loss_change"]) if "batch_loss_change" in run else None))
    groups = grouped(result["runs"])
    for label, runs in groups.items():
        last = [r["history"][-1] for r in runs]
        row = [label, _cell([l["train_loss"] for l in last]),
               _cell([l["test_loss"] for l in last]),
               _cell([l["test_acc"] for l in last], "{:.3f}"),
               _cell([l["seconds"] for l in last], "{:.1f}")]
        row += [_cell([fn(l, r) for l, r in zip(last, runs)], "{:.3g}") for _, fn in extra_cols]
        rows.append(row)
    header = ["run", "train loss", "test loss", "test acc", "seconds"] + [c for c, _ in extra_cols]
    counts = [len(runs) for runs in groups.values()]
    seeds = len(cfg["seeds"])
    title = (f"{result['experiment']} on {cfg['dataset']}: last epoch "
             f"({result['runs'][0]['history'][-1]['epoch']}), "
             + ("mean+-std over " if seeds > 1 else "") + f"{seeds} seed(s)")
    if len(set(counts)) > 1:  # --sweep-seeds: say how many seeds each row averages
        header.append("seeds")
        rows = [row + [n] for row, n in zip(rows, counts)]
        title += f" (Adam's other rates and SGD: seeds {cfg.get('sweep_seeds')})"
    text = title + "\n" + _table(header, rows)
    matched = equal_loss_summary(result)
    return text + ("\n\n" + matched if matched else "")


def at_training_loss(run, level):
    """``(epoch, test_loss, test_acc)`` where ``run``'s training loss first reaches ``level``;
    None if it never does. The epoch (step, in full batch) comes from every row that has a
    training loss, linear in log training loss between the last row above ``level`` and the
    first at or below it (rows with a non-finite loss skipped); the test loss and accuracy are
    linear in the epoch between the evaluated rows around it."""
    trained = [r for r in run["history"]
               if r["train_loss"] is not None and math.isfinite(r["train_loss"])]
    hit = next((i for i, r in enumerate(trained) if r["train_loss"] <= level), None)
    if hit is None:
        return None
    epoch = trained[hit]["epoch"]
    if hit > 0:
        a, b = trained[hit - 1], trained[hit]
        log = lambda v: math.log(max(v, 1e-300))  # noqa: E731
        t = (log(a["train_loss"]) - log(level)) / (log(a["train_loss"]) - log(b["train_loss"]))
        epoch = a["epoch"] + t * (b["epoch"] - a["epoch"])
    evaluated = [r for r in run["history"] if r.get("test_loss") is not None]
    before = [r for r in evaluated if r["epoch"] <= epoch]
    after = [r for r in evaluated if r["epoch"] >= epoch]
    if not before or not after:
        return epoch, None, None
    a, b = before[-1], after[0]
    t = 0.0 if b["epoch"] == a["epoch"] else (epoch - a["epoch"]) / (b["epoch"] - a["epoch"])
    return (epoch,) + tuple(None if a[k] is None or b[k] is None else a[k] + t * (b[k] - a[k])
                            for k in ("test_loss", "test_acc"))


def equal_loss_summary(result, reference="gn") -> str:
    """Generalization at equal fit: for each seed, every other run's test loss and accuracy at
    the point where its training loss first reached the ``reference`` run's final training loss
    (Buffelli et al.'s claim 2 compares optimizers that fit at different speeds; this separates
    fitting slower from generalizing worse). Empty when the experiment has no ``reference``
    run or nothing else."""
    groups = grouped(result["runs"])
    if reference not in groups or len(groups) < 2:
        return ""
    finals = {}
    for run in groups[reference]:
        evaluated = [r for r in run["history"] if r.get("test_loss") is not None]
        if (not evaluated or evaluated[-1]["train_loss"] is None
                or not math.isfinite(evaluated[-1]["train_loss"])):
            return ""  # a reference run without a finite final loss: nothing to match
        finals[run["seed"]] = evaluated[-1]
    rows = [[f"{reference} (final)", _cell([f["epoch"] for f in finals.values()], "{:.1f}"),
             _cell([f["train_loss"] for f in finals.values()]),
             _cell([f["test_loss"] for f in finals.values()]),
             _cell([f["test_acc"] for f in finals.values()], "{:.4f}"), len(finals)]]
    for label, runs in groups.items():
        if label == reference:
            continue
        hits = [at_training_loss(r, finals[r["seed"]]["train_loss"]) for r in runs
                if r["seed"] in finals]
        reached = [h for h in hits if h is not None]
        rows.append([label, _cell([h[0] for h in reached], "{:.1f}"), "",
                     _cell([h[1] for h in reached]), _cell([h[2] for h in reached], "{:.4f}"),
                     f"{len(reached)} of {len(hits)}"])
    header = ["run", "epoch", "train loss", "test loss", "test acc", "seeds reached"]
    title = (f"at equal training loss: where each run first reached {reference}'s final training "
             "loss of the same seed (the epoch from every recorded training loss, the test values "
             "interpolated between evaluated epochs)")
    return title + "\n" + _table(header, rows)


def arbel_summary(result) -> str:
    """Per init std: final train / test / refit-test MSE and steps for GN at each step size and
    GD, and the random-features baseline; ``*`` marks cells with runs that hit their step cap
    (unconverged), ``!`` runs that diverged."""
    groups = list(grouped(result["runs"], "group"))
    stds = sorted({r["init_std"] for r in result["runs"]})
    header = ["init std", "RF test"] + [f"{g} {col}" for g in groups
                                        for col in ("train", "test", "refit", "steps")]
    rows = []
    for std in stds:
        at = [r for r in result["runs"] if r["init_std"] == std]
        row = [f"{std:g}", _cell([r["rf_test_loss"] for r in at if r["group"] == groups[0]],
                                 "{:.2g}")]
        for g in groups:
            runs = [r for r in at if r["group"] == g]
            mark = ("!" if any(r["stop"] == "diverged" for r in runs) else
                    "*" if not all(r["converged"] for r in runs) else "")
            row += [_cell([r["train_loss"] for r in runs], "{:.2g}") + mark,
                    _cell([r["test_loss"] for r in runs], "{:.2g}"),
                    _cell([r["refit_test_loss"] for r in runs], "{:.2g}"),
                    _cell([r["steps"] for r in runs], "{:.0f}")]
        rows.append(row)
    cfg = result["config"]
    title = (f"arbel-regimes: width {cfg['width']}, runs stop at {cfg['rel_tol']:g} x the initial "
             f"training loss (caps: GN {cfg['gn_max_steps']}, GD {cfg['gd_max_steps']} steps; "
             f"* = some runs hit the cap, ! = diverged), test MSE on {cfg['teacher_test']} "
             f"examples, RF = readout refit on the initial features; {len(cfg['seeds'])} seed(s)")
    return title + "\n" + _table(header, rows)

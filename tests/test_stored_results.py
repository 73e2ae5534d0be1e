"""Every committed results.json (docs/results/) names runs that its own config rebuilds: the
command ``command_line(config)`` makes the same runs, key for key and setting for setting, so
running it on the folder reuses each stored run (and on an empty folder retrains each one)."""
import json
from pathlib import Path

import pytest

from revgn.experiments import arbel
from revgn.experiments.config import build_parser, command_line, make_config
from revgn.experiments.registry import EXPERIMENTS
from revgn.experiments.store import _canonical
from revgn.experiments.training import RunSpec

RESULTS = sorted((Path(__file__).resolve().parents[1] / "docs" / "results").rglob("results.json"))
# what a run's settings add about the data it read (checked against the config separately)
DATA_KEYS = {"data_copy", "dataset", "n_train", "n_test", "teacher"}


def _rebuilt(cfg):
    parser = build_parser(tuple(EXPERIMENTS) + ("arbel-regimes",))
    return make_config(parser.parse_args(command_line(cfg) + ["--out", "unused"]))


def _expected_runs(cfg):
    if cfg["experiment"] == "arbel-regimes":
        return {key: _canonical(settings) for key, settings in arbel.jobs(cfg)}
    specs, _ = EXPERIMENTS[cfg["experiment"]](cfg)
    return {spec.key: _canonical(spec.as_dict()) for spec in specs}


def _stored_runs(result):
    runs = {}
    for run in result["runs"]:
        settings = run["settings"]
        if result["experiment"] == "arbel-regimes":
            key = arbel.run_key(settings["optimizer"], settings["init_std"], settings["seed"],
                                settings["lr"])
            runs[key] = {k: v for k, v in settings.items() if k not in DATA_KEYS}
        else:
            spec = settings["spec"]
            runs[RunSpec(spec["optimizer"], spec["lr"], seed=spec["seed"],
                         label=spec["label"]).key] = spec
    return runs


def test_there_are_stored_results():
    assert len(RESULTS) >= 8, RESULTS


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: str(p.parent.relative_to(p.parents[2])))
def test_a_stored_config_rebuilds_exactly_its_runs(path):
    result = json.loads(path.read_text())
    cfg = result["config"]
    rebuilt = _rebuilt(cfg)
    for key in ("experiment", "dataset", "data_dir", "paper", "quick", "device", "seeds",
                "epochs", "eval_every", "adam_lrs", "sgd_lr", "gn_lr", "sweep_seeds", "width",
                "init_stds", "rel_tol", "gn_lrs", "gn_max_steps", "gd_max_steps"):
        assert rebuilt.get(key) == cfg.get(key), key
    assert _stored_runs(result) == _expected_runs(rebuilt)
    for run in result["runs"]:  # and every run read the data the config records
        assert run["settings"]["dataset"] == cfg["dataset"]
        assert (run["settings"]["n_train"], run["settings"]["n_test"]) == (
            cfg["train_size"], cfg["test_size"])


def test_command_line_round_trips_the_defaults_it_does_not_spell_out():
    # a full-batch config carries no --batch-size; Arbel's default pair of GN steps no --gn-lr
    full = make_config(build_parser(tuple(EXPERIMENTS)).parse_args(
        ["fullbatch", "--quick", "--out", "x"]))
    assert "--batch-size" not in command_line(dict(full, full_batch=True))
    arbel_cfg = _rebuilt(make_config(build_parser(("arbel-regimes",)).parse_args(
        ["arbel-regimes", "--paper", "--out", "x"])))
    assert arbel_cfg["gn_lrs"] == [10.0, 100.0] and "--gn-lr" not in command_line(arbel_cfg)
    assert _rebuilt(dict(arbel_cfg, gn_lrs=[3.0]))["gn_lrs"] == [3.0]


def test_a_changed_setting_is_caught():
    result = json.loads(next(p for p in RESULTS if p.parent.name == "mnist-fullbatch-paper")
                        .read_text())
    cfg = dict(result["config"], epochs=result["config"]["epochs"] - 1)
    assert _stored_runs(result) != _expected_runs(_rebuilt(cfg))
    cfg = dict(result["config"], seeds=result["config"]["seeds"][:-1])
    assert _stored_runs(result) != _expected_runs(_rebuilt(cfg))

"""The experiments' --quick variants: schema of results.json and the figures."""
import json

import pytest

from revgn.experiments import main


def _check(out, optimizers):
    result = json.loads((out / "results.json").read_text())
    assert result["experiment"] and result["config"]["quick"]
    assert {r["optimizer"] for r in result["runs"]} >= set(optimizers)
    for run in result["runs"]:
        assert "seed" in run and run["history"]
        for row in run["history"]:
            assert {"epoch", "train_loss", "train_acc", "test_loss", "test_acc"} <= set(row)
    for fig in result["figures"]:
        assert (out / fig).stat().st_size > 1000
    return result


@pytest.mark.parametrize("name,optimizers", [
    ("fullbatch", ["gn", "adam", "sgd"]),
    ("ntk-cka", ["gn", "adam"]),
    ("switch", ["gn", "adam"]),
    ("arbel-regimes", ["gn", "gd"]),
])
def test_quick_experiment(tmp_path, name, optimizers, capsys):
    assert main([name, "--quick", "--out", str(tmp_path)]) == 0
    result = _check(tmp_path, optimizers)
    assert result["figures"]
    assert "final epoch" in capsys.readouterr().out or name == "arbel-regimes"
    if name == "ntk-cka":
        last = result["runs"][0]["history"][-1]
        assert 0 < last["ntk_similarity"] <= 1 and len(last["cka"]) == 2


def test_rerun_resumes_finished_runs(tmp_path, capsys):
    main(["batch-loss-change", "--quick", "--out", str(tmp_path)])
    first = json.loads((tmp_path / "results.json").read_text())
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    main(["batch-loss-change", "--quick", "--out", str(tmp_path)])
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()} == stamp
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["runs"] == first["runs"]
    assert all("batch_loss_change" in r for r in again["runs"])

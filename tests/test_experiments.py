"""The experiments' --quick variants: results.json schema, figures, resuming, and the pieces."""
import json
import math

import pytest
import torch

import revgn
from revgn.data import load_dataset
from revgn.experiments import arbel, main
from revgn.experiments.config import build_parser, make_config
from revgn.experiments.progress import Progress
from revgn.experiments.registry import EXPERIMENTS
from revgn.experiments.store import Job, run_jobs

ROW_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"}


def _check(out, optimizers):
    result = json.loads((out / "results.json").read_text())
    assert {"experiment", "config", "runs", "figures", "seconds"} <= set(result)
    assert result["config"]["quick"] and result["config"]["notes"]
    assert {r["optimizer"] for r in result["runs"]} == set(optimizers)
    for run in result["runs"]:
        assert {"optimizer", "seed", "label", "lr", "history", "settings"} <= set(run)
        epochs = [row["epoch"] for row in run["history"]]
        assert epochs == sorted(epochs) and epochs[0] == 0
        for row in run["history"]:
            assert ROW_KEYS <= set(row)
            assert row["train_loss"] >= 0
            assert row["test_loss"] is None or row["test_loss"] >= 0
    assert result["figures"]
    for fig in result["figures"]:
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / fig).stat().st_size > 5000
    assert len(list((out / "runs").glob("*.json"))) == len(result["runs"])
    return result


def test_quick_fullbatch(tmp_path, capsys):
    assert main(["fullbatch", "--quick", "--out", str(tmp_path)]) == 0
    result = _check(tmp_path, ["gn", "adam", "sgd"])
    assert "curves.png" in result["figures"]
    assert result["full_batch_examples"] == 1024
    out = capsys.readouterr().out
    assert "fullbatch on digits" in out and "gn" in out and "sgd" in out
    for run in result["runs"]:
        first, last = run["history"][0], run["history"][-1]
        assert last["epoch"] == 2 and 0 <= last["test_acc"] <= 1
        assert run["settings"]["spec"]["batch_size"] is None  # one full batch per epoch
        if run["optimizer"] == "gn":  # two full-batch GN steps lower the training loss
            assert last["train_loss"] < first["train_loss"]
            assert 0 <= last["exact_fraction"] <= 1


def test_quick_ntk_cka(tmp_path):
    assert main(["ntk-cka", "--quick", "--out", str(tmp_path)]) == 0
    result = _check(tmp_path, ["gn", "adam"])
    assert "diagnostics.png" in result["figures"]
    for run in result["runs"]:
        first, last = run["history"][0], run["history"][-1]
        assert first["ntk_similarity"] == pytest.approx(1.0)
        assert first["cka"] == pytest.approx([1, 1])
        assert 0 < last["ntk_similarity"] <= 1 and len(last["cka"]) == 2
        assert first["ntk_direction_similarity"] == pytest.approx(1.0)
        assert 0 < last["ntk_direction_similarity"] < 1
        assert last["ntk_velocity"] >= 0


def test_quick_egn_regression(tmp_path, capsys):
    """Korbit et al.'s comparison: EGN, its ablations, SGN and the Adam / SGD sweeps on the
    bundled diabetes regression set, with loss against wall time."""
    assert main(["egn-regression", "--quick", "--out", str(tmp_path)]) == 0
    result = _check(tmp_path, ["egn", "sgn", "adam", "sgd"])
    assert {"curves.png", "time.png"} <= set(result["figures"])
    cfg = result["config"]
    assert cfg["dataset"] == "diabetes" and cfg["model"]["arch"] == "mlp"
    assert cfg["learning_rates"]["adam"] == [1e-3, 3e-3, 1e-2, 3e-2]
    labels = {r["label"] for r in result["runs"]}
    assert {"egn", "egn+ls", "egn+mom", "egn+ls+mom", "sgn", "sgn+ls"} <= labels
    for run in result["runs"]:
        assert run["history"][0]["test_acc"] is None  # regression: no accuracy
        assert all(row["seconds"] >= 0 for row in run["history"])
    by_label = {r["label"]: r for r in result["runs"]}
    momentum = by_label["egn+mom"]["settings"]["spec"]["options"]
    assert momentum == dict(damping=1.0, momentum=0.9)
    assert "egn-regression on diabetes" in capsys.readouterr().out
    from revgn.cli.common import UsageError
    with pytest.raises(UsageError, match="does not apply|do not apply"):
        main(["egn-regression", "--quick", "--adam-lr", "1e-3", "--out", str(tmp_path)])


def test_quick_arbel_regimes(tmp_path, capsys):
    assert main(["arbel-regimes", "--quick", "--out", str(tmp_path)]) == 0
    result = _check(tmp_path, ["gn", "gd"])
    cfg = result["config"]
    assert result["figures"] == ["arbel.png"] and cfg["dataset"] == "teacher"
    assert cfg["teacher"]["activation"] == "silu" and cfg["readout_init"] == "zero"
    assert {r["init_std"] for r in result["runs"]} == set(cfg["init_stds"])
    table = capsys.readouterr().out
    assert "arbel-regimes" in table and "RF test" in table
    for run in result["runs"]:
        first, last = run["history"][0], run["history"][-1]
        assert last["train_loss"] < first["train_loss"] and last["test_acc"] is None
        assert run["refit_test_loss"] == last["refit_test_loss"] > 0
        assert run["rf_test_loss"] == last["rf_test_loss"] > 0
        # the stopping rule: a run ends at the threshold or at its cap, and says which
        cap = cfg["gn_max_steps"] if run["optimizer"] == "gn" else cfg["gd_max_steps"]
        assert last["epoch"] == run["steps"] <= cap
        assert run["threshold"] == pytest.approx(cfg["rel_tol"] * run["initial_train_loss"])
        levels = [lv for lv in arbel.CROSSINGS if lv >= cfg["rel_tol"]]
        crossed = run["crossings"]
        assert set(crossed) <= {str(lv) for lv in levels}
        steps = [crossed[str(lv)]["step"] for lv in levels if str(lv) in crossed]
        assert steps == sorted(steps)
        for lv, c in crossed.items():
            assert c["train_loss"] <= float(lv) * run["initial_train_loss"]
        if run["converged"]:
            assert run["stop"] == "threshold" and run["train_loss"] <= run["threshold"]
            assert len(crossed) == len(levels)
            assert crossed[str(cfg["rel_tol"])]["step"] == run["steps"]
            assert crossed[str(cfg["rel_tol"])]["test_loss"] == run["test_loss"]
        else:
            assert run["stop"] == "cap" and run["steps"] == cap
            assert run["train_loss"] > run["threshold"]
    # the zero readout: the student predicts 0 at init, so its losses are those of 0
    data = load_dataset("teacher", n_train=500, n_test=cfg["teacher_test"], seed=0,
                        activation="silu")
    for run in result["runs"]:
        row = run["history"][0]
        assert row["train_loss"] == pytest.approx(0.5 * float(data.y_train.double().pow(2).mean()))
        assert row["test_loss"] == pytest.approx(0.5 * float(data.y_test.double().pow(2).mean()))
    # GD hits its 1000-step cap at std 10 and the table marks it
    capped = [r for r in result["runs"] if not r["converged"]]
    assert capped and all(r["optimizer"] == "gd" for r in capped)
    assert "*" in table


def _tiny_teacher(n=40):
    return load_dataset("teacher", n_train=n, n_test=200, seed=3, activation="silu")


def _jacobian(net, x):
    params = {k: v for k, v in net.named_parameters() if v.requires_grad}
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(net, p, (x,)))(params)
    return torch.cat([j.reshape(len(x), -1) for j in jac.values()], dim=1), list(params)


def test_arbel_damping_is_max_of_floor_and_smallest_singular_value():
    data = _tiny_teacher()
    x, y = data.x_train.double(), data.y_train.double()
    for readout, width in (("normal", 60), ("zero", 20)):
        net = arbel.student(width, 1.0, seed=0, readout=readout)
        J, names = _jacobian(net, x)
        gram = J @ J.t()
        s_min = float(torch.linalg.svdvals(gram).min())
        eps = max(1e-7, s_min)
        before = torch.cat([p.detach().reshape(-1) for n, p in net.named_parameters()
                            if n in names])
        lam = 10.0  # the authors' step: w <- w - lam J^T (J J^T + eps I)^-1 (f - y) / n
        expected = before - lam * J.t() @ torch.linalg.solve(
            gram + eps * torch.eye(len(x), dtype=gram.dtype), (net(x) - y).detach()).squeeze(1
                                                                                   ) / len(x)
        opt = arbel.DampedGN(net, lr=lam / len(x))
        opt.step(x, y)
        after = torch.cat([p.detach().reshape(-1) for n, p in net.named_parameters()
                           if n in names])
        assert opt.last_smin == pytest.approx(s_min, rel=1e-6, abs=1e-12)
        assert opt.last_eps == pytest.approx(eps, rel=1e-6)
        assert torch.allclose(after, expected, rtol=1e-7, atol=1e-10)
        if readout == "zero":  # 20 features for 40 examples: the Gram is singular, the floor acts
            assert opt.last_eps == 1e-7 and s_min < 1e-7
        else:  # well conditioned: eps is s_min, far above the floor
            assert opt.last_eps > 1e-4
            fixed = arbel.student(width, 1.0, seed=0, readout=readout)
            revgn.EGN(fixed, lr=lam / len(x), loss="mse", damping=1e-7 / len(x)).step(x, y)
            moved = torch.cat([p.detach().reshape(-1) for n, p in fixed.named_parameters()
                               if n in names])
            assert not torch.allclose(moved, expected, rtol=1e-3)


def test_arbel_student_starts_with_zero_readout_and_gaussian_hidden_layer():
    net = arbel.student(4000, 0.5, seed=7)
    assert torch.count_nonzero(net[2].weight) == 0
    assert float(net[0].weight.std()) == pytest.approx(0.5, rel=0.03)
    assert float(net[0].bias.std()) == pytest.approx(0.5, rel=0.05)
    assert float(net[3].weight) == 1 / 4000 and not net[3].weight.requires_grad
    x = torch.randn(8, 10, dtype=torch.float64)
    assert torch.count_nonzero(net(x)) == 0
    assert torch.equal(arbel.student(4000, 0.5, seed=7)[0].weight, net[0].weight)
    assert torch.count_nonzero(arbel.student(50, 0.5, seed=7, readout="normal")[2].weight) == 50


def test_arbel_stopping_rule_threshold_and_cap():
    data = _tiny_teacher()
    done = arbel.run_one("gn", 1.0, 0, 60, data, lr=10.0, rel_tol=1e-3, max_steps=1000)
    assert done["converged"] and done["stop"] == "threshold"
    assert done["train_loss"] <= 1e-3 * done["initial_train_loss"] == done["threshold"]
    assert done["history"][-1]["epoch"] == done["steps"] > 1
    # one step fewer allowed: the same run stops at the cap, above the threshold, unconverged
    short = arbel.run_one("gn", 1.0, 0, 60, data, lr=10.0, rel_tol=1e-3,
                          max_steps=done["steps"] - 1)
    assert not short["converged"] and short["stop"] == "cap"
    assert short["steps"] == done["steps"] - 1 and short["train_loss"] > short["threshold"]
    gd = arbel.run_one("gd", 1.0, 0, 60, data, lr=None, rel_tol=1e-3, max_steps=5)
    assert gd["stop"] == "cap" and gd["steps"] == 5 and not gd["converged"]


def test_arbel_random_features_baseline_refits_the_initial_features():
    data = _tiny_teacher()
    x, y = data.x_train.double(), data.y_train.double()
    xt, yt = data.x_test.double(), data.y_test.double()
    runs = [arbel.run_one(opt, 1.0, 0, 60, data, lr=lr, rel_tol=1e-3, max_steps=300)
            for opt, lr in (("gn", 10.0), ("gd", None))]
    init = arbel.student(60, 1.0, seed=0)
    phi, phi_t = arbel.features(init, x), arbel.features(init, xt)
    a = torch.linalg.pinv(phi) @ y  # min-norm least squares on the initial features
    rf = float(0.5 * (phi_t @ a - yt).pow(2).mean())
    for run in runs:
        assert run["rf_test_loss"] == pytest.approx(rf, rel=1e-4)
        assert run["refit_test_loss"] != pytest.approx(rf, rel=1e-3)  # the trained features


def test_rerun_resumes_and_reruns_changed_settings(tmp_path, capsys):
    args = ["batch-loss-change", "--quick", "--out", str(tmp_path)]
    main(args)
    first = json.loads((tmp_path / "results.json").read_text())
    assert all(len(r["batch_loss_change"]) == 8 for r in first["runs"])  # 512/128 x 2 epochs
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    main(args)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()} == stamp
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == first["runs"]
    capsys.readouterr()
    main(args + ["--adam-lr", "0.01"])  # only the Adam run's settings changed
    assert "rerunning adam-seed0" in capsys.readouterr().err
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    assert after["gn-seed0.json"] == stamp["gn-seed0.json"]
    assert after["adam-seed0.json"] != stamp["adam-seed0.json"]
    third = json.loads((tmp_path / "results.json").read_text())
    assert [r["lr"] for r in third["runs"]] == [0.1, 0.01]


def test_run_jobs_stores_settings_and_refuses_duplicate_keys(tmp_path):
    calls = []

    def fn(progress):
        calls.append(1)
        progress.update(1)
        return dict(history=[], value=len(calls))
    progress = Progress(2, "t", enabled=False)
    jobs = [Job("a", dict(x=(1, 2)), fn), Job("b", dict(x=3), fn)]
    results = run_jobs(jobs, str(tmp_path), progress)
    assert [r["settings"] for r in results] == [dict(x=[1, 2]), dict(x=3)]
    assert run_jobs(jobs, str(tmp_path), progress) == results and len(calls) == 2
    with pytest.raises(ValueError, match="duplicate"):
        run_jobs([Job("a", {}, fn), Job("a", {}, fn)], str(tmp_path), progress)


def _config(*argv):
    return make_config(build_parser(tuple(EXPERIMENTS) + ("arbel-regimes",)).parse_args(
        list(argv) + ["--out", "x"]))


def test_configs_every_experiment_builds_its_runs():
    for name, make in EXPERIMENTS.items():
        cfg = _config(name)
        specs, extra = make(cfg)
        assert specs and len({s.key for s in specs}) == len(specs), name
        assert {s.seed for s in specs} == {42, 43, 44}
    paper = _config("fullbatch", "--paper", "--dataset", "cifar10")
    assert paper["model"] == dict(depth=6, bottleneck=8000, init_std=1e-3)
    assert paper["adam_lr"] == 1e-5 and paper["sgd_lr"] == 0.01 and paper["epochs"] == 100
    assert _config("minibatch", "--paper", "--dataset", "mnist")["adam_lr"] == 1e-4
    cfg = _config("lr", "--gn-lr", "0.3")  # the lr sweep keeps its own grid
    assert sorted({s.lr for s in EXPERIMENTS["lr"](cfg)[0]}) == [0.01, 0.1, 0.5, 1.0]
    assert {s.lr for s in EXPERIMENTS["minibatch"](cfg)[0] if s.optimizer == "gn"} == {0.3}
    with pytest.raises(SystemExit):
        _config("fullbatch", "--quick", "--paper")
    arb = _config("arbel-regimes", "--paper")
    assert arb["width"] == 5000 and arb["seeds"] == [1, 2, 3, 4, 5]
    assert arb["init_stds"] == [0.01, 0.1, 0.5, 1, 5, 10, 100] and arb["gn_lrs"] == [10, 100]
    assert arb["rel_tol"] == 1e-8 and arb["damping_floor"] == 1e-7
    assert arb["readout_init"] == "zero" and arb["teacher"]["activation"] == "silu"
    assert arb["gn_max_steps"] == arb["gd_max_steps"] == 2_000_000
    small = _config("arbel-regimes", "--init-stds", "0.1", "1", "--rel-tol", "1e-3")
    assert small["width"] == 1000 and small["init_stds"] == [0.1, 1] and small["rel_tol"] == 1e-3
    keys = [k for k, _ in arbel.jobs(small)]
    assert len(keys) == len(set(keys)) == 2 * 3 * 3  # stds x seeds x (2 GN steps + GD)
    from revgn.cli.common import UsageError
    with pytest.raises(UsageError, match="arbel-regimes options"):
        _config("fullbatch", "--rel-tol", "1e-3")
    # the CPU-sizing note states the sizes the runs use, not the defaults
    note = _config("minibatch", "--bottleneck", "2048", "--epochs", "5", "--batch-size", "64",
                   "--adam-lrs", "1e-4", "1e-3")["notes"][0]
    assert "bottleneck 2048, batch 64, 5 epochs, Adam 0.0001, 0.001" in note


def test_progress_bar_only_on_terminals():
    import io
    stream = io.StringIO()
    bar = Progress(4, "exp", stream=stream)
    bar.update(2, "half")
    assert not bar.enabled and stream.getvalue() == ""  # StringIO is not a terminal
    bar = Progress(4, "exp", stream=stream, enabled=True)
    bar.update(2, "half")
    bar.close()
    assert "exp [###############---------------] 2/4" in stream.getvalue()
    assert stream.getvalue().endswith("\n")


def test_config_records_the_data_model_sizes_and_every_rate(tmp_path):
    assert main(["minibatch", "--quick", "--epochs", "1", "--out", str(tmp_path)]) == 0
    cfg = json.loads((tmp_path / "results.json").read_text())["config"]
    assert cfg["dataset"] == "digits" and cfg["train_size"] == 512 and cfg["test_size"] == 256
    assert cfg["data"]["copy"] == "bundled" and cfg["data"]["description"]
    assert cfg["model"] == dict(arch="RevMLP", in_features=64, outputs=10, first_block="linear",
                                depth=2, bottleneck=128, init_std=1e-3)
    assert cfg["batch_size"] == 128 and cfg["epochs"] == 1 and cfg["seeds"] == [0]
    assert cfg["learning_rates"] == {"gn": [0.1], "adam": [1e-3], "sgd": [0.1]}
    assert "full_batch" not in cfg and "steps" not in cfg


def test_adam_sweep_and_evaluation_interval_full_batch(tmp_path, capsys):
    args = ["fullbatch", "--quick", "--epochs", "3", "--eval-every", "2",
            "--adam-lrs", "1e-3", "1e-2", "--out", str(tmp_path)]
    assert main(args[:-2] + ["--note", "made on a test machine"] + args[-2:]) == 0
    result = _check(tmp_path, ["gn", "adam", "sgd"])
    cfg = result["config"]
    assert cfg["full_batch"] and cfg["batch_size"] == cfg["train_size"] == 512
    assert cfg["steps"] == cfg["epochs"] == 3 and cfg["eval_every"] == 2
    assert cfg["learning_rates"] == {"gn": [0.5], "adam": [1e-3, 1e-2], "sgd": [0.1]}
    assert any("Adam learning-rate sweep: 0.001, 0.01" in n for n in cfg["notes"])
    assert any("evaluated every 2 epochs" in n for n in cfg["notes"])
    assert cfg["notes"][-1] == "made on a test machine"
    labels = [r["label"] for r in result["runs"]]
    assert labels == ["gn", "adam lr=0.001", "adam lr=0.01", "sgd"]
    assert [r["lr"] for r in result["runs"] if r["optimizer"] == "adam"] == [1e-3, 1e-2]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "adam_lr=0.001-seed0.json", "adam_lr=0.01-seed0.json", "gn-seed0.json", "sgd-seed0.json"]
    assert "adam lr=0.01" in capsys.readouterr().out
    for run in result["runs"]:
        rows = run["history"]
        assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
        assert rows[1]["test_loss"] is None and rows[1]["train_acc"] is None
        assert all(rows[e]["test_loss"] is not None for e in (0, 2, 3))
        # full batch: every step's training loss is known (the loss before the next step)
        assert all(r["train_loss"] is not None for r in rows)
    # the losses filled in from the step are those a full evaluation gives
    full = tmp_path / "every"
    assert main(args[:4] + args[6:-1] + [str(full)]) == 0
    again = json.loads((full / "results.json").read_text())
    for a, b in zip(result["runs"], again["runs"]):
        assert [r["train_loss"] for r in a["history"]] == pytest.approx(
            [r["train_loss"] for r in b["history"]], rel=1e-5)
        assert b["history"][1]["test_loss"] is not None


def test_sweep_labels_with_other_experiments_and_the_resume_keys():
    cfg = _config("init-std", "--adam-lrs", "1e-4", "1e-3")
    specs, _ = EXPERIMENTS["init-std"](cfg)
    assert len({s.key for s in specs}) == len(specs)
    assert "adam lr=0.0001 std=0.01" in {s.label for s in specs}
    switch = _config("switch", "--adam-lrs", "3e-4", "1e-3")
    assert {s.lr for s in EXPERIMENTS["switch"](switch)[0] if s.optimizer == "adam"} == {3e-4}
    # without the sweep or an interval, a run's stored settings are what they were before both
    # options existed, so older output folders still resume
    spec = EXPERIMENTS["minibatch"](_config("minibatch"))[0][0]
    assert "eval_every" not in spec.as_dict() and spec.label is None
    from revgn.cli.common import UsageError
    with pytest.raises(UsageError, match="exclude each other"):
        _config("minibatch", "--adam-lr", "1e-3", "--adam-lrs", "1e-4")
    with pytest.raises(UsageError, match="repeats"):
        _config("minibatch", "--adam-lrs", "1e-4", "1e-4")


def test_sweep_seeds_run_the_other_rates_on_fewer_seeds(tmp_path, capsys):
    cfg = _config("minibatch", "--seeds", "1", "2", "3", "--sweep-seeds", "3", "1",
                  "--adam-lrs", "1e-4", "1e-3")
    assert cfg["sweep_seeds"] == [1, 3]  # in the order of --seeds
    seeds = {}
    for spec in EXPERIMENTS["minibatch"](cfg)[0]:
        seeds.setdefault(spec.label or spec.optimizer, []).append(spec.seed)
    assert seeds == {"gn": [1, 2, 3], "adam lr=0.0001": [1, 2, 3], "adam lr=0.001": [1, 3],
                     "sgd": [1, 3]}
    # a run's key and settings do not depend on the option: a folder made without it resumes
    plain = _config("minibatch", "--seeds", "1", "2", "3", "--adam-lrs", "1e-4", "1e-3")
    assert "sweep_seeds" not in plain
    plain_specs = {s.key: s.as_dict() for s in EXPERIMENTS["minibatch"](plain)[0]}
    assert all(plain_specs[s.key] == s.as_dict() for s in EXPERIMENTS["minibatch"](cfg)[0])
    from revgn.cli.common import UsageError
    with pytest.raises(UsageError, match="among the seeds"):
        _config("minibatch", "--seeds", "1", "2", "--sweep-seeds", "5")
    with pytest.raises(UsageError, match="reversible-MLP"):
        _config("arbel-regimes", "--sweep-seeds", "42")
    with pytest.raises(UsageError, match="changes no run of ntk-cka"):  # one Adam rate, no SGD
        _config("ntk-cka", "--seeds", "1", "2", "--sweep-seeds", "1")
    assert _config("ntk-cka", "--seeds", "1", "2", "--sweep-seeds", "1", "--adam-lrs", "1e-4",
                   "1e-3")["sweep_seeds"] == [1]
    assert main(["minibatch", "--quick", "--epochs", "1", "--seeds", "0", "1", "--sweep-seeds",
                 "1", "--adam-lrs", "1e-3", "1e-2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert sorted((r["label"], r["seed"]) for r in result["runs"]) == [
        ("adam lr=0.001", 0), ("adam lr=0.001", 1), ("adam lr=0.01", 1), ("gn", 0), ("gn", 1),
        ("sgd", 1)]
    assert result["config"]["sweep_seeds"] == [1]
    table = capsys.readouterr().out
    assert "seeds" in table.splitlines()[1] and "Adam's other rates and SGD: seeds [1]" in table


def test_no_sgd_leaves_only_the_sgd_runs_out(tmp_path):
    from revgn.cli.common import UsageError
    from revgn.experiments.config import command_line
    plain = {s.key: s.as_dict() for s in EXPERIMENTS["minibatch"](
        _config("minibatch", "--seeds", "1", "2", "--adam-lrs", "1e-4", "1e-3"))[0]}
    cfg = _config("minibatch", "--seeds", "1", "2", "--adam-lrs", "1e-4", "1e-3", "--no-sgd")
    assert cfg["sgd_lr"] is None and "no SGD baseline (--no-sgd)" in cfg["notes"]
    specs = EXPERIMENTS["minibatch"](cfg)[0]
    # the other runs are those of the command without the flag, key for key: a folder resumes
    assert {s.key: s.as_dict() for s in specs} == {
        k: v for k, v in plain.items() if v["optimizer"] != "sgd"}
    assert "sgd" in {v["optimizer"] for v in plain.values()}
    egn = EXPERIMENTS["egn"](_config("egn", "--no-sgd"))[0]
    assert {s.optimizer for s in egn} == {"egn", "adam"}
    argv = command_line(cfg)
    assert "--no-sgd" in argv and "--sgd-lr" not in argv
    assert _config(*argv)["sgd_lr"] is None
    assert "--no-sgd" not in command_line(_config("minibatch"))
    with pytest.raises(SystemExit):  # argparse: not allowed with --sgd-lr
        _config("minibatch", "--no-sgd", "--sgd-lr", "0.1")
    with pytest.raises(UsageError, match="no-sgd"):
        _config("egn-regression", "--no-sgd")
    with pytest.raises(UsageError, match="changes no run"):  # one Adam rate and no SGD
        _config("minibatch", "--seeds", "1", "2", "--sweep-seeds", "1", "--no-sgd")
    assert main(["minibatch", "--quick", "--epochs", "1", "--no-sgd", "--out",
                 str(tmp_path)]) == 0
    result = _check(tmp_path, ["gn", "adam"])
    assert result["config"]["learning_rates"] == {"gn": [0.1], "adam": [1e-3]}
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "adam-seed0.json", "gn-seed0.json"]


def test_paper_settings():
    cfg = _config("fullbatch", "--paper", "--dataset", "mnist")
    assert cfg["model"] == dict(depth=2, bottleneck=8000, init_std=1e-3)
    assert cfg["batch_size"] == 1024 and cfg["epochs"] == 100 and cfg["seeds"] == [42, 43, 44]
    assert cfg["adam_lrs"] == [1e-4] and cfg["sgd_lr"] == 0.1 and cfg["eval_every"] == 1
    specs, extra = EXPERIMENTS["fullbatch"](cfg)
    gn = [s for s in specs if s.optimizer == "gn"]
    assert {s.lr for s in gn} == {0.5} and all(s.batch_size is None for s in specs)
    assert extra["full_batch_examples"] == 1024
    mini = EXPERIMENTS["minibatch"](_config("minibatch", "--paper", "--dataset", "cifar10"))[0]
    assert {(s.optimizer, s.lr) for s in mini} == {("gn", 0.1), ("adam", 1e-4), ("sgd", 0.01)}
    assert {s.model["depth"] for s in mini} == {6} and {s.batch_size for s in mini} == {1024}
    from revgn.experiments.training import make_optimizer, build_model
    from revgn.data import load_dataset
    data = load_dataset("digits").subset(64, 32)
    opt = make_optimizer("gn", build_model(dict(depth=2, bottleneck=16), data), 0.5,
                         "cross_entropy", {})
    assert opt.step_scaling == "per_block" and opt.solver_config.rtol == 1e-2


def _history(train, test, acc):
    return [dict(epoch=e, train_loss=tr, test_loss=te, test_acc=a, train_acc=None,
                 seconds=float(e)) for e, (tr, te, a) in enumerate(zip(train, test, acc))]


def test_equal_loss_summary_reads_each_run_where_it_reached_gns_final_training_loss():
    from revgn.experiments.report import at_training_loss, equal_loss_summary, summary
    gn = dict(label="gn", optimizer="gn", seed=1,
              history=_history([2.0, 0.5, 0.2], [2.0, 0.6, 0.3], [0.1, 0.8, 0.9]))
    # evaluated every 2 epochs (mini-batch: no training loss in between): adam crosses 0.2
    # between epochs 2 and 4 at log-fraction log(0.4 / 0.2) / log(0.4 / 0.1) = 1/2, so epoch 3,
    # test 0.5, acc 0.85
    adam = dict(label="adam", optimizer="adam", seed=1, history=_history(
        [2.0, None, 0.4, None, 0.1], [2.0, None, 0.6, None, 0.4], [0.1, None, 0.8, None, 0.9]))
    epoch, test_loss, test_acc = at_training_loss(adam, 0.2)
    assert epoch == pytest.approx(3.0) and test_loss == pytest.approx(0.5)
    assert test_acc == pytest.approx(0.85)
    assert at_training_loss(adam, 0.01) is None and at_training_loss(adam, 5.0) == (0, 2.0, 0.1)
    # full batch: the training loss of every step is known, test every 2 steps: the crossing
    # step comes from the per-step losses (between steps 2 and 3 at log(0.3/0.2)/log(3)), the
    # test values are linear in the step between the evaluated steps 2 and 4; a non-finite loss
    # on the way is skipped
    full = dict(label="adam", optimizer="adam", seed=1, history=_history(
        [2.0, float("nan"), 0.3, 0.1, 0.05], [2.0, None, 0.6, None, 0.4],
        [0.1, None, 0.8, None, 0.9]))
    step, test_loss, _ = at_training_loss(full, 0.2)
    assert step == pytest.approx(2 + math.log(1.5) / math.log(3.0))
    assert test_loss == pytest.approx(0.6 - 0.2 * (step - 2) / 2)
    # level 1.0: between step 0 (2.0) and step 2 (0.3), the NaN at step 1 skipped
    assert at_training_loss(full, 1.0)[0] == pytest.approx(2 * math.log(2.0) / math.log(2 / 0.3))
    sgd = dict(label="sgd", optimizer="sgd", seed=1,
               history=_history([2.0, 1.5, 1.0], [2.0, 1.5, 1.1], [0.1, 0.3, 0.5]))
    text = equal_loss_summary(dict(runs=[gn, adam, sgd]))
    lines = {line.split()[0]: line.split() for line in text.splitlines()[3:]}
    assert lines["adam"][1:] == ["3.0", "0.5", "0.8500", "1", "of", "1"]
    assert lines["sgd"][1:] == ["-", "-", "-", "0", "of", "1"]
    assert equal_loss_summary(dict(runs=[adam, sgd])) == ""  # no GN run: nothing to match
    diverged = dict(gn, history=gn["history"][:2] + [dict(gn["history"][2], train_loss=math.inf)])
    assert equal_loss_summary(dict(runs=[diverged, adam])) == ""
    result = dict(experiment="minibatch", config=dict(dataset="digits", seeds=[1]),
                  runs=[gn, adam, sgd])
    assert "at equal training loss" in summary(result)

"""The command line: in-process on small settings, and through ``python -m revgn`` in a fresh
process where the exit status, stderr and the absence of a traceback are what is tested."""
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from revgn.cli import main
from tests.helpers import plant_gram_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def revgn(*args, cwd, code=None, **env):
    """``python -m revgn ARGS`` (or ``python -c CODE``) with no GPU visible, one thread."""
    environ = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",
                                                                  "REVGN_BACKEND")}
    environ.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", **env)
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "revgn", *args]
    return subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=600)


def usage_error(proc, *needles):
    """Exit status 2, one line on stderr after any usage line, each needle in it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    message = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(message) == 1, proc.stderr
    for needle in needles:
        assert needle in message[0], (needle, message[0])
    return message[0]


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "reference" in info["usable"]["cpu"]
    assert info["auto"]["cpu"] in ("cpp", "reference")
    assert info["installed"]["extension"]["built"] in (True, False)


def test_info_separates_installed_from_usable(tmp_path):
    proc = revgn("info", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["usable"]["cuda"] is None and info["auto"]["cuda"] is None  # no GPU visible
    if info["installed"]["triton"] is None:
        pytest.skip("triton is not installed here")
    # installed, but the CPU runs it only in the interpreter
    assert "triton" not in info["usable"]["cpu"]
    assert any("TRITON_INTERPRET=1" in note for note in info["notes"])
    interpreted = json.loads(revgn("info", cwd=tmp_path, TRITON_INTERPRET="1").stdout)
    assert ("triton" in interpreted["usable"]["cpu"]) == interpreted["installed"][
        "triton_kernels_load"]


@pytest.mark.parametrize("command,needles", [
    (["demo", "--epochs", "0"], ["--epochs", "positive integer"]),
    (["demo", "--batch-size", "-3"], ["--batch-size", "positive integer"]),
    (["bench", "--repeats", "0"], ["--repeats", "positive integer"]),
    (["bench", "--device", "tpu"], ["--device", "cpu, cuda or cuda:N"]),
    (["bench", "--device", "cuda"], ["--device cuda", "no CUDA device", "--device cpu"]),
    (["check", "--device", "cuda"], ["--device cuda", "no CUDA device"]),
    (["experiment", "minibatch", "--device", "cuda", "--out", "exp"], ["no CUDA device"]),
    (["experiment", "minibatch", "--quick", "--paper", "--out", "exp"], ["--quick"]),
    (["experiment", "lr", "--gn-lr", "0", "--out", "exp"], ["--gn-lr"]),
    (["experiment", "arbel-regimes", "--dataset", "digits", "--out", "exp"],
     ["--dataset teacher"]),
    (["experiment", "minibatch", "--dataset", "cifar10", "--out", "exp"],
     ["--data-dir", "cifar-10-python"]),
    (["egn-examples", "--batch-size", "0"], ["--batch-size"]),
    (["report", "missing.json"], ["revgn report", "cannot read missing.json"]),
    (["report", os.path.join(ROOT, "docs", "results", "mnist-minibatch-paper", "curves.png")],
     ["cannot read", "curves.png"]),

])
def test_usage_and_environment_problems_exit_2_in_one_line(tmp_path, command, needles):
    usage_error(revgn(*command, cwd=tmp_path), *needles)
    assert os.listdir(tmp_path) == []  # nothing written: no bench-out/, no exp/


def test_a_missing_dataset_says_how_to_get_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (["experiment", "minibatch", "--dataset", "mnist", "--data-dir", str(empty),
                     "--out", "exp"],
                    ["bench", "--workload", "paper-mnist", "--data-dir", str(empty)]):
        usage_error(revgn(*command, cwd=tmp_path), str(empty), "--data-dir", "REVGN_MNIST_DIR",
                    "t10k-images-idx3-ubyte", "torchvision.datasets.MNIST")
    assert sorted(os.listdir(tmp_path)) == ["empty"]


def test_no_mnist_anywhere_names_the_flag_and_the_variable(tmp_path, monkeypatch, capsys):
    from revgn import data
    monkeypatch.setattr(data, "default_mnist_dir", lambda: None)
    for command in (["experiment", "minibatch", "--dataset", "mnist", "--out", str(tmp_path)],
                    ["bench", "--workload", "paper-mnist"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "MNIST not found" in err
        assert "--data-dir" in err and "REVGN_MNIST_DIR" in err and "yann.lecun.com" in err


def test_check_of_an_unusable_backend_says_how(tmp_path):
    message = usage_error(revgn("check", "--backend", "triton", cwd=tmp_path))
    from revgn.backend import triton_available
    if triton_available():
        assert "TRITON_INTERPRET=1 revgn check --backend triton" in message


def test_a_kernel_mismatch_exits_1(tmp_path):
    from revgn import backend
    if not backend.available("cpp", "cpu"):
        pytest.skip("the revgn extension is not built here")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from revgn.ops import table
        from tests.helpers import plant_gram_error
        plant_gram_error(table)
        from revgn.cli import main
        sys.exit(main(["check", "--backend", "cpp"]))
    """)
    proc = revgn(cwd=tmp_path, code=code)
    assert proc.returncode == 1, proc.stderr
    assert "FAIL" in proc.stdout and "Traceback" not in proc.stderr


def test_every_option_has_help():
    import argparse

    from revgn.cli import build_parser
    from revgn.cli.egn_examples import build_parser as examples_parser
    from revgn.experiments import NAMES
    from revgn.experiments.config import build_parser as experiment_parser
    parsers = [experiment_parser(NAMES)]
    top = build_parser()
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += list(action.choices.values())
    parsers.append(examples_parser())
    missing = [(p.prog, a.dest) for p in parsers for a in p._actions
               if a.dest != "help" and not (a.help or "").strip()
               and not isinstance(a, argparse._SubParsersAction)
               and p.add_help]  # experiment/egn-examples stubs hand over to their own parsers
    assert not missing, missing
    bench = [p for p in parsers if p.prog == "revgn bench"][0].format_help()
    assert "bench-out" in bench and "current folder" in bench and "paper-mnist" in bench


def test_demo_prints_a_table(capsys, tmp_path):
    out_file = tmp_path / "demo.json"
    assert main(["demo", "--epochs", "1", "--bottleneck", "64", "--batch-size", "256",
                 "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    for name in ("gn", "adam", "sgd"):
        assert f"\n{name} " in out
    assert "test acc" in out
    stored = json.loads(out_file.read_text())
    assert (stored["epochs"], stored["bottleneck"], stored["batch_size"]) == (1, 64, 256)
    assert [r["optimizer"] for r in stored["rows"]] == ["gn", "adam", "sgd"]
    for r in stored["rows"]:  # the table printed is the one stored
        assert f"{r['train_loss']:>12.4f}{r['test_acc']:>10.3f}" in out


def test_report_prints_a_stored_results_tables(capsys):
    stored = os.path.join(ROOT, "docs", "results", "mnist-fullbatch-paper", "results.json")
    assert main(["report", stored]) == 0
    out = capsys.readouterr().out
    assert "fullbatch on mnist: last epoch (100), mean+-std over 3 seed(s)" in out
    assert "at equal training loss" in out and "adam lr=0.0003" in out


def test_report_refuses_what_is_not_a_results_file(tmp_path, capsys):
    for i, content in enumerate(([1, 2], {"a": 1}, {"experiment": "minibatch", "config": {},
                                                   "runs": []})):
        path = tmp_path / f"not-results-{i}.json"
        path.write_text(json.dumps(content))
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert "is not a results.json written by revgn experiment" in err
        assert "Traceback" not in err


def test_bench_quick_writes_json_and_plot(tmp_path, capsys):
    assert main(["bench", "--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report["seconds"]) == {"gn_auto", "gn_reference", "authors", "adam"}
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "ratios" in capsys.readouterr().out


def test_egn_examples_quick_without_third_party_noise(tmp_path):
    # in a fresh process: torch warns about torch.jit.script once per process, on first use
    proc = revgn("egn-examples", "--quick", "--out", "examples.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "digits" in proc.stdout and "diabetes" in proc.stdout
    stored = json.loads((tmp_path / "examples.json").read_text())
    assert stored["epochs"] == 2 and set(stored["tasks"]) == {"digits", "diabetes"}
    for rows in stored["tasks"].values():
        assert [r["optimizer"] for r in rows] == ["egn", "egn+ls", "egn+ls+ad", "adam", "sgd"]
        assert all(len(r["history"]) == 2 and math.isfinite(r["value"]) for r in rows)
        adaptive = rows[2]
        # adaptive damping moved lambda away from its start, and saw a rho on every step it judged
        assert adaptive["final_damping"] != 1.0 and adaptive["median_rho"] is not None
        assert "final_damping" not in rows[3]
        # the printed final loss of each run is the stored one
        for r in rows:
            assert f"{r['history'][-1][2]:.4f}" in proc.stdout
    assert "FutureWarning" not in proc.stderr and "jit.script" not in proc.stderr, proc.stderr


def test_the_jit_script_warning_is_real_and_filtered(tmp_path):
    """The filter is tested against the warning torch really gives (else it proves nothing)."""
    code = textwrap.dedent("""
        import sys, warnings
        if sys.argv[1:] == ["quiet"]:
            from revgn.cli.common import quiet_third_party_warnings
            quiet_third_party_warnings()
        import torch
        torch.func.jvp(torch.sin, (torch.ones(2),), (torch.ones(2),))
    """)
    loud = revgn(cwd=tmp_path, code=code)
    if "jit.script" not in loud.stderr:
        pytest.skip("this torch does not warn about torch.jit.script")
    quiet = subprocess.run([sys.executable, "-c", code, "quiet"], capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert quiet.returncode == 0 and "jit.script" not in quiet.stderr


def test_check_passes_on_the_extension_built_here(capsys):
    # (the Triton kernels' own tests cover them under the interpreter, more slowly)
    from revgn import backend
    if not backend.available("cpp", "cpu"):
        assert main(["check", "--backend", "cpp"]) == 2
        return
    assert main(["check", "--backend", "cpp"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "cpp     exact_gn_step" in out


def test_check_fails_on_a_wrong_kernel(monkeypatch):
    from revgn import backend
    from revgn.cli import backend_check
    from revgn.ops import table
    if not backend.available("cpp", "cpu"):
        import pytest
        pytest.skip("the revgn extension is not built here")
    real = plant_gram_error(table)
    try:
        rows = backend_check.check("cpu", ["cpp"])
    finally:
        table.implementation = real
        table._bind_resolved.cache_clear()
    failed = {(r["op"], r["dtype"]) for r in rows if not r["ok"]}
    # the whole step goes through the Gram too, so it fails with it
    assert failed == {("gram", "float32"), ("gram", "float64"), ("exact_gn_step", "float64")}

"""The command line, run in-process on small settings."""
import json

from revgn.cli import main


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backends"]["reference"] is True
    assert info["backends"]["auto_cpu"] in ("cpp", "reference")


def test_demo_prints_a_table(capsys):
    assert main(["demo", "--epochs", "1", "--bottleneck", "64", "--batch-size", "256"]) == 0
    out = capsys.readouterr().out
    for name in ("gn", "adam", "sgd"):
        assert f"\n{name} " in out
    assert "test acc" in out


def test_bench_quick_writes_json_and_plot(tmp_path, capsys):
    assert main(["bench", "--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report["seconds"]) == {"gn_auto", "gn_reference", "authors", "adam"}
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "ratios" in capsys.readouterr().out


def test_egn_examples_quick(capsys):
    assert main(["egn-examples", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "diabetes" in out

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
    from revgn import backend, check
    from revgn.ops import jt
    if not backend.available("cpp", "cpu"):
        import pytest
        pytest.skip("the revgn extension is not built here")
    real = jt.implementation

    def off_by_a_little(op_name, reference, name, device):
        fn = real(op_name, reference, name, device)
        if op_name != "gram" or fn is reference:
            return fn
        return lambda A, bias: fn(A, bias) * (1 + 1e-3)
    monkeypatch.setattr(jt, "implementation", off_by_a_little)
    rows = check.check("cpu", ["cpp"])
    failed = {(r["op"], r["dtype"]) for r in rows if not r["ok"]}
    # the whole step goes through the Gram too, so it fails with it
    assert failed == {("gram", "float32"), ("gram", "float64"), ("exact_gn_step", "float64")}

"""The scripts whose stored output the docs quote (docs/figures/*.json) run, write what they print,
and still measure what the docs say they measure."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script, *args, cwd):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_exactness_table_writes_the_table_it_prints(tmp_path):
    out = run_script("exactness_table.py", "--out", "exactness.json", cwd=tmp_path)
    stored = json.loads((tmp_path / "exactness.json").read_text())
    cases = stored["cases"]
    assert len(cases) == 4 * 4 * 2  # models x (loss, curvature) x step scaling
    for row in cases:
        # the brute-force bounds of tests/test_exact_gn.py, on every step reported exact
        assert row["float64_exact"] and row["float64"] < 1e-8
        assert not row["float32_exact"] or row["float32"] < 5e-3
        assert len(row["float64_routes"]) == 2 * row["depth"]
        assert f"{row['float64']:9.1e}" in out
    assert stored["worst"]["float64"] == max(r["float64"] for r in cases)
    solvers = {r["solver"]: r for r in stored["ill_conditioned"]["solvers"]}
    assert set(solvers) == {"cholesky unrefined", "cholesky", "eigh", "svd", "qr"}
    # the refinement is what makes the Gram route exact on this batch
    assert solvers["cholesky"]["error"] < 1e-8 < solvers["cholesky unrefined"]["error"]


def test_egn_structured_vs_explicit_writes_its_measurement(tmp_path):
    out = run_script("test_bench_egn.py", "--widths", "20-16-16-3", "--batch", "5",
                     "--repeats", "2", "--out", "egn.json", cwd=tmp_path)
    stored = json.loads((tmp_path / "egn.json").read_text())
    assert set(stored["paths"]) == {"structured", "explicit"}
    assert stored["parameters"] == 20 * 16 + 16 + 16 * 16 + 16 + 16 * 3 + 3
    assert stored["direction_agreement"] < 1e-5  # both paths solve the same system
    assert stored["paths"]["structured"]["calls"] == 3 and stored["paths"]["explicit"]["calls"] == 2
    ratio = stored["paths"]["explicit"]["seconds"] / stored["paths"]["structured"]["seconds"]
    assert abs(stored["time_ratio"] - ratio) < 1e-12
    assert f"{stored['time_ratio']:.3g}x" in out
    assert "--out egn.json" in stored["command"]


def test_distributed_parity_table_prints_every_case_it_stores():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "distributed_parity_table", ROOT / "benchmarks" / "distributed_parity_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    stored = json.loads((ROOT / "docs" / "figures" / "distributed_parity.json").read_text())
    assert set(stored["worlds"]) == {"2", "3"}
    for world, reports in stored["worlds"].items():
        assert set(reports) == set(table.CASES)  # the file holds the cases the tests run
        text = table.format_world(int(world), reports)
        for name, r in reports.items():
            assert f"| {name} | {r['W']:.1e} | {r['theta']:.1e} |" in text
            assert r["reports"] and r["replica_spread"] == 0.0

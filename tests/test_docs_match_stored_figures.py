"""The tables the docs quote from docs/figures/*.json are those files' numbers, so a rerun that
rewrites a file without its page (or the reverse) fails here."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS, FIGURES = ROOT / "docs", ROOT / "docs" / "figures"


def _load(name):
    return json.loads((FIGURES / name).read_text())


def _sci(value):
    """The docs' short scientific form: 4.9e-15, 1.4e-6, 0."""
    return "0" if value == 0 else re.sub(r"e-0(\d)", r"e-\1", f"{value:.1e}")


def _code_blocks(page):
    return re.findall(r"```\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def test_exactness_page_shows_the_stored_table():
    stored = _load("exactness.json")
    table = next(b for b in _code_blocks("EXACTNESS.md") if b.startswith("depth"))
    rows = [line.split() for line in table.splitlines()[1:] if line[:5].strip().isdigit()]
    assert len(rows) == len(stored["cases"])
    for cells, case in zip(rows, stored["cases"]):
        assert cells[:8] == [str(case[k]) for k in ("depth", "d", "M", "n", "activation", "loss",
                                                     "curvature", "step_scaling")]
        assert float(cells[8].rstrip("*")) == float(f"{case['float64']:.1e}")
        assert float(cells[9].rstrip("*")) == float(f"{case['float32']:.1e}")
    ill = next(b for b in _code_blocks("EXACTNESS.md") if b.startswith("ill-conditioned"))
    for row in stored["ill_conditioned"]["solvers"]:
        assert f"{row['solver']:>20} {row['error']:10.1e} {row['max_residual']:13.1e}" in ill


def test_distributed_page_shows_the_stored_parity():
    page = (DOCS / "DISTRIBUTED.md").read_text()
    worlds = _load("distributed_parity.json")["worlds"]
    columns = ("W", "theta", "tensors", "losses", "forward", "direction")
    for name, report in worlds["2"].items():
        row = re.search(rf"^\|[^\n]*\(`{re.escape(name)}`\) \|([^\n]*)\|$", page, flags=re.M)
        assert row, f"no row for {name}"
        assert [c.strip() for c in row.group(1).split("|")] == [_sci(report[c]) for c in columns]
    for name in ("distributed_parity_3ranks_mse", "distributed_parity_2ranks_mnist_shape"):
        report = _load(f"{name}.json")
        assert f"figures/{name}.json" in page
        f64 = report["float64"]
        assert (f"| {_sci(report['W'])} | {_sci(f64['distributed'])} / {_sci(f64['single'])} |"
                in page), name


def test_egn_page_shows_the_stored_runs():
    page = (DOCS / "EGN.md").read_text()
    bench = _load("egn_structured_vs_explicit.json")
    for path, row in bench["paths"].items():
        assert re.search(rf"{path}\s+{row['seconds'] * 1e3:,.0f} ms\s+"
                         rf"{row['peak_rise_bytes'] / 2**20:,.1f} MiB", page), path
    examples = _load("egn_examples.json")
    for rows in examples["tasks"].values():
        for run in rows:
            line = re.search(rf"^{re.escape(run['optimizer'])}\s+\S+\s+(.*)$",
                             page[page.index(f"{run['metric']} at the end"):], flags=re.M)
            assert line and f"{run['history'][-1][2]:.4f}" in line.group(1), run["optimizer"]
            assert line.group(1).split()[-1] == f"{run['value']:.3f}"


@pytest.mark.parametrize("name", sorted(p.name for p in FIGURES.glob("*.json")))
def test_every_stored_figure_file_is_quoted_by_a_page(name):
    pages = "".join(p.read_text() for p in [*DOCS.glob("*.md"), ROOT / "README.md"])
    assert f"figures/{name}" in pages


def test_readme_shows_the_stored_demo():
    readme = (ROOT / "README.md").read_text()
    one_thread, default = _load("demo.json"), _load("demo_default_threads.json")
    assert one_thread["threads"] == 1 and default["threads"] > 1
    for r in one_thread["rows"]:
        assert (f"{r['optimizer']:<10}{r['lr']:>8g}{r['train_loss']:>12.4f}{r['test_acc']:>10.3f}"
                f"{r['ms_per_step']:>10.2f}") in readme
    gn = {f["threads"]: f["rows"][0]["ms_per_step"] for f in (one_thread, default)}
    assert (f"took {gn[default['threads']]:.0f} ms with torch's default {default['threads']} "
            f"threads and {gn[1]:.0f} ms\nwith one") in readme


def test_reliability_page_shows_the_stored_drift():
    page = (DOCS / "RELIABILITY.md").read_text()
    stored = _load("inversion_drift.json")
    stds = list(stored["errors"])
    shown = 0
    for i, depth in enumerate(stored["depths"]):
        row = re.search(rf"^\| {depth} \|([^\n]*)\|$", page, flags=re.M)
        if row is None:
            continue  # the page shows some of the stored depths
        shown += 1
        assert [c.strip() for c in row.group(1).split("|")] == [
            f"{stored['errors'][s][i]:.1e}" for s in stds]
    assert shown >= 5


def test_triton_page_shows_the_stored_sm90_sweep():
    page = (DOCS / "KERNELS_TRITON.md").read_text()
    stored = _load("triton_sm90_compile.json")
    configurations = stored["configurations"]
    assert stored["arch"] == "sm90" and not stored["quick"]
    assert f"({len(configurations)}:" in page
    assert stored["failures"] == 0 and all(c["ok"] for c in configurations)
    assert "no register spills" in page and all(c["spill_bytes"] == 0 for c in configurations)
    assert f"Triton {stored['triton']}" in page

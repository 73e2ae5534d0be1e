"""Parity of the sharded GN step with one process: the cases of tests/test_distributed.py.

    python benchmarks/distributed_parity_table.py [--worlds 2 3] [--out docs/figures/distributed_parity.json]

Each world size is one gloo group of local processes on 127.0.0.1 that runs every case
(``revgn.distributed_parity.parity``: 3 steps, then ``direction()``) and compares it with
``ExactGN`` in one process. Prints, per world size, the largest relative difference
``||a - b|| / ||b||`` over the gathered ``W``'s, every coupling's ``[W, b]``, any parameter
tensor, the losses, the forward before training and the direction; float32 cases also against
``ExactGN`` in float64 from the same start.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from revgn.cli.common import write_record  # noqa: E402
from revgn.distributed_parity import parity_cases, run_local  # noqa: E402
from tests.test_distributed import CASES  # noqa: E402

COLUMNS = ("W", "theta", "tensors", "losses", "forward", "direction")


def _cell(value):
    return "0" if value == 0 else f"{value:.1e}"


def format_world(world, reports) -> str:
    lines = [f"{world} ranks",
             "| case | `W` | `[W, b]` per coupling | any tensor | losses | forward | direction |",
             "|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        lines.append(f"| {name} | " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |")
    f32 = {name: r["float64"] for name, r in reports.items() if "float64" in r}
    if f32:
        lines += ["", "float32 against ExactGN in float64 from the same start: `[W, b]` sharded / "
                      "one process, direction sharded / one process"]
        lines += [f"- {name}: {_cell(f['distributed'])} / {_cell(f['single'])}, "
                  f"{_cell(f['direction_distributed'])} / {_cell(f['direction_single'])}"
                  for name, f in f32.items()]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--out", default=None, help="write every report as JSON to this file")
    args = parser.parse_args(argv)
    worlds = {}
    for world in args.worlds:
        reports = run_local(world, parity_cases, list(CASES.values()), timeout_s=600)
        worlds[str(world)] = dict(zip(CASES, reports))
        print(format_world(world, worlds[str(world)]))
        print()
    if args.out:
        write_record(args.out, dict(worlds=worlds))


if __name__ == "__main__":
    main()

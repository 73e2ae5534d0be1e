"""EGN's row system: the structured ``J J^T`` against the explicit Jacobian.

    python benchmarks/test_bench_egn.py                 # side-by-side table, full size
    python benchmarks/test_bench_egn.py --out egn.json  # ... and the measurement as JSON
    python benchmarks/test_bench_egn.py --batch 32      # smaller explicit Jacobian
    python -m pytest benchmarks/test_bench_egn.py       # pytest-benchmark timings, small MLP

The table times ``EGN.direction`` (forward, Gram, float64 row solve, ``J^T u``) on an MLP
784-1024-1024-10 (ReLU), b = 128, cross-entropy, float32, CPU.

Method. Each path runs in its own child process, so neither inherits the other's heap. Peak
memory is ``revgn.cli.bench.peak_memory_rise``: the rise of the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) over one direction, after a first,
warm-up direction; the child's allocator maps every buffer of 64 KiB or more on its own
(``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the resident set and the peak counts every
byte that was live at once, including torch's temporaries, not only the tensors we name. Time is
the median wall time of the directions after the warm-up (``--repeats`` of them for the
structured path; one for the explicit path, whose direction takes about a minute).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

WIDTHS = (784, 1024, 1024, 10)
BATCH = 128


def make(widths=WIDTHS, batch=BATCH, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    x = torch.randn(batch, widths[0])
    y = torch.randint(0, widths[-1], (batch,))
    return nn.Sequential(*layers), x, y


def direction_fn(path, widths=WIDTHS, batch=BATCH):
    from revgn.egn import EGN
    model, x, y = make(widths, batch)
    opt = EGN(model, loss="cross_entropy", damping=1.0, jacobian=path)
    return lambda: opt.direction(x, y)


def _child(path, widths, batch, repeats):
    """Runs in the child: prints one JSON line with the median time and the peak rise."""
    from revgn.cli.bench import peak_memory_rise
    fn = direction_fn(path, widths, batch)
    times, out = [], []

    def timed():
        t0 = time.perf_counter()
        out.append(fn())
        times.append(time.perf_counter() - t0)
        del out[:-1]  # keep only the latest direction alive between calls
    rise = peak_memory_rise(timed)  # warm-up call, then the measured one
    for _ in range(repeats - 1):
        timed()
    torch.save([t.clone() for t in out[-1]], os.environ["EGN_BENCH_DIRECTION"])
    print(json.dumps({"path": path, "seconds": statistics.median(times[1:]),
                      "peak_rise_bytes": rise, "calls": len(times)}))


def measure(path, widths, batch, repeats, scratch):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               EGN_BENCH_DIRECTION=os.path.join(scratch, f"{path}.pt"),
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", path, "--batch", str(batch),
           "--widths", "-".join(map(str, widths)), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{path} child failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(widths=WIDTHS, batch=BATCH, repeats=5) -> dict:
    """Both paths measured, each in its own child process, and how far their directions agree."""
    import tempfile
    with tempfile.TemporaryDirectory() as scratch:
        rows = {"structured": measure("structured", widths, batch, repeats, scratch),
                "explicit": measure("explicit", widths, batch, 1, scratch)}
        a, b = (torch.load(os.path.join(scratch, f"{p}.pt")) for p in rows)
    flat = [torch.cat([t.reshape(-1).double() for t in d]) for d in (a, b)]
    # a workspace small enough to fit in pages already resident raises no peak: no ratio then
    structured_rise = rows["structured"]["peak_rise_bytes"]
    return dict(widths=list(widths), batch=batch, classes=widths[-1],
                parameters=sum(p.numel() for p in make(widths, 1)[0].parameters()),
                threads=torch.get_num_threads(), paths=rows,
                time_ratio=rows["explicit"]["seconds"] / rows["structured"]["seconds"],
                memory_ratio=(rows["explicit"]["peak_rise_bytes"] / structured_rise
                              if structured_rise else None),
                direction_agreement=float((flat[0] - flat[1]).norm() / flat[1].norm()))


def format_comparison(c: dict) -> str:
    widths, batch, P = c["widths"], c["batch"], c["parameters"]
    lines = [f"EGN direction, MLP {'-'.join(map(str, widths))} (P = {P:,}), b = {batch}, "
             f"cross-entropy, float32, CPU, {c['threads']} threads",
             f"{'path':<12}{'time / direction':>18}{'peak memory rise':>20}{'calls':>7}"]
    for name, r in c["paths"].items():
        lines.append(f"{name:<12}{r['seconds'] * 1e3:>15,.0f} ms"
                     f"{r['peak_rise_bytes'] / 2**20:>16,.1f} MiB{r['calls']:>7}")
    memory = f"{c['memory_ratio']:.3g}x" if c["memory_ratio"] else "-"
    lines.append(f"{'ratio':<12}{c['time_ratio']:>17.3g}x{memory:>20}   (explicit / structured)")
    lines.append(f"explicit J alone: b c P x 4 bytes = {batch * c['classes'] * P * 4 / 2**20:,.0f} "
                 f"MiB; directions agree to {c['direction_agreement']:.1e} (relative, float32)")
    return "\n".join(lines)


@pytest.mark.parametrize("path", ["structured", "explicit"])
def test_direction(benchmark, path):
    small = (784, 128, 128, 10)
    fn = direction_fn(path, widths=small, batch=32)
    benchmark.extra_info.update(path=path, widths="-".join(map(str, small)), batch=32)
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1, iterations=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", choices=["structured", "explicit"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--widths", default="-".join(map(str, WIDTHS)))
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed directions after the warm-up (structured path)")
    parser.add_argument("--out", default=None, help="also write the measurement as JSON here")
    args = parser.parse_args(argv)
    widths = tuple(int(w) for w in args.widths.split("-"))
    if args.child:
        _child(args.child, widths, args.batch, args.repeats)
    else:
        result = compare(widths, args.batch, args.repeats)
        print(format_comparison(result))
        if args.out:
            from revgn.cli.common import write_record
            write_record(args.out, result)


if __name__ == "__main__":
    main()

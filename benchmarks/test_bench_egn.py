"""EGN's row system: structured J J^T against the explicit Jacobian.

    python benchmarks/test_bench_egn.py            # side-by-side table (time and peak memory)
    python -m pytest benchmarks/test_bench_egn.py  # pytest-benchmark timings

MLP 784-1024-1024-10, b=128, cross-entropy, float32, CPU. Each path runs in its own child
process; peak memory is the rise of that process's peak resident set over one direction
(``revgn.bench.peak_memory_rise``).
"""
import json
import os
import subprocess
import sys

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
    return nn.Sequential(*layers), torch.randn(batch, widths[0]), torch.randint(0, widths[-1],
                                                                                 (batch,))


def direction_fn(path, widths=WIDTHS, batch=BATCH):
    import revgn
    model, x, y = make(widths, batch)
    opt = revgn.EGN(model, loss="cross_entropy", damping=1.0, jacobian=path)
    return lambda: opt.direction(x, y)


def _child(path):
    from revgn.bench import median_time, peak_memory_rise
    fn = direction_fn(path)
    rise = peak_memory_rise(fn)
    seconds = median_time(fn, repeats=3, warmup=0)
    print(json.dumps({"path": path, "seconds": seconds, "peak_rise_bytes": rise}))


def measure(path):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--child", path], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", ["structured", "explicit"])
def test_direction(benchmark, path):
    fn = direction_fn(path, widths=(784, 256, 256, 10), batch=64)
    benchmark.extra_info.update(path=path, widths="784-256-256-10", batch=64)
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1, iterations=1)


def main():
    rows = {p: measure(p) for p in ("structured", "explicit")}
    s, e = rows["structured"], rows["explicit"]
    print(f"EGN direction, MLP {'-'.join(map(str, WIDTHS))}, b={BATCH}, cross-entropy, float32, "
          f"CPU {torch.get_num_threads()} threads")
    for p, r in rows.items():
        print(f"  {p:<11} {r['seconds'] * 1e3:10.1f} ms   peak rise {r['peak_rise_bytes'] / 2**20:9.1f} MiB")
    print(f"  explicit / structured: time {e['seconds'] / s['seconds']:.1f}x, "
          f"peak memory {e['peak_rise_bytes'] / s['peak_rise_bytes']:.1f}x")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        main()

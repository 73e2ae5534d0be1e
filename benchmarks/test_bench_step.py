"""Whole GN steps side by side: auto, reference, the authors' algorithm, and an Adam step, on
the synthetic workload and on the paper's MNIST workload (real images, the paper's settings;
skipped where no MNIST training set is found).

    python -m pytest benchmarks/test_bench_step.py --benchmark-json out.json

Each benchmark first checks that the implementation computes the reference's update, then
times steps on the same model and batch. ``revgn bench`` runs a short version and prints ratios.
"""
import pytest
import torch

import revgn
from revgn.cli.bench import STEPS, Case, make_problem, memory_case, paper_mnist_case
from revgn.data import default_mnist_dir


def _paper_mnist():
    folder = default_mnist_dir()
    marks = []
    if folder is None or not any(folder.glob("train-images-idx3-ubyte*")):
        marks = [pytest.mark.skip(reason="no MNIST training set (REVGN_MNIST_DIR)")]
    return pytest.param(paper_mnist_case(data_dir=folder and str(folder)), marks=marks)


CPU_CASES = [Case(n=256, d=784, M=2048, L=2), Case(n=128, d=256, M=1024, L=4), _paper_mnist()]
SCALING = ([Case(n=n, d=256, M=1024, L=2) for n in (64, 256, 512)]
           + [Case(n=256, d=256, M=M, L=2) for M in (512, 2048, 4096)]
           + [Case(n=256, d=256, M=1024, L=L) for L in (1, 4, 8)])


def _check_matches_reference(case, backend):
    model, x, y = make_problem(case)
    model = model.double()
    x = x.double()
    ref, _ = revgn.ExactGN(model, lr=1.0, backend="reference").direction(x, y)
    got, _ = revgn.ExactGN(model, lr=1.0, backend=backend).direction(x, y)
    for a, b in zip(got, ref):
        assert float((a - b).norm() / b.norm().clamp_min(1e-300)) < 1e-8


@pytest.mark.parametrize("case", CPU_CASES, ids=Case.label)
@pytest.mark.parametrize("name", list(STEPS))
def test_step(benchmark, case, name):
    if name == "gn_auto":
        _check_matches_reference(Case(n=16, d=32, M=64, L=case.L), "auto")
    model, x, y = make_problem(case)
    benchmark.extra_info.update(case=case.label(), implementation=name)
    rounds = 3 if case.workload == "paper-mnist" else 5
    benchmark.pedantic(STEPS[name](model, x, y, case), rounds=rounds, warmup_rounds=1,
                       iterations=1)


@pytest.mark.parametrize("case", SCALING, ids=Case.label)
def test_scaling(benchmark, case):
    model, x, y = make_problem(case)
    benchmark.extra_info.update(case=case.label())
    benchmark.pedantic(STEPS["gn_auto"](model, x, y, case), rounds=5, warmup_rounds=1,
                       iterations=1)


@pytest.mark.parametrize("L", [2, 4, 8])
def test_peak_memory_against_depth(benchmark, L):
    """Records the peak rise per step for GN and Adam (bytes, in extra_info)."""
    case = Case(n=1024, d=64, M=4096, L=L)
    rises = benchmark.pedantic(memory_case, args=(case,), rounds=1, iterations=1)
    benchmark.extra_info.update(L=L, **{f"peak_rise_{k}": v for k, v in rises.items()})

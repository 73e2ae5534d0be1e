"""The sweep's ops one by one: reference vs Triton vs the compiled extension (cpp / cuda).

    REVGN_BENCH_GPU=1 python -m pytest benchmarks/test_bench_kernels.py --benchmark-json k.json
    python -m pytest benchmarks/test_bench_kernels.py -k "gram"          # one op

Parametrized over implementation x shape x dtype for each op. Every case first checks the
implementation against the reference on the very inputs it will time, then times calls through
the op table (``revgn.ops.bind(impl, device).<op>``), synchronizing the device inside each timed
round. ``extra_info`` records the shape, the MAC count of DESIGN §3.2 and, for the matmul ops,
the achieved TFLOP/s (2 flops per MAC) and, on an H100 / H200, the fraction of the peak for the
arithmetic used (float32 FMA, TF32 tensor cores, float64 tensor cores).

Triton needs a GPU. Under ``TRITON_INTERPRET=1`` (benchmarks/conftest.py sets it unless
``REVGN_BENCH_GPU=1``) the Triton cases check correctness on a tiny shape and skip the timing:
interpreter timings mean nothing.
"""
import os
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from revgn import backend as _backend
from revgn import ops

IMPLEMENTATIONS = ["reference", "triton", "cpp", "cuda"]
DTYPES = [torch.float32, torch.float64]
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}
TF32_TOLERANCE = 5e-3

GPU = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cuda" if GPU else "cpu")

# Dense peaks (TFLOP/s) of the H100 SXM and H200 (same compute): float32 without tensor cores,
# TF32 and float64 with them.
PEAK_TFLOPS = {"ieee32": 67.0, "tf32": 495.0, "fp64": 67.0}


@dataclass(frozen=True)
class Shape:
    n: int = 0      # batch
    h: int = 0      # half width
    M: int = 0      # bottleneck
    B: int = 0      # systems (cholesky)
    k: int = 0      # right-hand sides (cholesky)
    bottleneck: bool = True

    def label(self):
        fields = ("n", "h", "M", "B", "k") if self.bottleneck else ("n", "h")
        text = "-".join(f"{f}{getattr(self, f)}" for f in fields if getattr(self, f))
        return text + ("" if self.bottleneck else "-noC")


@dataclass(frozen=True)
class OpCase:
    make: Callable            # (shape, dtype) -> args (without backend)
    macs: Callable            # shape -> multiply-adds of one call (DESIGN §3.2), or None
    shapes: list              # on this machine
    tiny: Shape               # under the interpreter
    compare: Callable = None  # (got, want) -> list of (got_tensor, want_tensor)


def _randn(*shape, dtype):
    return torch.randn(*shape, dtype=dtype, device=DEVICE)


def _coupling_args(s, dtype):
    M = s.M if s.bottleneck else s.h
    u, du, y, dy = (_randn(s.n, s.h, dtype=dtype) for _ in range(4))
    C = _randn(s.h, M, dtype=dtype) / M ** 0.5 if s.bottleneck else None
    return u, du, y, dy, C, _randn(s.h, M, dtype=dtype) * 1e-2, _randn(s.h, dtype=dtype), "relu"


def _spd(s, dtype):
    X = _randn(s.B, s.n, s.n + 4, dtype=dtype)
    K = X @ X.mT / s.n + torch.eye(s.n, dtype=dtype, device=DEVICE)
    return K, _randn(s.B, s.n, s.k, dtype=dtype), 1e-3


def _jt_update_args(s, dtype):
    return (_randn(s.h, s.M, dtype=dtype), _randn(s.h, dtype=dtype),
            _randn(s.n, s.M, dtype=dtype), _randn(s.n, s.h, dtype=dtype), -1e-3)


def _compare_update(got_args, want_args):
    return [(got_args[0], want_args[0]), (got_args[1], want_args[1])]


if GPU:
    MATMUL_SHAPES = [Shape(n=1024, h=392, M=8000), Shape(n=1024, h=1536, M=8000),
                     Shape(n=1024, h=392, M=8000, bottleneck=False)]
    CHOLESKY_SHAPES = [Shape(B=1024, n=10, k=1), Shape(B=256, n=64, k=64),
                       Shape(B=1, n=1024, k=392)]
else:
    MATMUL_SHAPES = [Shape(n=256, h=128, M=1024), Shape(n=256, h=128, M=1024, bottleneck=False)]
    CHOLESKY_SHAPES = [Shape(B=256, n=10, k=1), Shape(B=16, n=64, k=64)]
TINY = Shape(n=20, h=9, M=40)

OPS = {
    "coupling_inverse_with_tangent": OpCase(
        _coupling_args, lambda s: 4 * s.n * s.h * (s.M if s.bottleneck else s.h),
        MATMUL_SHAPES, TINY),
    "gram": OpCase(lambda s, dt: (_randn(s.n, s.M, dtype=dt), True), lambda s: s.n * s.n * s.M,
                   [s for s in MATMUL_SHAPES if s.bottleneck], TINY),
    "jt_product": OpCase(lambda s, dt: (_randn(s.n, s.M, dtype=dt), _randn(s.n, s.h, dtype=dt)),
                         lambda s: s.n * s.M * s.h, [s for s in MATMUL_SHAPES if s.bottleneck],
                         TINY),
    "jt_update_": OpCase(_jt_update_args, lambda s: s.n * s.M * s.h,
                         [s for s in MATMUL_SHAPES if s.bottleneck], TINY,
                         compare=_compare_update),
    "cholesky_factor_solve": OpCase(_spd, None, CHOLESKY_SHAPES, Shape(B=3, n=10, k=2)),
}

CASES = [(op, shape) for op, case in OPS.items() for shape in case.shapes]


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300)) if b.numel() else 0.0


def _outputs(result):
    return [result] if isinstance(result, torch.Tensor) else list(result)


def _check_against_reference(op, case, args, impl, dtype):
    """Run ``impl`` and the reference on copies of ``args`` and compare every output."""
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    got = getattr(ops.bind(impl, DEVICE), op)(*copies)
    ref_copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    want = ops.REFERENCES[op](*ref_copies)
    pairs = case.compare(copies, ref_copies) if case.compare else list(
        zip(_outputs(got), _outputs(want)))
    tol = TOLERANCE[dtype]
    if dtype == torch.float32 and _float32_arithmetic(impl) != "ieee32":
        tol = TF32_TOLERANCE
    if op == "cholesky_factor_solve":
        tol *= 100  # a solve carries cond(K) * eps; these systems have cond(K) of order 10-100
    for g, w in pairs:
        if g.is_floating_point():
            assert torch.isfinite(g).all() and _rel(g, w) < tol, (op, impl, _rel(g, w))
        else:
            assert torch.equal(g, w), (op, impl)


def _float32_arithmetic(impl):
    """"ieee32" or "tf32": what float32 products of ``impl`` run on."""
    if impl == "triton":
        import revgn
        precision = revgn.load_kernels()._common.dot_precision(torch.float32)
        return "ieee32" if precision == "ieee" else "tf32"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 and DEVICE.type == "cuda" else "ieee32"


def _peak(dtype, impl):
    if DEVICE.type != "cuda":
        return None
    name = torch.cuda.get_device_name(DEVICE)
    if "H100" not in name and "H200" not in name:
        return None
    return PEAK_TFLOPS["fp64" if dtype == torch.float64 else _float32_arithmetic(impl)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op,shape", CASES, ids=lambda v: v.label() if isinstance(v, Shape)
                         else v)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_op(benchmark, impl, op, shape, dtype):
    if not _backend.available(impl, DEVICE):
        pytest.skip(f"{impl} is not available on {DEVICE}")
    if impl != "reference" and not ops.bind(impl, DEVICE).implemented()[op]:
        pytest.skip(f"{impl} runs the reference for {op} (the row of reference times it)")
    case = OPS[op]
    interpreted_triton = impl == "triton" and INTERPRETED
    if interpreted_triton:
        shape = case.tiny
    torch.manual_seed(0)
    args = case.make(shape, dtype)
    if impl != "reference":
        _check_against_reference(op, case, args, impl, dtype)
    if interpreted_triton:
        pytest.skip("correct on a tiny shape; Triton interpreter timings mean nothing "
                    "(time on a GPU with REVGN_BENCH_GPU=1)")

    fn = getattr(ops.bind(impl, DEVICE), op)

    def call():
        fn(*args)
        _sync()

    _sync()
    benchmark.extra_info.update(op=op, implementation=impl, shape=shape.label(),
                                dtype=str(dtype), device=str(DEVICE))
    benchmark.pedantic(call, rounds=10 if GPU else 3, warmup_rounds=2, iterations=1)
    if case.macs is not None:
        macs = case.macs(shape)
        seconds = benchmark.stats.stats.median
        tflops = 2 * macs / seconds / 1e12
        benchmark.extra_info.update(macs=macs, tflops=round(tflops, 3))
        peak = _peak(dtype, impl)
        if peak:
            benchmark.extra_info["fraction_of_peak"] = round(tflops / peak, 3)

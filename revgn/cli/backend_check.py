"""``revgn check``: every fast backend against the reference, on this machine.

For each op of ``revgn.ops`` and each backend that can run on the device (``cpp`` on the CPU, and
``triton`` there only under ``TRITON_INTERPRET=1``; ``cuda`` and ``triton`` on a GPU), the fast
implementation and the pure-PyTorch reference run on the same fresh random inputs: shapes with
tails and non-powers of two, every activation, with and without the inverted bottleneck ``C``
and the bias, float32 and float64. The worst relative error ``||fast - ref|| / ||ref||`` of each
(backend, op, dtype) is compared with its tolerance. Then one whole ``ExactGN`` direction on a
small float64 model per backend against ``backend="reference"``.

Tolerances: float32 1e-4 (5e-3 where TF32 matmuls are enabled), float64 1e-10; the Cholesky
solves carry ``cond(K) eps`` and get 1e-3 / 1e-9. The exit status is 1 when anything fails.
The test suite builds its op inputs here too (``tests/test_ext.py``,
``tests/test_kernels_triton.py``).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable

import torch

from revgn.activations import ACTIVATIONS as _ACTIVATIONS

ACTIVATIONS = list(_ACTIVATIONS)  # every activation revgn knows (revgn.activations)
# (n, h, M): one element, tails, several tiles, non-powers of two
COUPLING_SHAPES = [(1, 3, 7), (5, 17, 40), (33, 3, 130)]
CHOLESKY_SHAPES = [(1, 1, 1), (7, 10, 3), (3, 64, 5), (2, 70, 4)]  # (B, n, k)
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
TF32_TOL = 5e-3
SOLVE_TOL = {torch.float32: 1e-3, torch.float64: 1e-9}  # the solves carry cond(K) * eps
STEP_TOL = 1e-10


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (0 for empty tensors)."""
    if not b.numel():
        return 0.0
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def coupling_inputs(n, h, M, dtype, bottleneck=True, bias=True, device="cpu"):
    """``(u, du, y, dy, C, W, b)`` of one coupling; ``C`` None without the bottleneck."""
    g = dict(dtype=dtype, device=device)
    u, du, y, dy = (torch.randn(n, h, **g) for _ in range(4))
    C = torch.randn(h, M, **g) / M ** 0.5 if bottleneck else None
    W = torch.randn(h, M if bottleneck else h, **g) * 0.5
    b = torch.randn(h, **g) if bias else None
    return u, du, y, dy, C, W, b


def spd_batch(B, n, k, dtype, device="cpu"):
    """``(K, R)``: ``B`` well-conditioned symmetric positive definite ``n x n`` systems."""
    X = torch.randn(B, n, n + 3, dtype=dtype, device=device)
    return X @ X.mT + 0.1 * torch.eye(n, dtype=dtype, device=device), torch.randn(
        B, n, k, dtype=dtype, device=device)


@dataclasses.dataclass
class OpCase:
    """One call of an op: ``args`` for ``revgn.ops.<op>``, and which results to compare."""
    op: str
    args: tuple
    tol: dict = dataclasses.field(default_factory=lambda: TOL)
    # (args after the call, return value) -> the tensors to compare
    outputs: Callable = lambda args, out: list(out) if isinstance(out, tuple) else [out]


def _in_place_outputs(args, out):
    W, b = args[0], args[1]
    return [W] + ([b] if b is not None else [])


def op_cases(dtype: torch.dtype, device) -> list[OpCase]:
    """Every op over the shapes above, on fresh random inputs."""
    cases = []
    for shape in COUPLING_SHAPES:
        for activation in ACTIVATIONS:
            for bottleneck, bias in ((True, True), (True, False), (False, True), (False, False)):
                args = coupling_inputs(*shape, dtype, bottleneck, bias, device=device)
                cases.append(OpCase("coupling_inverse_with_tangent", (*args, activation)))
            u, du, _, _, C, W, _ = coupling_inputs(*shape, dtype, device=device)
            cases.append(OpCase("coupling_tangent", (u @ C, du, C, W, activation)))
        n, h, M = shape
        A, Z = (torch.randn(n, M, dtype=dtype, device=device),
                torch.randn(n, h, dtype=dtype, device=device))
        for bias in (True, False):
            cases.append(OpCase("gram", (A, bias)))
            W = torch.randn(h, M, dtype=dtype, device=device)
            b = torch.randn(h, dtype=dtype, device=device) if bias else None
            cases.append(OpCase("jt_update_", (W, b, A, Z, -0.37), outputs=_in_place_outputs))
        cases.append(OpCase("jt_product", (A, Z)))
    for B, n, k in CHOLESKY_SHAPES:
        for damping in (0.0, 0.5):
            cases.append(OpCase("cholesky_factor_solve", (*spd_batch(B, n, k, dtype, device),
                                                          damping), tol=SOLVE_TOL))
    return cases


def _copy(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def run_case(case: OpCase, backend: str) -> float:
    """Worst relative error of ``backend`` against the reference over the case's outputs;
    ``inf`` when the outputs differ in number, shape or dtype, or either is not finite."""
    from revgn.ops import REFERENCES, bind
    device = next(a.device for a in case.args if isinstance(a, torch.Tensor))
    fn = getattr(bind(backend, device), case.op)
    fast_args, ref_args = _copy(case.args), _copy(case.args)
    got = case.outputs(fast_args, fn(*fast_args))
    want = case.outputs(ref_args, REFERENCES[case.op](*ref_args))
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for g, w in zip(got, want):
        if g.shape != w.shape or g.dtype != w.dtype:
            return float("inf")
        if g.is_floating_point():
            error = rel(g, w) if torch.isfinite(g).all() else float("inf")
        else:
            error = float(not torch.equal(g, w))
        if error != error:  # NaN: the reference itself was not finite
            return float("inf")
        worst = max(worst, error)
    return worst


def step_error(backend: str, device, activation: str = "gelu") -> float:
    """One ``ExactGN`` direction on a float64 ``RevMLP`` with non-trivial weights and biases,
    ``backend`` against ``"reference"``; the worst relative error over the parameters."""
    import revgn
    torch.manual_seed(0)
    model = revgn.RevMLP(12, 3, depth=3, bottleneck=40, activation=activation, init_std=0.3)
    model = model.to(device=device, dtype=torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".b"):
                p.normal_(0, 0.3)
    x = torch.randn(7, 12, dtype=torch.float64, device=device)
    y = torch.randint(0, 3, (7,), device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want, _ = revgn.ExactGN(model, lr=0.5, backend="reference").direction(x, y)
        got, _ = revgn.ExactGN(model, lr=0.5, backend=backend).direction(x, y)
    return max(rel(g, w) for g, w in zip(got, want))


def implements(backend: str, op: str, device) -> bool:
    """Whether ``backend`` has its own implementation of ``op`` (else the reference runs)."""
    from revgn.ops import bind
    return bind(backend, device).implemented()[op]


def backends_to_check(device) -> list[str]:
    from revgn import backend as _backend
    device = torch.device(device)
    return [name for name in ("cpp", "cuda", "triton") if _backend.available(name, device)]


def _tf32(backend: str) -> bool:
    if backend == "triton":
        return os.environ.get("REVGN_TRITON_TF32") == "1" or os.environ.get(
            "REVGN_TRITON_INPUT_PRECISION", "ieee") != "ieee"
    return backend == "cuda" and torch.backends.cuda.matmul.allow_tf32


def check(device="cpu", backends=None, seed: int = 0) -> list[dict]:
    """Rows ``{"backend", "op", "dtype", "cases", "error", "tol", "ok"}``, one per backend, op
    it implements and dtype (an op a backend leaves to the reference has no row), plus one
    ``"exact_gn_step"`` row per backend."""
    rows = []
    for backend in backends if backends is not None else backends_to_check(device):
        for dtype in (torch.float32, torch.float64):
            torch.manual_seed(seed)
            worst: dict[str, list] = {}
            for case in op_cases(dtype, device):
                if not implements(backend, case.op, device):
                    continue
                tol = case.tol[dtype]
                if dtype == torch.float32 and _tf32(backend) and case.tol is TOL:
                    tol = TF32_TOL
                entry = worst.setdefault(case.op, [0, 0.0, tol])
                entry[0] += 1
                entry[1] = max(entry[1], run_case(case, backend))
            for op, (count, error, tol) in worst.items():
                rows.append(dict(backend=backend, op=op, dtype=str(dtype).replace("torch.", ""),
                                 cases=count, error=error, tol=tol, ok=error <= tol))
        error = step_error(backend, device)
        rows.append(dict(backend=backend, op="exact_gn_step", dtype="float64", cases=1,
                         error=error, tol=STEP_TOL, ok=error <= STEP_TOL))
    return rows


def format_rows(rows) -> str:
    header = f"{'backend':<8}{'op':<32}{'dtype':<9}{'cases':>6}{'worst rel err':>15}{'tol':>9}  "
    lines = [header + "result"]
    for r in rows:
        lines.append(f"{r['backend']:<8}{r['op']:<32}{r['dtype']:<9}{r['cases']:>6}"
                     f"{r['error']:>15.2e}{r['tol']:>9.0e}  {'ok' if r['ok'] else 'FAIL'}")
    return "\n".join(lines)


def main(args) -> int:
    from revgn.cli.common import UsageError, require_device
    from revgn.backend import triton_interpreted
    require_device(args.device)
    device = torch.device(args.device)
    available = backends_to_check(device)
    if args.backend != "all" and args.backend not in available:
        hint = "`revgn info` says what is installed and usable here"
        if args.backend == "triton" and device.type == "cpu" and not triton_interpreted():
            hint = ("on the CPU the Triton kernels run only in the interpreter: "
                    "TRITON_INTERPRET=1 revgn check --backend triton")
        elif args.backend == "cuda" and device.type == "cpu":
            hint = "the cuda backend runs on a GPU: --device cuda"
        raise UsageError(f"backend {args.backend!r} is not usable on {device}; {hint}")
    backends = available if args.backend == "all" else [args.backend]
    if not backends:
        print(f"no fast backend is usable on {device}, nothing to check: `revgn info` says what "
              "is installed"
              + ("; set TRITON_INTERPRET=1 to run the Triton kernels on the CPU (slow)"
                 if device.type == "cpu" else ""))
        return 0
    rows = check(device, backends)
    print(format_rows(rows))
    failed = sum(not r["ok"] for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} checks within tolerance on {device} "
          f"(torch {torch.__version__})")
    return 1 if failed else 0

"""The op table: bound once, passed down, and honest about what runs.

``backend="reference"`` must run the references and nothing else on every path: a dispatch mode
records every op executed during the steps, and no op of the compiled extension (``revgn::``) or
of the Triton kernels (``revgn_triton::``) may appear. A fast backend, recorded the same way,
is the positive control that the recording sees them.
"""
import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import revgn
from revgn import backend as _backend
from revgn.ops import REFERENCES, OpTable, bind, reference_ops
from tests.helpers import labels, make_model

FAST_NAMESPACES = ("revgn", "revgn_triton")


class RecordOps(TorchDispatchMode):
    """Every op dispatched while active, as ``namespace::name``."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(f"{func.namespace}::{func.__name__.split('.')[0]}")
        return func(*args, **(kwargs or {}))

    def fast(self):
        return {name for name in self.seen if name.split("::")[0] in FAST_NAMESPACES}


SOLVER_OPTIONS = [
    dict(solver="cholesky"), dict(solver="cholesky", rtol=1e-1), dict(solver="eigh", rtol=1e-2),
    dict(solver="svd", rtol=1e-2), dict(solver="qr"), dict(solver="rsvd"),
    dict(solver="damped", pinv_damping=1e-3), dict(solver="transpose"),
    dict(solver="projector", rtol=1e-1), dict(solver="cholesky", curvature="damped", damping=0.1),
    dict(solver="cholesky", rtol=1e-1, tangent_mode="autodiff"),
    dict(solver="cholesky", rtol=1e-1, noise=0.1),
]


def _steps(backend, options, dtype=torch.float64):
    """Two steps (the second takes the routes a first step remembers) and a direction of a
    depth-3 model whose first block is linear (folded) and whose later couplings truncate at
    ``rtol=1e-1``: every coupling kind, the cross-term of a truncated F included."""
    torch.manual_seed(0)
    model = make_model(12, 3, 3, 40, activation="relu", first_activation="identity", dtype=dtype)
    x, y = torch.randn(30, 12, dtype=dtype), labels(30, 3)
    opt = revgn.ExactGN(model, lr=0.3, backend=backend, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.step(x, y)
        opt.step(x, y)
        opt.direction(x, y)


@pytest.mark.parametrize("options", SOLVER_OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_the_reference_backend_runs_only_references(options):
    with RecordOps() as record:
        _steps("reference", options)
    assert record.seen, "the recording saw nothing"
    assert record.fast() == set()


def test_egn_on_the_reference_backend_runs_only_references():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
    x, y = torch.randn(11, 6), labels(11, 3)
    with RecordOps() as record:
        for damping in (0.0, 0.1):
            revgn.EGN(copy.deepcopy(model), loss="cross_entropy", damping=damping,
                      backend="reference").step(x, y)
    assert record.seen and record.fast() == set()


def _fast_cpu_backends():
    names = [b for b in ("cpp", "triton") if _backend.available(b, torch.device("cpu"))]
    return names or [pytest.param("none", marks=pytest.mark.skip(reason="no fast CPU backend"))]


@pytest.mark.parametrize("name", _fast_cpu_backends())
def test_a_fast_backend_is_seen_by_the_recording(name):
    """The positive control: the same recording sees a fast backend's ops."""
    with RecordOps() as record:
        _steps(name, dict(solver="cholesky", rtol=1e-1))
    namespace = "revgn" if name == "cpp" else "revgn_triton"
    assert {op.split("::")[0] for op in record.fast()} == {namespace}
    assert f"{namespace}::coupling_tangent" in record.fast()


def test_bind_resolves_once_and_keeps_the_choice():
    table = bind("reference", "cpu")
    assert isinstance(table, OpTable) and table.backend == "reference"
    assert table is reference_ops()
    assert not any(table.implemented().values())
    assert all(getattr(table, op) is ref for op, ref in REFERENCES.items())
    opt = revgn.ExactGN(make_model(), backend="reference")
    assert opt.ops.backend == "reference"


def test_an_op_needs_the_table():
    from revgn.ops import gram_solve
    K = torch.eye(3, dtype=torch.float64)
    with pytest.raises(TypeError):
        gram_solve(K, K, "cholesky")
    # the dispatching functions are gone (bind a table); revgn.ops.gram is the op's module
    assert not [op for op in REFERENCES if callable(getattr(revgn.ops, op, None))]


def test_an_unavailable_backend_fails_at_construction():
    if _backend.available("cuda", torch.device("cpu")):
        pytest.skip("cuda runs here")
    with pytest.raises(RuntimeError, match="not available"):
        revgn.ExactGN(make_model(), backend="cuda")


def test_the_recording_catches_a_cross_term_on_the_wrong_backend(monkeypatch):
    """The bug this table removes, planted back: the F -> G cross-term run on ``auto`` whatever
    the optimizer's backend. The reference-only check must then fail."""
    if _backend.resolve("auto", torch.device("cpu")) == "reference":
        pytest.skip("auto is the reference here: the planted bug would be invisible")
    import revgn.sweep as sweep
    real = sweep._cross_term

    def on_auto(block, Y1, realized_F, K, exact_F, tangent_mode, folds, ops, *rest):
        return real(block, Y1, realized_F, K, exact_F, tangent_mode, folds,
                    bind("auto", Y1.device), *rest)
    monkeypatch.setattr(sweep, "_cross_term", on_auto)
    with pytest.raises(AssertionError):
        test_the_reference_backend_runs_only_references(dict(solver="cholesky", rtol=1e-1))


CSRC = Path(__file__).resolve().parents[1] / "csrc"


def test_one_table_of_activations_in_every_layer():
    """``revgn.activations`` is the table: every name with its code. The Triton kernels take
    their codes from it; the C++ extension spells the same names, codes and leaky slope
    (``csrc/activation.h``, ``csrc/ops_common.h``), computes the same functions and rejects
    other names."""
    from revgn.activations import ACTIVATIONS, LEAKY_RELU_SLOPE
    from revgn.ops import coupling_tangent_ref
    codes = {name: act.code for name, act in ACTIVATIONS.items()}
    assert sorted(codes.values()) == list(range(len(codes)))
    header = (CSRC / "activation.h").read_text()
    slope = float(re.search(r"kLeakySlope\s*=\s*([0-9.eE+-]+)", header).group(1))
    assert slope == LEAKY_RELU_SLOPE
    enum = dict(re.findall(r"(\w+)\s*=\s*(\d+)", re.search(r"enum class Activation[^{]*{([^}]*)}",
                                                          header).group(1)))
    parsed = dict(re.findall(r'name == "(\w+)"\) return Activation::(\w+);',
                             (CSRC / "ops_common.h").read_text()))
    assert {name: int(enum[member]) for name, member in parsed.items()} == codes
    if _backend.triton_available():
        assert revgn.load_kernels()._common.ACTIVATION_CODES == codes
    if not _backend.available("cpp", torch.device("cpu")):
        pytest.skip("the extension is not built here")
    cpp = bind("cpp", "cpu")
    g = torch.Generator().manual_seed(0)
    pre, du = torch.randn(4, 6, dtype=torch.float64, generator=g), torch.randn(
        4, 3, dtype=torch.float64, generator=g)
    C, W = torch.randn(3, 6, dtype=torch.float64, generator=g), torch.randn(
        5, 6, dtype=torch.float64, generator=g)
    for name in codes:
        assert torch.allclose(cpp.coupling_tangent(pre, du, C, W, name),
                              coupling_tangent_ref(pre, du, C, W, name), rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError):
        cpp.coupling_tangent(pre, du, C, W, "softplus")


def test_one_small_cholesky_limit_per_kernel():
    """Each small-Cholesky kernel has one size limit, defined once: ``kSmallCholeskyMax`` in
    ``csrc/limits.h`` for the CPU and CUDA code (the CUDA factor lives in static shared
    memory), ``MAX_SMALL_N`` per dtype for Triton (its factor is one register tile). At the
    limit the kernel runs, one past it the vendor library: both agree with the reference."""
    defined = [(path.name, m) for path in sorted(CSRC.rglob("*")) if path.is_file()
               for m in re.findall(r"constexpr int kSmallCholeskyMax = (\d+);",
                                   path.read_text())]
    assert len(defined) == 1 and defined[0][0] == "limits.h", defined
    limits = {"cpp": {dtype: int(defined[0][1]) for dtype in (torch.float32, torch.float64)}}
    if _backend.available("triton", torch.device("cpu")):
        limits["triton"] = revgn.load_kernels().MAX_SMALL_N
    if not _backend.available("cpp", torch.device("cpu")):
        limits.pop("cpp")
    if not limits:
        pytest.skip("no small-Cholesky kernel runs here")
    for name, by_dtype in limits.items():
        table = bind(name, "cpu")
        assert table.implemented()["cholesky_factor_solve"]
        for dtype, limit in by_dtype.items():
            for n in (limit, limit + 1):
                X = torch.randn(2, n, n + 3, dtype=dtype)
                K, R = X @ X.mT + torch.eye(n, dtype=dtype), torch.randn(2, n, 2, dtype=dtype)
                L, Z, info = table.cholesky_factor_solve(K, R, 0.0)
                L_ref, Z_ref, _ = REFERENCES["cholesky_factor_solve"](K, R, 0.0)
                tol = 1e-3 if dtype == torch.float32 else 1e-9
                assert info.tolist() == [0, 0], (name, dtype, n)
                assert (Z - Z_ref).norm() <= tol * Z_ref.norm(), (name, dtype, n)
                assert (L - L_ref).norm() <= tol * L_ref.norm(), (name, dtype, n)

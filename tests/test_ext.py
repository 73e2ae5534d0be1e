"""The compiled extension (backend "cpp" on CPU, "cuda" on GPU) against the references.

It compiles what the reference cannot do in one library call: the coupling ops (their
elementwise epilogues), the Cholesky solves of small systems, and on the CPU the Gram of half
the products. ``jt_update_`` (one addmm) and ``gram`` on a GPU (one cuBLAS GEMM) run the
reference on these backends."""
import pytest
import torch

from revgn import backend
from revgn.ops import (bind, cholesky_factor_solve_ref, coupling_inverse_with_tangent_ref,
                       coupling_tangent_ref, gram_ref)
from revgn.cli.backend_check import (ACTIVATIONS, COUPLING_SHAPES, TOL, coupling_inputs, rel,
                                    spd_batch)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def ops():
    if not backend.extension_available("cpu"):
        pytest.skip("the revgn extension is not built here")
    return torch.ops.revgn


def _device(device):
    if device == "cuda" and not backend.extension_available("cuda"):
        pytest.skip("the extension was built without CUDA")
    return device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", COUPLING_SHAPES)
@pytest.mark.parametrize("bottleneck,bias", [(True, True), (False, True), (True, False)])
def test_coupling_inverse_with_tangent(ops, device, dtype, activation, shape, bottleneck, bias):
    args = coupling_inputs(*shape, dtype, bottleneck, bias, device=_device(device))
    got = ops.coupling_inverse_with_tangent(*args, activation)
    want = coupling_inverse_with_tangent_ref(*args, activation)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.isfinite(g).all()
        assert rel(g, w) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_coupling_tangent(ops, device, dtype, activation):
    u, du, _, _, C, W, _ = coupling_inputs(9, 5, 23, dtype, device=_device(device))
    pre = u @ C
    assert rel(ops.coupling_tangent(pre, du, C, W, activation),
               coupling_tangent_ref(pre, du, C, W, activation)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,M", [(1, 7), (33, 130), (64, 17), (257, 40), (515, 9), (1030, 21)])
@pytest.mark.parametrize("bias", [True, False])
def test_gram(ops, dtype, n, M, bias):
    A = torch.randn(n, M, dtype=dtype)
    assert rel(ops.gram(A, bias), gram_ref(A, bias)) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_the_table_runs_the_reference_where_nothing_is_compiled(ops, device):
    name = "cpp" if device == "cpu" else "cuda"
    _device(device)
    implemented = bind(name, device).implemented()
    assert implemented == dict(coupling_inverse_with_tangent=True, coupling_tangent=True,
                               gram=device == "cpu", jt_product=False, jt_update_=False,
                               cholesky_factor_solve=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,n,k", [(1, 1, 1), (7, 10, 3), (3, 64, 5), (2, 70, 4)])
@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_cholesky_factor_solve(ops, device, dtype, B, n, k, damping):
    K, R = spd_batch(B, n, k, dtype, device=_device(device))
    L, Z, info = ops.cholesky_factor_solve(K, R, damping)
    L2, Z2, info2 = cholesky_factor_solve_ref(K, R, damping)
    assert info.tolist() == [0] * B
    tol = 1e-3 if dtype == torch.float32 else 1e-9  # the solve carries cond(K) * eps
    assert rel(L, L2) < tol and rel(Z, Z2) < tol


@pytest.mark.parametrize("device", DEVICES)
def test_cholesky_reports_the_failing_pivot(ops, device):
    K, R = spd_batch(3, 6, 2, torch.float64, device=_device(device))
    K[1, 3, 3] = -5.0  # the leading minor of order 4 is no longer positive
    _, _, info = ops.cholesky_factor_solve(K, R, 0.0)
    _, _, info2 = cholesky_factor_solve_ref(K, R, 0.0)
    assert info[0] == 0 and info[2] == 0 and info[1] == info2[1] and int(info[1]) >= 4


def test_opcheck(ops):
    args = coupling_inputs(4, 3, 7, torch.float64)
    cases = [
        (ops.coupling_inverse_with_tangent, (*args, "gelu")),
        (ops.coupling_inverse_with_tangent, (*args[:4], None, torch.randn(3, 3,
                                              dtype=torch.float64), None, "relu")),
        (ops.coupling_tangent, (args[0] @ args[4], args[1], args[4], args[5], "tanh")),
        (ops.gram, (torch.randn(5, 9, dtype=torch.float64), True)),
        (ops.cholesky_factor_solve, (*spd_batch(2, 5, 3, torch.float64), 0.1)),
    ]
    for op, op_args in cases:
        torch.library.opcheck(op, op_args)


def test_auto_backend_on_cpu_is_the_extension():
    if not backend.extension_available("cpu"):
        pytest.skip("the revgn extension is not built here")
    assert backend.resolve("auto", torch.device("cpu")) == "cpp"


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_exact_gn_step_on_the_extension_equals_the_reference(ops, activation):
    import revgn
    from tests.helpers import labels, make_model
    model = make_model(12, 3, depth=3, M=40, activation=activation, first_activation="identity")
    x, y = torch.randn(5, 12, dtype=torch.float64), labels(5, 3)
    ref, _ = revgn.ExactGN(model, lr=0.5, backend="reference").direction(x, y)
    got, _ = revgn.ExactGN(model, lr=0.5, backend="cpp").direction(x, y)
    for a, b in zip(got, ref):
        assert rel(a, b) < 1e-10

"""The Triton kernels against the references (CPU tensors under TRITON_INTERPRET=1, or a GPU)."""
import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

import revgn  # noqa: E402
from revgn import ops  # noqa: E402
from revgn.ops import (cholesky_factor_solve_ref, coupling_inverse_with_tangent_ref,  # noqa: E402
                       coupling_tangent_ref, gram_ref, jt_product_ref, jt_update_ref)
from tests.op_cases import (ACTIVATIONS, COUPLING_SHAPES, TOL, coupling_inputs, rel,  # noqa: E402
                            spd_batch)

DEVICE = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
kernels = revgn.load_kernels()


def _poisoned(t):
    return torch.full_like(t, float("nan"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", COUPLING_SHAPES)
@pytest.mark.parametrize("bottleneck,bias", [(True, True), (False, False)])
def test_coupling_inverse_with_tangent(dtype, activation, shape, bottleneck, bias):
    args = coupling_inputs(*shape, dtype, bottleneck, bias, device=DEVICE)
    got = kernels.coupling_inverse_with_tangent(*args, activation)
    want = coupling_inverse_with_tangent_ref(*args, activation)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.isfinite(g).all()  # every element written
        assert rel(g, w) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_coupling_tangent(dtype, activation):
    u, du, _, _, C, W, _ = coupling_inputs(9, 5, 23, dtype, device=DEVICE)
    pre = u @ C
    assert rel(kernels.coupling_tangent(pre, du, C, W, activation),
               coupling_tangent_ref(pre, du, C, W, activation)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,M", [(1, 7), (33, 130), (20, 17)])
@pytest.mark.parametrize("bias", [True, False])
def test_gram_symmetric_tiles(dtype, n, M, bias):
    A = torch.randn(n, M, dtype=dtype, device=DEVICE)
    K = kernels.gram(A, bias)
    assert torch.isfinite(K).all() and torch.equal(K, K.t())
    assert rel(K, gram_ref(A, bias)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,h,M", [(13, 6, 40), (1, 3, 17), (35, 17, 9)])
def test_jt_product_and_fused_update(dtype, n, h, M):
    g = dict(dtype=dtype, device=DEVICE)
    A, Z = torch.randn(n, M, **g), torch.randn(n, h, **g)
    dW, db = kernels.jt_product(A, Z)
    dW2, db2 = jt_product_ref(A, Z)
    assert rel(dW, dW2) < TOL[dtype] and rel(db, db2) < TOL[dtype]
    W, b = torch.randn(h, M, **g), torch.randn(h, **g)
    W2, b2 = W.clone(), b.clone()
    kernels.jt_update_(W, b, A, Z, -0.3)
    jt_update_ref(W2, b2, A, Z, -0.3)
    assert rel(W, W2) < TOL[dtype] and rel(b, b2) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,n,k", [(1, 1, 1), (4, 10, 3), (2, 33, 20), (2, 70, 2)])
@pytest.mark.parametrize("damping", [0.0, 0.25])
def test_cholesky_factor_solve(dtype, B, n, k, damping):
    K, R = spd_batch(B, n, k, dtype, device=DEVICE)
    L, Z, info = kernels.cholesky_factor_solve(K, R, damping)
    L2, Z2, _ = cholesky_factor_solve_ref(K, R, damping)
    tol = 1e-3 if dtype == torch.float32 else 1e-9  # the solve carries cond(K) * eps
    assert info.tolist() == [0] * B
    assert rel(L, L2) < tol and rel(Z, Z2) < tol


def test_cholesky_reports_the_failing_pivot():
    K, R = spd_batch(3, 6, 2, torch.float64, device=DEVICE)
    K[1, 3, 3] = -5.0
    _, _, info = kernels.cholesky_factor_solve(K, R, 0.0)
    _, _, info_ref = cholesky_factor_solve_ref(K, R, 0.0)
    assert info.tolist()[0] == 0 and info.tolist()[2] == 0
    assert int(info[1]) == int(info_ref[1]) > 0


def test_dispatcher_routes_to_triton():
    A = torch.randn(9, 21, dtype=torch.float64, device=DEVICE)
    assert rel(ops.gram(A, True, backend="triton"), gram_ref(A, True)) < 1e-12


def test_opcheck():
    g = dict(dtype=torch.float64, device=DEVICE)
    args = coupling_inputs(4, 3, 7, torch.float64, device=DEVICE)
    cases = [
        (kernels.coupling_inverse_with_tangent, (*args, "gelu")),
        (kernels.coupling_tangent, (args[0] @ args[4], args[1], args[4], args[5], "relu")),
        (kernels.gram, (torch.randn(5, 9, **g), True)),
        (kernels.jt_product, (torch.randn(5, 9, **g), torch.randn(5, 3, **g))),
        (kernels.jt_update_, (torch.randn(3, 9, **g), torch.randn(3, **g), torch.randn(5, 9, **g),
                              torch.randn(5, 3, **g), 0.5)),
        (kernels.cholesky_factor_solve, (*spd_batch(2, 5, 3, torch.float64, device=DEVICE), 0.1)),
    ]
    for op, op_args in cases:
        torch.library.opcheck(op, op_args, test_utils=("test_schema", "test_faketensor"))


def test_exact_gn_on_triton_equals_reference():
    from tests.helpers import labels, make_model
    model = make_model(10, 3, depth=2, M=24, activation="relu",
                       first_activation="identity").to(DEVICE)
    x, y = torch.randn(6, 10, dtype=torch.float64, device=DEVICE), labels(6, 3).to(DEVICE)
    ref, _ = revgn.ExactGN(model, lr=0.5, backend="reference").direction(x, y)
    got, _ = revgn.ExactGN(model, lr=0.5, backend="triton").direction(x, y)
    for a, b in zip(got, ref):
        assert rel(a, b) < 1e-10

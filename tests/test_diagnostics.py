"""Diagnostics against brute force on tiny models."""
import copy

import pytest
import torch

import revgn
from revgn import diagnostics
from tests.helpers import make_model


def test_ntk_equals_explicit_jacobian_products():
    model = make_model(6, 3, depth=2, M=7, std=0.4)
    x = torch.randn(4, 6, dtype=torch.float64)
    params = list(model.parameters())
    rows = []
    out = model(x)
    for i in range(out.shape[0]):
        for c in range(out.shape[1]):
            grads = torch.autograd.grad(out[i, c], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    J = torch.stack(rows)
    K = diagnostics.empirical_ntk(model, x)
    assert torch.allclose(K, J @ J.t(), rtol=1e-10, atol=1e-12)
    assert diagnostics.ntk_similarity(K, K) == pytest.approx(1.0)
    assert diagnostics.ntk_distance(K, 2 * K) == pytest.approx(0.0, abs=1e-12)
    assert diagnostics.ntk_similarity(K, torch.eye(len(K), dtype=K.dtype)) < 1.0


def test_linear_cka_equals_hsic_with_centering_matrices():
    X, Y = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    n = X.shape[0]
    H = torch.eye(n, dtype=X.dtype) - 1.0 / n

    def hsic(A, B):
        return torch.trace(A @ A.t() @ H @ B @ B.t() @ H)
    want = hsic(X, Y) / (hsic(X, X) * hsic(Y, Y)).sqrt()
    assert diagnostics.linear_cka(X, Y) == pytest.approx(float(want), rel=1e-12)
    Q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    assert diagnostics.linear_cka(X, 3.0 * X @ Q) == pytest.approx(1.0, rel=1e-12)
    assert diagnostics.linear_cka(X, Y) < 0.99


def test_block_cka_is_one_at_initialization_and_drops_after_change():
    model = make_model(8, 3, depth=3, M=16, std=0.3)
    init = copy.deepcopy(model)
    x = torch.randn(12, 8, dtype=torch.float64)
    assert diagnostics.block_cka(model, init, x) == pytest.approx([1.0] * 3)
    with torch.no_grad():
        model.blocks[1].G.W.mul_(-5.0)
    cka = diagnostics.block_cka(model, init, x)
    assert cka[0] == pytest.approx(1.0) and cka[1] < 1.0 and cka[2] < 1.0


def test_weight_cosine_against_manual():
    model = make_model(8, 3, depth=2, M=10)
    init = copy.deepcopy(model)
    with torch.no_grad():
        model.blocks[0].F.W.add_(torch.randn_like(model.blocks[0].F.W))
    cos = diagnostics.weight_cosine(model, init)
    a = torch.cat([model.blocks[0].F.W.reshape(-1), model.blocks[0].F.b])
    b = torch.cat([init.blocks[0].F.W.reshape(-1), init.blocks[0].F.b])
    assert cos["block0.F"] == pytest.approx(float(a @ b / (a.norm() * b.norm())))
    assert cos["block0.G"] == pytest.approx(1.0) and cos["all"] < 1.0


def test_batch_loss_change_of_a_gn_step():
    model = make_model(8, 3, depth=2, M=32)
    x, y = torch.randn(10, 8, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    before = revgn.ExactGN(model, lr=0.1, loss="mse").step(x, y).loss
    after = float(0.5 * (model(x) - y).pow(2).sum(1).mean())
    change = diagnostics.batch_loss_change(before, after)
    assert change == pytest.approx(100 * (after - before) / before)
    # to first order the step scales the residual by (1 - lr): the loss by 0.81 (-19%)
    assert -25 < change < -12

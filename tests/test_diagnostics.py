"""Diagnostics against brute force on tiny models."""
import copy
import math

import pytest
import torch

import revgn
from revgn import diagnostics
from tests.helpers import make_model


def jacobian_by_rows(model, x):
    """``J`` (nk x P), one autograd backward pass per output ``f[i, c]``."""
    params = list(model.parameters())
    out = model(x)
    rows = []
    for i in range(out.shape[0]):
        for c in range(out.shape[1]):
            grads = torch.autograd.grad(out[i, c], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


@torch.no_grad()
def jacobian_by_columns(model, x, eps=1e-6):
    """``J`` (nk x P), one central difference per parameter entry (no autograd at all)."""
    columns = []
    for p in model.parameters():
        flat = p.view(-1)
        for j in range(flat.numel()):
            keep = flat[j].item()
            flat[j] = keep + eps
            up = model(x).reshape(-1)
            flat[j] = keep - eps
            down = model(x).reshape(-1)
            flat[j] = keep
            columns.append((up - down) / (2 * eps))
    return torch.stack(columns, dim=1)


def test_ntk_equals_explicit_jacobian_products():
    model = make_model(6, 3, depth=2, M=7, std=0.4)
    x = torch.randn(4, 6, dtype=torch.float64)
    K = diagnostics.empirical_ntk(model, x)
    J = jacobian_by_rows(model, x)
    assert K.shape == (12, 12)
    assert torch.allclose(K, J @ J.t(), rtol=1e-10, atol=1e-12)
    Jfd = jacobian_by_columns(model, x)
    assert torch.allclose(K, Jfd @ Jfd.t(), rtol=1e-6, atol=1e-8)


def test_ntk_of_any_module_and_of_trainable_parameters_only():
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    net = net.double()
    x = torch.randn(3, 5, dtype=torch.float64)
    J = jacobian_by_rows(net, x)
    assert torch.allclose(diagnostics.empirical_ntk(net, x), J @ J.t(), rtol=1e-10)
    net[0].weight.requires_grad_(False)  # only the remaining parameters enter the kernel
    kept = [p for p in net.parameters() if p.requires_grad]
    out = net(x)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[i, c], kept,
                                                                  retain_graph=True)])
            for i in range(3) for c in range(2)]
    J = torch.stack(rows)
    assert torch.allclose(diagnostics.empirical_ntk(net, x), J @ J.t(), rtol=1e-10)


def test_ntk_direction_similarity_is_the_cosine_of_explicit_kernel_products():
    """The authors' measure ``cos(K0 u, K1 u)`` on the stream before the readout, against
    ``K = J J^T`` with ``J`` from one backward pass per stream entry."""
    model0 = make_model(6, 3, depth=2, M=7, std=0.4)
    model1 = copy.deepcopy(model0)
    with torch.no_grad():
        for p in model1.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(5, 6, dtype=torch.float64)
    u = torch.randn(5, 6, dtype=torch.float64)

    def stream_kernel(model):
        params = list(model.parameters())
        out = model.stream(x)
        J = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            out[i, j], params, retain_graph=True)]) for i in range(5) for j in range(6)])
        return J @ J.t()

    a, b = stream_kernel(model0) @ u.reshape(-1), stream_kernel(model1) @ u.reshape(-1)
    want = float(a @ b / (a.norm() * b.norm()))
    got = diagnostics.ntk_direction_similarity(model0, model1, x, u)
    assert got == pytest.approx(want, rel=1e-10)
    assert got < 0.999  # the perturbation moved the kernel along u
    assert diagnostics.ntk_direction_similarity(model0, model0, x, u) == pytest.approx(1.0)
    # any output: the logits after the readout give a different kernel, and its own cosine
    logits = diagnostics.ntk_direction_similarity(model0, model1, x, u[:, :3],
                                                  output=lambda m, inp: m(inp))
    K0, K1 = diagnostics.empirical_ntk(model0, x), diagnostics.empirical_ntk(model1, x)
    a, b = K0 @ u[:, :3].reshape(-1), K1 @ u[:, :3].reshape(-1)
    assert logits == pytest.approx(float(a @ b / (a.norm() * b.norm())), rel=1e-10)


def test_kernel_similarity_distance_and_velocity():
    A = torch.randn(6, 6, dtype=torch.float64)
    K0 = A @ A.t()
    B = torch.randn(6, 6, dtype=torch.float64)
    K1 = B @ B.t()
    want = float(torch.trace(K0 @ K1) / (torch.trace(K0 @ K0) * torch.trace(K1 @ K1)).sqrt())
    assert diagnostics.ntk_similarity(K0, K1) == pytest.approx(want, rel=1e-12)
    assert 0 < diagnostics.ntk_similarity(K0, K1) < 1
    assert diagnostics.ntk_similarity(K0, 3 * K0) == pytest.approx(1.0, abs=1e-12)
    assert diagnostics.ntk_distance(K0, K1) == pytest.approx(1 - want, rel=1e-12)
    v = diagnostics.kernel_velocity([K0, K0, K1], [0, 2, 6])
    assert v[0] == pytest.approx(0.0, abs=1e-12) and v[1] == pytest.approx((1 - want) / 4)
    with pytest.raises(ValueError):
        diagnostics.kernel_velocity([K0, K1], [0])


def test_linear_cka_equals_hsic_with_centering_matrices():
    X, Y = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    n = X.shape[0]
    H = torch.eye(n, dtype=X.dtype) - torch.ones(n, n, dtype=X.dtype) / n

    def hsic(A, B):
        return torch.trace(A @ A.t() @ H @ B @ B.t() @ H)
    want = hsic(X, Y) / (hsic(X, X) * hsic(Y, Y)).sqrt()
    assert diagnostics.linear_cka(X, Y) == pytest.approx(float(want), rel=1e-12)
    assert diagnostics.linear_cka(X, Y) < 0.99


def test_linear_cka_invariances():
    X = torch.randn(20, 6, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert diagnostics.linear_cka(X, 3.0 * X @ Q) == pytest.approx(1.0, rel=1e-12)
    assert diagnostics.linear_cka(X, X + 5.0) == pytest.approx(1.0, rel=1e-12)  # translation
    Y = torch.randn(20, 3, dtype=torch.float64)
    assert diagnostics.linear_cka(X @ Q, Y) == pytest.approx(diagnostics.linear_cka(X, Y))
    # not invariant to a general invertible map: stretching one direction changes it
    S = torch.diag(torch.tensor([10.0, 1, 1, 1, 1, 1], dtype=torch.float64))
    assert diagnostics.linear_cka(X, X @ S) < 0.99
    assert math.isnan(diagnostics.linear_cka(torch.ones(4, 2), torch.randn(4, 2)))


def test_block_cka_is_per_block_against_a_manual_forward():
    model = make_model(8, 3, depth=3, M=16, std=0.3)
    init = copy.deepcopy(model)
    x = torch.randn(12, 8, dtype=torch.float64)
    assert diagnostics.block_cka(model, init, x) == pytest.approx([1.0] * 3)
    with torch.no_grad():
        model.blocks[1].G.W.mul_(-5.0)

    def streams(m):
        x1, x2, outs = x[:, :4], x[:, 4:], []
        for block in m.blocks:
            x1 = x1 + block.F(x2)
            x2 = x2 + block.G(x1)
            outs.append(torch.cat([x1, x2], 1))
        return outs
    with torch.no_grad():
        want = [diagnostics.linear_cka(a, b) for a, b in zip(streams(model), streams(init))]
    cka = diagnostics.block_cka(model, init, x)
    assert cka == pytest.approx(want, rel=1e-12)
    assert cka[0] == pytest.approx(1.0) and cka[1] < 1.0 and cka[2] < 1.0


def test_weight_cosine_against_manual():
    model = make_model(8, 3, depth=2, M=10)
    init = copy.deepcopy(model)
    with torch.no_grad():
        model.blocks[0].F.W.add_(torch.randn_like(model.blocks[0].F.W))
        model.blocks[1].G.b.mul_(-1.0)
    cos = diagnostics.weight_cosine(model, init)

    def vec(m, couplings):
        return torch.cat([torch.cat([c.W.reshape(-1), c.b]) for c in couplings]).detach()

    def cosine(a, b):
        return float(a @ b / (a.norm() * b.norm()))
    F0, G0 = model.blocks[0].F, model.blocks[0].G
    assert cos["block0.F"] == pytest.approx(cosine(vec(model, [F0]), vec(init, [init.blocks[0].F])))
    assert cos["block0.G"] == pytest.approx(1.0)
    assert cos["block0"] == pytest.approx(cosine(vec(model, [F0, G0]),
                                                 vec(init, [init.blocks[0].F, init.blocks[0].G])))
    assert cos["block1.G"] < 1.0 and cos["block1.F"] == pytest.approx(1.0)
    every = [c for _, _, c in model.couplings()]
    every0 = [c for _, _, c in init.couplings()]
    assert cos["all"] == pytest.approx(cosine(vec(model, every), vec(init, every0)))
    assert set(cos) == {"block0.F", "block0.G", "block1.F", "block1.G", "block0", "block1", "all"}


def test_batch_loss_change_of_a_gn_step():
    model = make_model(8, 3, depth=2, M=32)
    x, y = torch.randn(10, 8, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)

    def mse(out, t):
        return 0.5 * (out - t).pow(2).sum(1).mean()
    opt = revgn.ExactGN(model, lr=0.1, loss="mse")
    before_model = copy.deepcopy(model)
    got = diagnostics.measure_batch_loss_change(model, mse, opt.step, x, y)
    with torch.no_grad():
        before, after = float(mse(before_model(x), y)), float(mse(model(x), y))
    assert got["before"] == pytest.approx(before) and got["after"] == pytest.approx(after)
    assert got["percent"] == pytest.approx(100 * (after - before) / before)
    assert diagnostics.batch_loss_change(2.0, 1.5) == pytest.approx(-25.0)
    # to first order the step scales the residual by (1 - lr): the loss by 0.81 (-19%)
    assert -25 < got["percent"] < -12

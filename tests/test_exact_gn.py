"""ExactGN against brute force: one step's parameter change pushed through the model's Jacobian
(torch.func.jvp, float64) must move the batch outputs by exactly -lr * e (function scaling) or
-lr * L * e (per_block scaling) whenever every A~ has full row rank."""
import dataclasses

import pytest
import torch

import revgn
import revgn.sweep
from revgn.losses import output_step
from tests.helpers import labels, make_model, output_jvp, rel_err

CONFIGS = [
    # depth, d, M, n, activation, loss, curvature, damping
    (1, 6, 17, 5, "tanh", "mse", "identity", 0.0),
    (2, 8, 32, 9, "relu", "mse", "identity", 0.0),
    (3, 10, 24, 13, "gelu", "mse", "identity", 0.0),
    (2, 8, 32, 9, "tanh", "cross_entropy", "identity", 0.0),
    (3, 12, 40, 16, "relu", "cross_entropy", "identity", 0.0),
    (2, 8, 20, 7, "gelu", "cross_entropy", "exact", 0.0),
    (2, 10, 33, 11, "tanh", "cross_entropy", "damped", 0.1),
    (4, 10, 25, 8, "relu", "cross_entropy", "damped", 1.0),
]


def _targets(loss, n, k, dtype=torch.float64):
    return labels(n, k) if loss == "cross_entropy" else torch.randn(n, k, dtype=dtype)


@pytest.mark.parametrize("scaling", ["function", "per_block"])
@pytest.mark.parametrize("depth,d,M,n,act,loss,curvature,damping", CONFIGS)
def test_step_moves_outputs_by_minus_lr_e(depth, d, M, n, act, loss, curvature, damping,
                                          scaling):
    k = 3
    model = make_model(d, k, depth, M, activation=act)
    x = torch.randn(n, d, dtype=torch.float64)
    y = _targets(loss, n, k)
    lr = 0.7
    opt = revgn.ExactGN(model, lr=lr, loss=loss, curvature=curvature, damping=damping,
                        step_scaling=scaling, backend="reference")
    deltas, result = opt.direction(x, y)
    assert result.exact
    e = output_step(model(x), y, loss, curvature, damping)
    factor = lr * (depth if scaling == "per_block" else 1)
    assert rel_err(output_jvp(model, x, deltas), -factor * e) < 1e-8


def test_step_applies_the_direction():
    model = make_model(8, 3, 2, 24)
    x, y = torch.randn(6, 8, dtype=torch.float64), labels(6, 3)
    opt = revgn.ExactGN(model, lr=0.3)
    before = [p.detach().clone() for p in model.parameters()]
    deltas, _ = opt.direction(x, y)
    result = opt.step(x, y)
    assert result.applied and result.exact
    for p, p0, dp in zip(model.parameters(), before, deltas):
        assert torch.allclose(p, p0 + dp, rtol=0, atol=1e-13)


def test_weight_decay_is_decoupled():
    model = make_model(8, 3, 2, 24)
    x, y = torch.randn(6, 8, dtype=torch.float64), labels(6, 3)
    plain, _ = revgn.ExactGN(model, lr=0.3).direction(x, y)
    decayed, _ = revgn.ExactGN(model, lr=0.3, weight_decay=0.1).direction(x, y)
    for p, a, b in zip(model.parameters(), plain, decayed):
        assert torch.allclose(b, a - 0.3 * 0.1 * p, atol=1e-14)


@pytest.mark.parametrize("act", ["tanh", "relu", "gelu", "silu", "leaky_relu", "identity"])
def test_analytic_and_autodiff_tangents_agree(act):
    model = make_model(10, 3, 3, 30, activation=act, first_activation="identity")
    x, y = torch.randn(7, 10, dtype=torch.float64), labels(7, 3)
    a, _ = revgn.ExactGN(model, lr=0.5, tangent_mode="analytic").direction(x, y)
    b, _ = revgn.ExactGN(model, lr=0.5, tangent_mode="autodiff").direction(x, y)
    for u, v in zip(a, b):
        assert rel_err(u, v) < 1e-10


def test_removing_the_cross_term_breaks_exactness(monkeypatch):
    """The brute-force check is sharp: without the F -> G cross-term it fails."""
    model = make_model(8, 3, 2, 32)
    x, y = torch.randn(9, 8, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    opt = revgn.ExactGN(model, lr=1.0, loss="mse")
    e = output_step(model(x), y, "mse")
    monkeypatch.setattr(revgn.sweep, "_cross_term",
                        lambda block, Y1, realized, K, *rest: torch.zeros_like(K))
    deltas, _ = opt.direction(x, y)
    assert rel_err(output_jvp(model, x, deltas), -e) > 1e-3


def test_removing_the_bias_column_breaks_exactness(monkeypatch):
    """Solving with A instead of [A, 1] while still updating b is wrong, and the test sees it."""
    import revgn.solvers as solvers
    model = make_model(8, 3, 2, 32)
    x, y = torch.randn(9, 8, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    e = output_step(model(x), y, "mse")
    opt = revgn.ExactGN(model, lr=1.0, loss="mse")
    real_gram = opt.solver_config.ops.gram
    opt.solver_config.ops = dataclasses.replace(opt.solver_config.ops,
                                                gram=lambda A, bias: real_gram(A, False))
    deltas, _ = opt.direction(x, y)
    assert rel_err(output_jvp(model, x, deltas), -e) > 1e-3


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_float32_default_path(loss):
    model = make_model(16, 4, 2, 64, activation="relu", dtype=torch.float32, std=0.3)
    n = 20
    x = torch.randn(n, 16)
    y = labels(n, 4) if loss == "cross_entropy" else torch.randn(n, 4)
    opt = revgn.ExactGN(model, lr=0.5, loss=loss)
    deltas, result = opt.direction(x, y)
    assert result.exact
    e = output_step(model(x), y, loss)
    assert rel_err(output_jvp(model, x, deltas), -0.5 * e) < 5e-3


def test_inverse_recovers_input():
    model = make_model(12, 3, 4, 20, activation="gelu")
    x = torch.randn(5, 12, dtype=torch.float64)
    assert rel_err(model.inverse(model.stream(x)), x) < 1e-12
    model32 = make_model(12, 3, 4, 20, activation="relu", dtype=torch.float32)
    x32 = torch.randn(5, 12)
    assert rel_err(model32.inverse(model32.stream(x32)), x32) < 1e-5


def test_step_reports_inversion_error():
    model = make_model(8, 3, 3, 24)
    x, y = torch.randn(6, 8, dtype=torch.float64), labels(6, 3)
    result = revgn.ExactGN(model, lr=0.1).step(x, y)
    assert 0 <= result.inversion_error < 1e-12

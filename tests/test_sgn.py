"""SGN (truncated-CG damped Gauss-Newton) against brute force: the full Jacobian from torch.func
in float64, and its own Krylov-space definition when CG is cut short."""
import pytest
import torch

import revgn
from revgn.egn import EGN, SGN
from revgn.egn.sgn import conjugate_gradient
from revgn.exact_gn import NonFiniteStepError
from tests.test_egn import (brute_force_direction, flat, full_jacobian, mlp, output_derivatives,
                            params_of, rel, same_params, targets)


def n_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("lam", [1e-2, 1.0])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "bce"])
def test_enough_cg_iterations_give_the_exact_damped_direction(loss, lam):
    torch.manual_seed(1)
    model = mlp((4, 6, 3))
    x, y = torch.randn(9, 4, dtype=torch.float64), targets(loss, 9, 3)
    opt = SGN(model, loss=loss, damping=lam, cg_iters=4 * n_params(model), cg_tol=1e-13)
    d = flat(opt.direction(x, y))
    want, _ = brute_force_direction(model, x, y, loss, lam)
    assert rel(d, want) < 1e-7
    assert rel(d, flat(EGN(model, loss=loss, damping=lam).direction(x, y))) < 1e-7
    assert opt.last_cg[1] <= 1e-12 and opt.last_cg[0] <= 4 * n_params(model)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_truncated_cg_is_the_krylov_space_minimizer(k):
    """After k iterations CG minimizes ``1/2 d^T A d - g^T d`` over
    ``span{g, A g, ..., A^(k-1) g}``: compare with that minimizer built from the full ``A``."""
    torch.manual_seed(2)
    model = mlp((5, 7, 2))
    x, y = torch.randn(6, 5, dtype=torch.float64), targets("mse", 6, 2)
    lam = 0.1
    out, J = full_jacobian(model, x)
    Q, r = output_derivatives(out, y, "mse")
    b = out.shape[0]
    A = J.t() @ Q @ J / b + lam * torch.eye(J.shape[1], dtype=J.dtype)
    g = J.t() @ r / b
    K = torch.stack([torch.linalg.matrix_power(A, i) @ g for i in range(k)], dim=1)
    K, _ = torch.linalg.qr(K)
    want = K @ torch.linalg.solve(K.t() @ A @ K, K.t() @ g)
    opt = SGN(model, loss="mse", damping=lam, cg_iters=k, cg_tol=0.0)
    got = flat(opt.direction(x, y))
    assert opt.last_cg[0] == k
    assert rel(got, want) < 1e-8
    if k < 5:  # not yet the exact solution: the test can tell the two apart
        assert rel(got, torch.linalg.solve(A, g)) > 1e-3


def test_conjugate_gradient_on_a_known_system_and_a_zero_right_hand_side():
    torch.manual_seed(3)
    M = torch.randn(13, 13, dtype=torch.float64)
    A = M @ M.t() + 0.5 * torch.eye(13, dtype=torch.float64)
    rhs = [torch.randn(13, dtype=torch.float64)]
    d, iters, res = conjugate_gradient(lambda v: [A @ v[0]], rhs, iters=60, tol=1e-12)
    assert torch.allclose(A @ d[0], rhs[0], atol=1e-9) and res <= 1e-12 and iters <= 60
    d, iters, res = conjugate_gradient(lambda v: [A @ v[0]], [torch.zeros(13)], 5, 1e-9)
    assert iters == 0 and res == 0.0 and not d[0].any()


def test_training_with_line_search_and_momentum_lowers_the_loss():
    torch.manual_seed(4)
    model = mlp((6, 16, 1))
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    opt = revgn.SGN(model, loss="mse", damping=1e-2, cg_iters=8, line_search=True,
                    momentum=0.5)
    first = opt.step(x, y).loss
    for _ in range(30):
        result = opt.step(x, y)
    assert result.jacobian == "cg" and result.loss < 0.5 * first


def test_bad_input_raises_and_changes_nothing():
    torch.manual_seed(5)
    model = mlp((4, 5, 3))
    opt = SGN(model, loss="cross_entropy", damping=1.0)
    x, y = torch.randn(8, 4, dtype=torch.float64), targets("cross_entropy", 8, 3)
    snapshot = params_of(model)
    bad_x = x.clone()
    bad_x[2, 1] = float("nan")
    with pytest.raises(ValueError):
        opt.step(bad_x, y)
    with pytest.raises(ValueError):
        opt.step(x, torch.full((8,), 7))      # labels out of range
    with pytest.raises(ValueError):
        opt.step(x[:0], y[:0])                # empty batch
    assert same_params(model, snapshot)
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")   # a non-finite direction is never applied
    snapshot = params_of(model)
    with pytest.raises(NonFiniteStepError):
        opt.step(x, y)
    assert all(bool(((p == q) | (p.isnan() & q.isnan())).all())
               for p, q in zip(model.parameters(), snapshot))


@pytest.mark.parametrize("kwargs", [dict(damping=0.0), dict(cg_iters=0), dict(cg_iters=2.5),
                                    dict(cg_tol=1.0), dict(jacobian="explicit")])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        SGN(mlp((3, 4, 2)), **kwargs)

"""EGN against the explicit formula, in float64, by brute force."""
import copy

import pytest
import torch
from torch import nn

import revgn
from revgn.egn.losses import hessian, mean_loss, output_model


def mlp(widths=(5, 11, 3), act=nn.Tanh, bias=True):
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


def targets(loss, b, c):
    if loss == "cross_entropy":
        y = torch.randint(0, c, (b,))
        y[:c] = torch.arange(min(b, c))
        return y
    if loss == "bce":
        return torch.rand(b, c, dtype=torch.float64)
    return torch.randn(b, c, dtype=torch.float64)


def brute_force_direction(model, x, y, loss, lam):
    """(J^T Q J + b lambda I)^-1 J^T r with the full Jacobian, and the push-through form."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]

    def f(*ps):
        return torch.func.functional_call(model, dict(zip(names, ps)), (x,))
    out = f(*params)
    b, c = out.shape
    J = torch.cat([j.reshape(b * c, -1) for j in torch.func.jacrev(f, argnums=tuple(
        range(len(params))))(*params)], dim=1)
    Q = torch.block_diag(*hessian(out, loss))
    r = output_model(out, y, loss).r.reshape(-1)
    d = torch.linalg.solve(J.t() @ Q @ J + b * lam * torch.eye(J.shape[1], dtype=J.dtype),
                           J.t() @ r)
    d_row = J.t() @ torch.linalg.solve(Q @ J @ J.t() + b * lam * torch.eye(b * c, dtype=J.dtype),
                                       r)
    return d, d_row


def flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "bce"])
@pytest.mark.parametrize("lam", [1e-3, 1e-1, 1.0])
@pytest.mark.parametrize("act,bias", [(nn.Tanh, True), (nn.ReLU, False), (nn.GELU, True)])
@pytest.mark.parametrize("jacobian", ["structured", "explicit"])
def test_direction_equals_explicit_formula(loss, lam, act, bias, jacobian):
    torch.manual_seed(0)
    model = mlp((5, 11, 7, 3), act, bias)
    x = torch.randn(7, 5, dtype=torch.float64)
    y = targets(loss, 7, 3)
    d, path = revgn.EGN(model, loss=loss, damping=lam, jacobian=jacobian).direction(x, y)
    want, want_row = brute_force_direction(model, x, y, loss, lam)
    assert path == jacobian
    assert rel(want_row, want) < 1e-9  # the push-through identity itself
    assert rel(flat(d), want) < 1e-8


def test_structured_and_explicit_agree_and_auto_picks():
    torch.manual_seed(1)
    model = mlp((6, 9, 9, 4), nn.SiLU)
    x, y = torch.randn(5, 6, dtype=torch.float64), targets("cross_entropy", 5, 4)
    a, pa = revgn.EGN(model, loss="cross_entropy", damping=0.3).direction(x, y)
    b, _ = revgn.EGN(model, loss="cross_entropy", damping=0.3, jacobian="explicit").direction(x, y)
    assert pa == "structured" and rel(flat(a), flat(b)) < 1e-10


def test_non_sequential_model_uses_explicit():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(x + torch.tanh(self.a(x)))
    model = Residual().double()
    x, y = torch.randn(6, 4, dtype=torch.float64), targets("mse", 6, 2)
    d, path = revgn.EGN(model, loss="mse", damping=0.1).direction(x, y)
    want, _ = brute_force_direction(model, x, y, "mse", 0.1)
    assert path == "explicit" and rel(flat(d), want) < 1e-8
    with pytest.raises(ValueError, match="structured"):
        revgn.EGN(model, jacobian="structured").direction(x, y)


def test_plain_step_is_lr_times_direction():
    model = mlp()
    x, y = torch.randn(6, 5, dtype=torch.float64), targets("mse", 6, 3)
    opt = revgn.EGN(model, lr=0.4, loss="mse", damping=0.2)
    d, _ = opt.direction(x, y)
    before = [p.detach().clone() for p in model.parameters()]
    result = opt.step(x, y)
    assert result.step_size == 0.4 and result.trials == 0
    for p, p0, dp in zip(model.parameters(), before, d):
        assert torch.allclose(p, p0 + 0.4 * dp, atol=1e-14)


def test_line_search_never_accepts_an_armijo_violating_step():
    torch.manual_seed(3)
    for trial in range(6):
        model = mlp((5, 16, 3), nn.Tanh)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(3.0)  # a rough landscape: large first steps overshoot
        x, y = torch.randn(12, 5, dtype=torch.float64), targets("cross_entropy", 12, 3)
        opt = revgn.EGN(model, lr=1.0, alpha_max=4.0, loss="cross_entropy", damping=1e-4,
                        line_search=True)
        reference = copy.deepcopy(model)
        d, _ = opt.direction(x, y)
        loss0 = float(mean_loss(reference(x), y, "cross_entropy"))
        # g^T d from autograd, independently of the optimizer
        reference.zero_grad()
        mean_loss(reference(x), y, "cross_entropy").backward()
        slope = sum(float((p.grad * dp).sum()) for p, dp in zip(reference.parameters(), d))
        result = opt.step(x, y)
        assert slope < 0
        if result.step_size > 0:
            loss1 = float(mean_loss(model(x), y, "cross_entropy"))
            assert loss1 <= loss0 + 0.1 * result.step_size * slope + 1e-12
            assert abs(loss1 - result.loss_after) < 1e-12
        else:
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(),
                                                         reference.parameters()))


def test_line_search_shrinks_by_the_factor():
    model = mlp()
    x, y = torch.randn(6, 5, dtype=torch.float64), targets("mse", 6, 3)
    opt = revgn.EGN(model, lr=1.0, alpha_max=8.0, grow=8.0, loss="mse", damping=1e-6,
                    line_search=True)
    result = opt.step(x, y)
    assert result.trials > 1  # alpha = 8 overshoots a nearly exact GN step
    assert result.step_size == pytest.approx(8.0 * 0.8 ** (result.trials - 1))


def test_adaptive_damping_moves_the_right_way():
    # A linear model with MSE: the GN model is exact, so rho = 1 and lambda must decrease.
    lin = nn.Sequential(nn.Linear(4, 2)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), targets("mse", 10, 2)
    opt = revgn.EGN(lin, lr=1.0, loss="mse", damping=1.0, adaptive_damping=True)
    result = opt.step(x, y)
    assert result.rho == pytest.approx(1.0, abs=1e-9)
    assert opt.param_groups[0]["damping"] == 0.5
    # A step far too long on a curved loss: actual << predicted, lambda must increase.
    model = mlp((5, 16, 3), nn.Tanh)
    xb, yb = torch.randn(12, 5, dtype=torch.float64), targets("cross_entropy", 12, 3)
    opt = revgn.EGN(model, lr=50.0, loss="cross_entropy", damping=1e-3, adaptive_damping=True)
    result = opt.step(xb, yb)
    assert result.rho < 0.25 and opt.param_groups[0]["damping"] == pytest.approx(2e-3)


def test_momentum_bias_correction():
    model = mlp()
    x, y = torch.randn(6, 5, dtype=torch.float64), targets("mse", 6, 3)
    twin = copy.deepcopy(model)
    d, _ = revgn.EGN(twin, lr=0.3, loss="mse", damping=0.5).direction(x, y)
    opt = revgn.EGN(model, lr=0.3, loss="mse", damping=0.5, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(x, y)  # first step: the bias-corrected EMA is the plain direction
    for p, p0, dp in zip(model.parameters(), before, d):
        assert torch.allclose(p, p0 + 0.3 * dp, atol=1e-13)
    d2, _ = revgn.EGN(model, lr=0.3, loss="mse", damping=0.5).direction(x, y)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(x, y)
    for p, p0, a, b in zip(model.parameters(), before, d, d2):
        expected = (0.9 * 0.1 * a + 0.1 * b) / (1 - 0.81)
        assert torch.allclose(p, p0 + 0.3 * expected, atol=1e-12)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(5)
    model = mlp((5, 8, 3), nn.Tanh)
    xs = [torch.randn(6, 5, dtype=torch.float64) for _ in range(4)]
    ys = [targets("cross_entropy", 6, 3) for _ in range(4)]
    kwargs = dict(lr=0.5, loss="cross_entropy", damping=0.5, momentum=0.8,
                  adaptive_damping=True, line_search=True)
    opt = revgn.EGN(model, **kwargs)
    for x, y in zip(xs[:2], ys[:2]):
        opt.step(x, y)
    import io
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2 = mlp((5, 8, 3), nn.Tanh)
    model2.load_state_dict(saved["model"])
    opt2 = revgn.EGN(model2, **kwargs)
    opt2.load_state_dict(saved["opt"])
    for x, y in zip(xs[2:], ys[2:]):
        a, b = opt.step(x, y), opt2.step(x, y)
        assert a.damping == b.damping and a.step_size == b.step_size
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))


BAD = [
    ("nan x", lambda x, y: (x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill(
        0, torch.tensor([1]), True), float("nan")), y), ValueError),
    ("batch mismatch", lambda x, y: (x, y[:-1]), ValueError),
    ("label range", lambda x, y: (x, y + 3), ValueError),
    ("float labels", lambda x, y: (x, y.double()), TypeError),
    ("empty", lambda x, y: (x[:0], y[:0]), ValueError),
]


@pytest.mark.parametrize("name,corrupt,err", BAD, ids=[b[0] for b in BAD])
def test_bad_input_changes_nothing(name, corrupt, err):
    model = mlp()
    snap = [p.detach().clone() for p in model.parameters()]
    opt = revgn.EGN(model, loss="cross_entropy", momentum=0.5)
    x, y = corrupt(torch.randn(6, 5, dtype=torch.float64), targets("cross_entropy", 6, 3))
    with pytest.raises(err):
        opt.step(x, y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), snap))
    assert not opt.state


@pytest.mark.parametrize("loss,y", [("mse", torch.randn(6, 2, dtype=torch.float64)),
                                    ("bce", torch.full((6, 3), 1.5, dtype=torch.float64))])
def test_bad_regression_targets(loss, y):
    model = mlp()
    with pytest.raises(ValueError):
        revgn.EGN(model, loss=loss).step(torch.randn(6, 5, dtype=torch.float64), y)

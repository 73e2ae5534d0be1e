"""EGN against brute force in float64: the direction, the step, line search, damping, momentum,
state and bad input.

The ground truth never uses revgn.egn's own loss code: the mean loss is written with torch's
functional losses, ``Q = b * d2L/df2`` and ``r = -b * dL/df`` come from autograd, ``J`` from
``torch.func.jacrev``.
"""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from revgn.egn import EGN
from revgn.egn.linesearch import adapt_damping, armijo
from revgn.exact_gn import NonFiniteStepError

LOSSES = ("mse", "cross_entropy", "bce")


# -- ground truth -----------------------------------------------------------------------------

def torch_mean_loss(f, y, loss):
    """The documented objective, spelled with torch's own losses."""
    b = f.shape[0]
    if loss == "cross_entropy":
        return F.cross_entropy(f, y)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(f, y, reduction="sum") / b
    return 0.5 * F.mse_loss(f, y, reduction="sum") / b


def mlp(widths=(5, 11, 5, 3), act=nn.Tanh, bias=True, dtype=torch.float64):
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(dtype)


def targets(loss, b, c, dtype=torch.float64):
    if loss == "cross_entropy":
        y = torch.randint(0, c, (b,))
        y[:min(b, c)] = torch.arange(min(b, c))
        return y
    if loss == "bce":
        return torch.rand(b, c, dtype=dtype)
    return torch.randn(b, c, dtype=dtype)


def full_jacobian(model, x):
    """``(outputs, J)`` with J (bc x P) over the trainable parameters, in parameters() order."""
    named = dict(model.named_parameters())
    train = [n for n, p in named.items() if p.requires_grad]
    fixed = {n: p.detach() for n, p in named.items() if not p.requires_grad}

    def f(*ps):
        return torch.func.functional_call(model, {**fixed, **dict(zip(train, ps))}, (x,))
    ps = tuple(named[n].detach() for n in train)
    out = f(*ps)
    jac = torch.func.jacrev(f, argnums=tuple(range(len(ps))))(*ps)
    return out.detach(), torch.cat([j.reshape(out.numel(), -1) for j in jac], dim=1)


def output_derivatives(out, y, loss):
    """``Q`` (bc x bc, block diagonal) and ``r`` (bc) from autograd on the mean loss."""
    b = out.shape[0]
    def L(f):
        return torch_mean_loss(f, y, loss)
    Q = b * torch.func.hessian(L)(out).reshape(out.numel(), out.numel())
    r = -b * torch.func.grad(L)(out).reshape(-1)
    return Q, r


def brute_force_direction(model, x, y, loss, lam):
    """Parameter space ``(J^T Q J + b lam I)^-1 J^T r`` and row space
    ``J^T (Q J J^T + b lam I)^-1 r`` (LU on the non-symmetric matrix)."""
    out, J = full_jacobian(model, x)
    Q, r = output_derivatives(out, y, loss)
    b, (bc, P) = out.shape[0], J.shape
    d = torch.linalg.solve(J.t() @ Q @ J + b * lam * torch.eye(P, dtype=J.dtype), J.t() @ r)
    d_row = J.t() @ torch.linalg.solve(Q @ J @ J.t() + b * lam * torch.eye(bc, dtype=J.dtype), r)
    return d, d_row


def flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def rel(a, b):
    return float((a - b).norm() / b.norm())


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def same_params(model, snapshot):
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), snapshot))


# -- the direction ------------------------------------------------------------------------------

@pytest.mark.parametrize("jacobian", ["structured", "explicit"])
@pytest.mark.parametrize("act,bias", [(nn.Tanh, True), (nn.ReLU, False), (nn.GELU, True)])
@pytest.mark.parametrize("lam", [1e-3, 1e-1, 1.0])
@pytest.mark.parametrize("loss", LOSSES)
def test_direction_equals_brute_force(loss, lam, act, bias, jacobian):
    torch.manual_seed(0)
    model = mlp((5, 11, 5, 3), act, bias)
    x, y = torch.randn(7, 5, dtype=torch.float64), targets(loss, 7, 3)
    opt = EGN(model, loss=loss, damping=lam, jacobian=jacobian)
    d = opt.direction(x, y)
    want, want_row = brute_force_direction(model, x, y, loss, lam)
    assert opt.jacobian_path(x) == jacobian
    assert rel(want_row, want) < 1e-9  # the push-through identity itself
    assert rel(flat(d), want) < 1e-8
    assert [t.shape for t in d] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_zero_damping_is_the_minimum_norm_gauss_newton_direction(loss):
    torch.manual_seed(2)
    model = mlp((4, 9, 3))  # P = 75 > bc = 15: the GN system is underdetermined
    x, y = torch.randn(5, 4, dtype=torch.float64), targets(loss, 5, 3)
    d = EGN(model, loss=loss, damping=0.0).direction(x, y)
    out, J = full_jacobian(model, x)
    Q, r = output_derivatives(out, y, loss)
    want = torch.linalg.pinv(J.t() @ Q @ J, rtol=1e-10, hermitian=True) @ (J.t() @ r)
    assert rel(flat(d), want) < 1e-6


def test_non_sequential_model_uses_the_explicit_path():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(x + torch.tanh(self.a(x)))
    model = Residual().double()
    x, y = torch.randn(6, 4, dtype=torch.float64), targets("cross_entropy", 6, 2)
    opt = EGN(model, loss="cross_entropy", damping=0.1)
    want, _ = brute_force_direction(model, x, y, "cross_entropy", 0.1)
    assert opt.jacobian_path(x) == "explicit"
    assert rel(flat(opt.direction(x, y)), want) < 1e-8
    assert opt.step(x, y).jacobian == "explicit"
    with pytest.raises(ValueError, match="structured"):
        EGN(model, jacobian="structured").direction(x, y)


@pytest.mark.parametrize("jacobian", ["structured", "explicit"])
def test_frozen_parameters_stay_out_of_the_system(jacobian):
    torch.manual_seed(4)
    model = mlp((5, 8, 6, 3))
    model[0].weight.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    x, y = torch.randn(6, 5, dtype=torch.float64), targets("bce", 6, 3)
    opt = EGN(model, loss="bce", damping=0.05, jacobian=jacobian)
    want, _ = brute_force_direction(model, x, y, "bce", 0.05)
    d = opt.direction(x, y)
    assert len(d) == sum(p.requires_grad for p in model.parameters())
    assert rel(flat(d), want) < 1e-8


def test_float32_model_matches_the_float64_direction():
    torch.manual_seed(6)
    model64 = mlp((5, 11, 3), nn.Tanh)
    model32 = copy.deepcopy(model64).float()
    x, y = torch.randn(9, 5, dtype=torch.float64), targets("cross_entropy", 9, 3)
    d64 = EGN(model64, loss="cross_entropy", damping=0.1).direction(x, y)
    d32 = EGN(model32, loss="cross_entropy", damping=0.1).direction(x.float(), y)
    assert all(t.dtype == torch.float32 for t in d32)
    assert rel(flat(d32).double(), flat(d64)) < 1e-4


# -- the step -----------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
def test_plain_step_is_lr_times_the_direction_and_reports_the_quadratic_model(loss):
    torch.manual_seed(7)
    model = mlp((5, 11, 3), nn.Tanh)
    x, y = torch.randn(6, 5, dtype=torch.float64), targets(loss, 6, 3)
    opt = EGN(model, lr=0.4, loss=loss, damping=0.2)
    d = flat(opt.direction(x, y))
    out, J = full_jacobian(model, x)
    Q, r = output_derivatives(out, y, loss)
    before = flat(params_of(model))
    result = opt.step(x, y)
    assert torch.allclose(flat(params_of(model)), before + 0.4 * d, rtol=0, atol=1e-14)
    assert (result.step_size, result.trials, result.applied) == (0.4, 0, True)
    assert result.jacobian == "structured" and result.loss_after is None
    assert result.loss == pytest.approx(float(torch_mean_loss(out, y, loss)), rel=1e-14)
    # m(alpha) = -(alpha g^T d + alpha^2/2 d^T G d), g = -J^T r / b, G = J^T Q J / b
    b, Jd = 6, J @ d
    predicted = -(0.4 * float(-(r @ Jd)) / b + 0.08 * float(Jd @ Q @ Jd) / b)
    assert result.predicted_reduction == pytest.approx(predicted, rel=1e-10)


def test_training_lowers_the_loss():
    torch.manual_seed(8)
    model = mlp((5, 16, 3), nn.Tanh)
    x, y = torch.randn(32, 5, dtype=torch.float64), targets("cross_entropy", 32, 3)
    opt = EGN(model, lr=1.0, loss="cross_entropy", damping=0.1, line_search=True)
    losses = [opt.step(x, y).loss for _ in range(8)]
    assert losses[-1] < 0.5 * losses[0]


# -- line search --------------------------------------------------------------------------------

def test_armijo_returns_the_first_passing_trial():
    # loss(alpha) = (alpha - 1)^2 from loss0 = 1 with slope -2: passes iff alpha <= 1.8
    calls = []

    def loss_at(alpha):
        calls.append(alpha)
        return (alpha - 1.0) ** 2
    s = armijo(loss_at, 1.0, -2.0, alpha=4.0, c=0.1, shrink=0.8, max_trials=15)
    k = next(k for k in range(15) if 4.0 * 0.8 ** k <= 1.8)
    assert s.accepted and s.trials == k + 1 and s.alpha == pytest.approx(4.0 * 0.8 ** k)
    assert calls[-2] > 1.8  # the trial before was rejected
    nan = armijo(lambda a: float("nan"), 1.0, -2.0, alpha=1.0, max_trials=3)
    assert (nan.accepted, nan.alpha, nan.trials, nan.loss) == (False, 0.0, 3, 1.0)
    assert nan.last_tried == pytest.approx(0.64)


def test_line_search_never_accepts_an_armijo_violating_step():
    torch.manual_seed(3)
    shrunk = 0
    for _ in range(6):
        model = mlp((5, 16, 3), nn.Tanh)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(3.0)  # a rough landscape: long steps overshoot
        x, y = torch.randn(12, 5, dtype=torch.float64), targets("cross_entropy", 12, 3)
        opt = EGN(model, lr=4.0, alpha_max=4.0, loss="cross_entropy", damping=1e-4,
                  line_search=True)
        reference = copy.deepcopy(model)
        d = opt.direction(x, y)
        loss0 = torch_mean_loss(reference(x), y, "cross_entropy")
        grads = torch.autograd.grad(loss0, list(reference.parameters()))
        slope = float(flat(grads) @ flat(d))  # g^T d, independently of the optimizer
        result = opt.step(x, y)
        assert slope < 0
        shrunk += result.trials > 1
        if result.applied:
            with torch.no_grad():
                loss1 = float(torch_mean_loss(model(x), y, "cross_entropy"))
            assert loss1 <= float(loss0.detach()) + 0.1 * result.step_size * slope + 1e-12
            assert loss1 == pytest.approx(result.loss_after, abs=1e-12)
            assert result.step_size == pytest.approx(4.0 * 0.8 ** (result.trials - 1))
        else:
            assert same_params(model, params_of(reference))
    assert shrunk  # the construction did exercise backtracking


def test_line_search_grows_from_lr_to_alpha_max():
    # linear least squares: the GN step is Newton's, alpha <= 1 always passes Armijo
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(4, 2)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), targets("mse", 10, 2)
    opt = EGN(model, lr=0.5, alpha_max=1.0, loss="mse", damping=1e-6, line_search=True)
    sizes = [opt.step(x, y).step_size for _ in range(3)]
    assert sizes == pytest.approx([0.5, 0.75, 1.0])


def test_failed_line_search_does_not_move_and_restarts_smaller():
    torch.manual_seed(10)
    model = mlp((5, 16, 3), nn.Tanh)
    x, y = torch.randn(12, 5, dtype=torch.float64), targets("cross_entropy", 12, 3)
    opt = EGN(model, lr=1e4, alpha_max=1e5, loss="cross_entropy", damping=1e-3,
              line_search=True, max_trials=3)
    before = params_of(model)
    result = opt.step(x, y)
    assert not result.applied and result.step_size == 0.0 and result.trials == 3
    assert "Armijo" in result.skipped_reason
    assert same_params(model, before)
    state = opt.state[model[0].weight]
    assert state["alpha"] == pytest.approx(1e4 * 0.8 ** 2)
    opt.step(x, y)  # the next search starts at 1.5 * 6400 = 9600 < lr
    assert any(state["alpha"] == pytest.approx(9600 * 0.8 ** k) for k in range(3))


# -- adaptive damping ---------------------------------------------------------------------------

class Square(nn.Module):
    """``f = (w x)^2``: one parameter, so the GN quadratic model and rho have closed forms."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        return (self.w * x) ** 2


@pytest.mark.parametrize("target,new_damping", [(1.5, 0.05), (4.0, 0.1), (10.0, 0.2)])
def test_adaptive_damping_follows_the_known_rho(target, new_damping):
    # x = 1, b = 1: J = 2w, r = y - w^2, d = J r / (J^2 + lam), predicted = J r d - J^2 d^2 / 2
    lam, w = 0.1, 1.0
    J, r = 2 * w, target - w * w
    d = J * r / (J * J + lam)
    loss0, loss1 = 0.5 * r * r, 0.5 * (target - (w + d) ** 2) ** 2
    rho = (loss0 - loss1) / (J * r * d - 0.5 * J * J * d * d)
    model = Square(w)
    opt = EGN(model, lr=1.0, loss="mse", damping=lam, adaptive_damping=True)
    result = opt.step(torch.ones(1, 1, dtype=torch.float64),
                      torch.tensor([[target]], dtype=torch.float64))
    assert result.rho == pytest.approx(rho, rel=1e-10)
    assert opt.param_groups[0]["damping"] == pytest.approx(new_damping)
    assert float(model.w.detach()) == pytest.approx(w + d, rel=1e-12)


def test_adaptive_damping_on_an_exact_quadratic_lowers_lambda():
    # a linear model with MSE: the GN model is the loss, rho = 1
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 2)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), targets("mse", 10, 2)
    opt = EGN(model, lr=1.7, loss="mse", damping=1.0, adaptive_damping=True)
    assert opt.step(x, y).rho == pytest.approx(1.0, abs=1e-10)
    assert opt.param_groups[0]["damping"] == 0.5


def test_adaptive_damping_rule_and_clamp():
    assert adapt_damping(1.0, 0.1, 2.0, 0.5, 1e-3, 10.0) == 2.0
    assert adapt_damping(1.0, 0.5, 2.0, 0.5, 1e-3, 10.0) == 1.0
    assert adapt_damping(1.0, 0.9, 2.0, 0.5, 1e-3, 10.0) == 0.5
    assert adapt_damping(1.0, None, 2.0, 0.5, 1e-3, 10.0) == 2.0
    assert adapt_damping(8.0, -3.0, 2.0, 0.5, 1e-3, 10.0) == 10.0
    assert adapt_damping(1.5e-3, 0.99, 2.0, 0.5, 1e-3, 10.0) == 1e-3


def test_adaptive_damping_raises_lambda_when_the_search_fails():
    torch.manual_seed(12)
    model = mlp((5, 16, 3), nn.Tanh)
    x, y = torch.randn(12, 5, dtype=torch.float64), targets("cross_entropy", 12, 3)
    opt = EGN(model, lr=1e4, alpha_max=1e4, loss="cross_entropy", damping=1e-3,
              line_search=True, max_trials=1, adaptive_damping=True)
    result = opt.step(x, y)
    assert not result.applied and result.damping == 1e-3
    assert opt.param_groups[0]["damping"] == 2e-3


# -- momentum and state -------------------------------------------------------------------------

def test_momentum_bias_correction():
    torch.manual_seed(13)
    model = mlp()
    x, y = torch.randn(6, 5, dtype=torch.float64), targets("mse", 6, 3)
    probe = EGN(model, lr=0.3, loss="mse", damping=0.5)
    opt = EGN(model, lr=0.3, loss="mse", damping=0.5, momentum=0.9)
    d1, before = flat(probe.direction(x, y)), flat(params_of(model))
    opt.step(x, y)  # first step: the bias-corrected EMA is the plain direction
    assert torch.allclose(flat(params_of(model)), before + 0.3 * d1, rtol=0, atol=1e-13)
    d2, before = flat(probe.direction(x, y)), flat(params_of(model))
    opt.step(x, y)
    expected = (0.9 * 0.1 * d1 + 0.1 * d2) / (1 - 0.9 ** 2)
    assert torch.allclose(flat(params_of(model)), before + 0.3 * expected, rtol=0, atol=1e-12)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(5)
    model = mlp((5, 8, 3), nn.Tanh)
    xs = [torch.randn(6, 5, dtype=torch.float64) for _ in range(5)]
    ys = [targets("cross_entropy", 6, 3) for _ in range(5)]
    kwargs = dict(lr=0.5, loss="cross_entropy", damping=0.5, momentum=0.8,
                  adaptive_damping=True, line_search=True)
    opt = EGN(model, **kwargs)
    for x, y in zip(xs[:2], ys[:2]):
        opt.step(x, y)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2 = mlp((5, 8, 3), nn.Tanh)
    model2.load_state_dict(saved["model"])
    opt2 = EGN(model2, **kwargs)
    opt2.load_state_dict(saved["opt"])
    assert opt2.state[model2[0].weight]["step"] == 2
    assert opt2.param_groups[0]["damping"] == opt.param_groups[0]["damping"]
    fresh_model = mlp((5, 8, 3), nn.Tanh)
    fresh_model.load_state_dict(saved["model"])
    fresh = EGN(fresh_model, **kwargs)  # the same weights without the optimizer's state
    for x, y in zip(xs[2:], ys[2:]):
        a, b = opt.step(x, y), opt2.step(x, y)
        assert (a.damping, a.step_size, a.loss) == (b.damping, b.step_size, b.loss)
        fresh.step(x, y)
    assert same_params(model2, params_of(model))
    assert not same_params(fresh_model, params_of(model))


# -- bad input ----------------------------------------------------------------------------------

def _nan_at_row(t, row=1):
    t = t.clone()
    t[row] = float("nan")
    return t


BAD = [
    ("nan x", "cross_entropy", lambda x, y: (_nan_at_row(x), y), ValueError),
    ("inf y", "mse", lambda x, y: (x, _nan_at_row(y).nan_to_num(nan=float("inf"))), ValueError),
    ("batch mismatch", "cross_entropy", lambda x, y: (x, y[:-1]), ValueError),
    ("label too large", "cross_entropy", lambda x, y: (x, y + 3), ValueError),
    ("negative label", "cross_entropy", lambda x, y: (x, y - 3), ValueError),
    ("float labels", "cross_entropy", lambda x, y: (x, y.double()), TypeError),
    ("int mse targets", "mse", lambda x, y: (x, y.long()), TypeError),
    ("bce out of range", "bce", lambda x, y: (x, y + 1.5), ValueError),
    ("output width", "mse", lambda x, y: (x, torch.zeros(6, 4, dtype=torch.float64)), ValueError),
    ("empty", "mse", lambda x, y: (x[:0], y[:0]), ValueError),
    ("x not a tensor", "mse", lambda x, y: (x.tolist(), y), TypeError),
    ("y not a tensor", "mse", lambda x, y: (x, y.tolist()), TypeError),
]


@pytest.mark.parametrize("name,loss,corrupt,err", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("method", ["step", "direction"])
def test_bad_input_raises_and_changes_nothing(name, loss, corrupt, err, method):
    model = mlp()
    opt = EGN(model, loss=loss, momentum=0.5, line_search=True, adaptive_damping=True)
    opt.step(torch.randn(6, 5, dtype=torch.float64), targets(loss, 6, 3))
    snapshot, state = params_of(model), copy.deepcopy(opt.state_dict())
    x, y = corrupt(torch.randn(6, 5, dtype=torch.float64), targets(loss, 6, 3))
    with pytest.raises(err) as info:
        getattr(opt, method)(x, y)
    assert len(str(info.value)) > 20  # says what is wrong
    assert same_params(model, snapshot)
    after = opt.state_dict()
    assert after["param_groups"] == state["param_groups"]
    assert after["state"].keys() == state["state"].keys()
    for k, s in state["state"].items():
        for name_, v in s.items():
            assert torch.equal(torch.as_tensor(after["state"][k][name_]), torch.as_tensor(v))


def test_model_output_of_the_wrong_rank_is_rejected():
    model = nn.Sequential(nn.Linear(5, 3), nn.Flatten(0)).double()
    before = params_of(model)
    with pytest.raises(ValueError, match=r"outputs of shape \(6, c\)"):
        EGN(model, loss="mse").step(torch.randn(6, 5, dtype=torch.float64),
                                    torch.zeros(6, 3, dtype=torch.float64))
    assert same_params(model, before)


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_nonfinite_direction_never_reaches_the_parameters(on_nonfinite):
    model = nn.Sequential(nn.Linear(5, 3))
    with torch.no_grad():
        model[0].weight.fill_(1e30)  # outputs overflow to inf in float32
    x, y = torch.full((4, 5), 1e10), targets("cross_entropy", 4, 3)
    opt = EGN(model, loss="cross_entropy", on_nonfinite=on_nonfinite, momentum=0.5)
    before = params_of(model)
    if on_nonfinite == "raise":
        with pytest.raises(NonFiniteStepError):
            opt.step(x, y)
    else:
        result = opt.step(x, y)
        assert not result.applied and "not finite" in result.skipped_reason
    assert same_params(model, before) and not opt.state


def test_bad_options_raise():
    model = mlp()
    with pytest.raises(ValueError):
        EGN(model, loss="hinge")
    with pytest.raises(ValueError):
        EGN(model, jacobian="sparse")
    with pytest.raises(ValueError):
        EGN(model, momentum=1.0)
    with pytest.raises(ValueError):
        EGN(model, damping=-1.0)
    with pytest.raises(ValueError):
        EGN(model, backend="fortran")
    with pytest.raises(TypeError):
        EGN(list(model.parameters()))

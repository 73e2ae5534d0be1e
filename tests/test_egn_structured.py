"""EGN's Jacobian paths and row system: the structured Gram and ``J^T u`` against the full
Jacobian, path selection, and the row system on saturated outputs."""
import pytest
import torch

from torch import nn

from revgn.egn import EGN
from revgn.egn.jacobian import ExplicitJacobian, StructuredJacobian, resolve_path
from revgn.egn.losses import output_model
from revgn.egn.rowsystem import row_coefficients
from revgn.ops import reference_ops
from tests.test_egn import flat, full_jacobian, mlp, output_derivatives, rel, targets

ARCHS = {
    "tanh-bias": lambda: mlp((5, 11, 5, 3), nn.Tanh),
    "relu-nobias": lambda: mlp((5, 11, 5, 3), nn.ReLU, bias=False),
    "gelu": lambda: mlp((5, 11, 3), nn.GELU),
    "silu-sigmoid-leaky": lambda: nn.Sequential(
        nn.Linear(5, 7), nn.SiLU(), nn.Linear(7, 6), nn.Sigmoid(), nn.Linear(6, 4),
        nn.LeakyReLU(0.1), nn.Identity(), nn.Linear(4, 3)).double(),
    "nested-elu-softplus": lambda: nn.Sequential(
        nn.Sequential(nn.Linear(5, 8), nn.ELU()),
        nn.Sequential(nn.Linear(8, 6, bias=False), nn.Softplus()), nn.Linear(6, 3)).double(),
    "activation-last": lambda: nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 3),
                                             nn.Tanh()).double(),
}


def _both(model, x):
    return StructuredJacobian(model, x, reference_ops()), ExplicitJacobian(model, x)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_structured_gram_and_transpose_equal_the_full_jacobian(arch):
    torch.manual_seed(0)
    model = ARCHS[arch]()
    x = torch.randn(7, 5, dtype=torch.float64)
    s, e = _both(model, x)
    out, J = full_jacobian(model, x)
    JJ = (J @ J.t()).reshape(7, 3, 7, 3)
    u = torch.randn(7, 3, dtype=torch.float64)
    Jtu = J.t() @ u.reshape(-1)
    assert torch.equal(s.outputs, e.outputs) and torch.allclose(s.outputs, out, atol=0)
    for path in (s, e):
        assert rel(path.gram(), JJ) < 1e-12
        got = path.transpose_apply(u)
        assert rel(flat([got[p] for p in model.parameters()]), Jtu) < 1e-12


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "bce"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_structured_and_explicit_directions_agree(arch, loss):
    torch.manual_seed(1)
    model = ARCHS[arch]()
    x, y = torch.randn(9, 5, dtype=torch.float64), targets(loss, 9, 3)
    a = EGN(model, loss=loss, damping=0.3, jacobian="structured").direction(x, y)
    b = EGN(model, loss=loss, damping=0.3, jacobian="explicit").direction(x, y)
    assert rel(flat(a), flat(b)) < 1e-10


def test_flatten_first_takes_batched_images():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x, y = torch.randn(5, 3, 4, dtype=torch.float64), targets("cross_entropy", 5, 3)
    opt = EGN(model, loss="cross_entropy", damping=0.2)
    assert opt.jacobian_path(x) == "structured"
    ref = EGN(model, loss="cross_entropy", damping=0.2, jacobian="explicit").direction(x, y)
    assert rel(flat(opt.direction(x, y)), flat(ref)) < 1e-10


NOT_STRUCTURED = {
    "conv": (lambda: nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(6, 3)),
             lambda: torch.randn(4, 1, 5), "Conv1d"),
    "layernorm": (lambda: nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3)),
                  lambda: torch.randn(4, 5), "LayerNorm"),
    "prelu": (lambda: nn.Sequential(nn.Linear(5, 4), nn.PReLU(), nn.Linear(4, 3)),
              lambda: torch.randn(4, 5), "PReLU"),
    "3d input": (lambda: nn.Sequential(nn.Linear(5, 3)), lambda: torch.randn(4, 2, 5), "shape"),
    "module": (lambda: nn.Linear(5, 3), lambda: torch.randn(4, 5), "nn.Sequential"),
}


@pytest.mark.parametrize("name", list(NOT_STRUCTURED))
def test_auto_falls_back_to_explicit_and_structured_says_why(name):
    make, data, why = NOT_STRUCTURED[name]
    model, x = make(), data()
    assert resolve_path(model, x, "auto") == "explicit"
    with pytest.raises(ValueError, match=why):
        resolve_path(model, x, "structured")


def test_auto_picks_structured_for_linear_stacks():
    for make in ARCHS.values():
        assert resolve_path(make(), torch.randn(3, 5, dtype=torch.float64)) == "structured"


def test_backends_agree():
    torch.manual_seed(3)
    model = mlp((5, 11, 3), nn.Tanh)
    x, y = torch.randn(8, 5, dtype=torch.float64), targets("cross_entropy", 8, 3)
    a = EGN(model, loss="cross_entropy", damping=0.1, backend="reference").direction(x, y)
    b = EGN(model, loss="cross_entropy", damping=0.1, backend="auto").direction(x, y)
    assert rel(flat(a), flat(b)) < 1e-12


@pytest.mark.parametrize("loss", ["cross_entropy", "bce"])
def test_row_system_is_exact_where_the_output_hessian_underflows(loss):
    # Saturated outputs: Q has zero rows (p = 0, or sigmoid = 1 exactly) where r does not.
    torch.manual_seed(4)
    b, c, mu = 4, 3, 0.3
    f = torch.randn(b, c, dtype=torch.float64)
    f[0] = torch.tensor([900.0, 0.0, -5.0])  # cross-entropy: p_1, p_2 underflow to 0
    f[1, 2] = 60.0                           # bce: sigmoid(60) == 1 in float64
    y = torch.tensor([2, 1, 0, 1]) if loss == "cross_entropy" else torch.zeros(b, c,
                                                                               dtype=torch.float64)
    om = output_model(f, y, loss)
    assert om.rest.abs().max() > 0.5  # the saturated remainder is really exercised
    A = torch.randn(b * c, b * c + 2, dtype=torch.float64)
    JJ = A @ A.t()
    Q, r = output_derivatives(f, y, loss)
    want = torch.linalg.solve(Q @ JJ + mu * torch.eye(b * c, dtype=torch.float64), r)
    u, status = row_coefficients(JJ.reshape(b, c, b, c), om, mu, reference_ops())
    assert int(status.max()) == 0
    assert rel(u.reshape(-1), want) < 1e-10

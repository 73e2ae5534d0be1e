"""The output-space GN step e_i = H_i^+ g_i against autograd's gradient and Hessian."""
import pytest
import torch

import torch.nn.functional as F

from revgn.losses import batch_loss, output_step
from revgn.ops import reference_ops
from tests.helpers import labels, rel_err


def brute_force_e(logits, y, loss, curvature, damping):
    out = []
    for f_i, y_i in zip(logits, y):
        if loss == "mse":
            fn = lambda f: 0.5 * (f - y_i).pow(2).sum()  # noqa: E731
        else:
            fn = lambda f: F.cross_entropy(f[None], y_i[None])  # noqa: E731
        g = torch.func.grad(fn)(f_i)
        H = torch.func.hessian(fn)(f_i)
        if loss == "cross_entropy" and curvature == "identity":
            out.append(g)
        elif curvature == "damped":
            out.append(torch.linalg.solve(H + damping * torch.eye(len(g), dtype=H.dtype), g))
        else:
            out.append(torch.linalg.pinv(H, hermitian=True) @ g)
    return torch.stack(out)


@pytest.mark.parametrize("loss,curvature,damping", [
    ("mse", "identity", 0.0),
    ("cross_entropy", "identity", 0.0),
    ("cross_entropy", "exact", 0.0),
    ("cross_entropy", "damped", 0.3),
    ("cross_entropy", "damped", 1e-3),
])
@pytest.mark.parametrize("k", [2, 3, 10])
def test_output_step_matches_autograd(loss, curvature, damping, k):
    n = 7
    logits = torch.randn(n, k, dtype=torch.float64) * 2
    y = labels(n, k) if loss == "cross_entropy" else torch.randn(n, k, dtype=torch.float64)
    e = output_step(logits, y, loss, curvature, damping, reference_ops())
    assert rel_err(e, brute_force_e(logits, y, loss, curvature, damping)) < 1e-9


def test_mse_loss_is_half_squared_error():
    f, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(batch_loss(f, y, "mse"), 0.5 * ((f - y) ** 2).sum(1).mean())

"""Property tests over shapes, dtypes and options (hypothesis)."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import revgn
from revgn.losses import output_step
from tests.helpers import make_model, output_jvp, rel_err

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

shapes = st.tuples(
    st.integers(1, 3),            # depth
    st.integers(1, 6),            # half width h
    st.integers(1, 12),           # batch n
    st.integers(0, 20),           # bottleneck slack over n
    st.sampled_from(["tanh", "gelu", "silu", "relu"]),
    st.sampled_from(["mse", "cross_entropy"]),
    st.sampled_from(["function", "per_block"]),
    st.integers(0, 2**31 - 1),
)


@SETTINGS
@given(shapes)
def test_exact_step_realizes_the_output_step(params):
    depth, h, n, slack, act, loss, scaling, seed = params
    torch.manual_seed(seed)
    d, k = 2 * h, min(2 * h, 3)
    M = n + 2 + slack
    model = make_model(d, k, depth, M, activation=act, std=0.5)
    x = torch.randn(n, d, dtype=torch.float64)
    y = (torch.randint(0, k, (n,)) if loss == "cross_entropy"
         else torch.randn(n, k, dtype=torch.float64))
    opt = revgn.ExactGN(model, lr=0.3, loss=loss, step_scaling=scaling)
    deltas, result = opt.direction(x, y)
    if not result.exact:  # a relu row can die and lose rank: then the report must say so
        assert any(r.rank < n for r in result.blocks)
        return
    target = -0.3 * (depth if scaling == "per_block" else 1) * output_step(model(x), y, loss)
    if float(target.norm()) < 1e-12:
        return
    # An ill-conditioned A~ gives a huge (still exact) update: its jvp loses digits to
    # cancellation (scale with the update's size), and the Gram solve loses cond(A~)^2 * eps,
    # which the exactness report must own up to (its residuals bound what the step misses).
    size = max(float(d.abs().max()) for d in deltas)
    bound = 1e-9 * (10 + size) + 10 * result.max_residual
    assert rel_err(output_jvp(model, x, deltas), target) < bound


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 8), st.integers(1, 9),
       st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**31 - 1))
def test_inverse_of_stream_is_identity(depth, h, n, dtype, seed):
    torch.manual_seed(seed)
    model = make_model(2 * h, 1, depth, 7, activation="gelu", std=0.3, dtype=dtype)
    x = torch.randn(n, 2 * h, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_err(model.inverse(model.stream(x)), x) < tol


@SETTINGS
@given(st.sampled_from(["nan", "inf", "features", "labels", "empty", "dtype"]),
       st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**31 - 1))
def test_bad_input_never_changes_parameters(kind, dtype, seed):
    torch.manual_seed(seed)
    model = make_model(6, 3, 2, 9, dtype=dtype)
    snap = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(5, 6, dtype=dtype), torch.randint(0, 3, (5,))
    if kind == "nan":
        x[seed % 5, seed % 6] = float("nan")
    elif kind == "inf":
        x[seed % 5, seed % 6] = float("-inf")
    elif kind == "features":
        x = x[:, :4]
    elif kind == "labels":
        y[seed % 5] = 3 + seed % 7
    elif kind == "empty":
        x, y = x[:0], y[:0]
    else:
        y = y.to(torch.int32)
    with pytest.raises((ValueError, TypeError)):
        revgn.ExactGN(model, lr=1.0).step(x, y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), snap))


def test_same_seed_is_bit_identical_on_cpu():
    def run():
        torch.manual_seed(3)
        model = revgn.RevMLP(16, 4, depth=2, bottleneck=40, init_std=0.1)
        opt = revgn.ExactGN(model, lr=0.5, noise=0.1, seed=5)
        g = torch.Generator().manual_seed(9)
        for _ in range(3):
            opt.step(torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g))
        return [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(run(), run()))

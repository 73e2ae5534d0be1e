"""ExactGN's behaviour around the edges: bad input, rank deficiency, state."""
import copy
import warnings

import pytest
import torch

import revgn
from tests.helpers import labels, make_model


def _snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(model, snap):
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), snap))


def _poke(x, i, j, value):
    x = x.clone()
    x[i, j] = value
    return x


BAD_INPUTS = [
    ("nan in x", lambda x, y: (_poke(x, 0, 1, float("nan")), y), ValueError),
    ("inf in x", lambda x, y: (_poke(x, 2, 0, float("inf")), y), ValueError),
    ("wrong features", lambda x, y: (x[:, :6], y), ValueError),
    ("batch mismatch", lambda x, y: (x, y[:-1]), ValueError),
    ("label too large", lambda x, y: (x, y.index_fill(0, torch.tensor(0), 3)), ValueError),
    ("negative label", lambda x, y: (x, y.index_fill(0, torch.tensor(0), -1)), ValueError),
    ("float labels", lambda x, y: (x, y.float()), TypeError),
    ("empty batch", lambda x, y: (x[:0], y[:0]), ValueError),
    ("not a tensor", lambda x, y: (x.tolist(), y), TypeError),
    ("unbatched x", lambda x, y: (x[0], y), ValueError),
]


@pytest.mark.parametrize("name,corrupt,err", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_and_changes_nothing(name, corrupt, err):
    model = make_model(8, 3, 2, 16)
    opt = revgn.ExactGN(model, lr=0.5)
    snap = _snapshot(model)
    x, y = corrupt(torch.randn(6, 8, dtype=torch.float64), labels(6, 3))
    with pytest.raises(err):
        opt.step(x, y)
    assert _unchanged(model, snap)
    assert not opt.state


@pytest.mark.parametrize("y", [torch.randn(6, 2), torch.randint(0, 3, (6, 3)),
                               torch.full((6, 3), float("nan"))])
def test_bad_mse_targets(y):
    model = make_model(8, 3, 2, 16)
    snap = _snapshot(model)
    with pytest.raises((ValueError, TypeError)):
        revgn.ExactGN(model, lr=0.5, loss="mse").step(torch.randn(6, 8, dtype=torch.float64), y)
    assert _unchanged(model, snap)


@pytest.mark.parametrize("kwargs", [dict(loss="hinge"), dict(solver="lu"), dict(lr=-1.0),
                                    dict(curvature="damped"), dict(solver="damped"),
                                    dict(loss="mse", curvature="exact"), dict(backend="gpu"),
                                    dict(step_scaling="layer"), dict(rtol=float("nan"))])
def test_bad_options(kwargs):
    with pytest.raises(ValueError):
        revgn.ExactGN(make_model(), **kwargs)


def test_non_reversible_model_points_to_egn():
    with pytest.raises(TypeError, match="EGN"):
        revgn.ExactGN(torch.nn.Linear(4, 2), lr=1.0)


def test_nonfinite_parameters_are_reported_not_applied():
    model = make_model(8, 3, 2, 16)
    with torch.no_grad():
        model.blocks[1].G.W[0, 0] = float("inf")
    snap = _snapshot(model)
    x, y = torch.randn(6, 8, dtype=torch.float64), labels(6, 3)
    with pytest.raises(revgn.NonFiniteStepError):
        revgn.ExactGN(model, lr=0.5).step(x, y)
    result = revgn.ExactGN(model, lr=0.5, on_nonfinite="skip").step(x, y)
    assert not result.applied and result.skipped_reason
    assert all(torch.equal(p, q) or torch.isnan(p).any() and torch.isnan(q).any()
               for p, q in zip(model.parameters(), snap))


def test_paper_configuration_first_block_is_reported_inexact():
    """first_activation='identity': A = X2 C has rank <= h, so with n > h + 1 the first block's
    Gram is singular although M + 1 >= n; the step is the pseudoinverse one and says so."""
    d, n = 8, 12  # h + 1 = 5 < n
    model = make_model(d, 3, depth=2, M=40, activation="relu", first_activation="identity")
    opt = revgn.ExactGN(model, lr=0.5)
    with pytest.warns(RuntimeWarning, match="rank"):
        result = opt.step(torch.randn(n, d, dtype=torch.float64), labels(n, 3))
    by_block = {(r.block, r.coupling): r for r in result.blocks}
    assert not result.exact
    for c in "FG":
        assert by_block[(0, c)].rank == d // 2 + 1 and not by_block[(0, c)].exact
        assert by_block[(0, c)].residual > 1e-3
        assert by_block[(1, c)].exact and by_block[(1, c)].residual < 1e-10


def test_tall_batch_warns_once_and_is_inexact():
    model = make_model(8, 3, depth=1, M=6)
    opt = revgn.ExactGN(model, lr=0.5)
    x, y = torch.randn(20, 8, dtype=torch.float64), labels(20, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = opt.step(x, y)
        opt.step(x, y)
    tall = [w for w in caught if "least-squares" in str(w.message)]
    assert len(tall) == 1
    assert not result.exact and {r.method for r in result.blocks} == {"tall-eigh"}


def test_state_dict_round_trip_continues_identically():
    model = make_model(8, 3, 2, 16)
    opt = revgn.ExactGN(model, lr=0.3, noise=0.1, seed=7)
    xs = [torch.randn(5, 8, dtype=torch.float64) for _ in range(4)]
    ys = [labels(5, 3) for _ in range(4)]
    for x, y in zip(xs[:2], ys[:2]):
        opt.step(x, y)
    import io
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2 = copy.deepcopy(model)
    model2.load_state_dict(saved["model"])
    opt2 = revgn.ExactGN(model2, lr=0.3, noise=0.1, seed=0)
    opt2.load_state_dict(saved["opt"])
    for x, y in zip(xs[2:], ys[2:]):
        opt.step(x, y)
        opt2.step(x, y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    assert opt2.state_dict()["state"][0]["step"] == 4


def test_lr_scheduler_drives_the_step():
    model = make_model(8, 3, 2, 16)
    opt = revgn.ExactGN(model, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = torch.randn(5, 8, dtype=torch.float64), labels(5, 3)
    opt.step(x, y)
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_failure_late_in_the_sweep_restores_updated_blocks(monkeypatch, policy):
    """Block 1 is updated in place before block 0 fails: the step restores block 1."""
    import revgn.sweep as sweep
    model = make_model(8, 3, 2, 16)
    snap = _snapshot(model)
    real = sweep.solve_coupling
    calls = []

    def failing_on_block_0(*args, **kwargs):
        sol = real(*args, **kwargs)
        calls.append(sol)
        if len(calls) == 3:  # block 1 F, block 1 G, then block 0 F
            sol.finite = False
        return sol

    monkeypatch.setattr(sweep, "solve_coupling", failing_on_block_0)
    opt = revgn.ExactGN(model, lr=0.5, weight_decay=0.01, on_nonfinite=policy)
    x, y = torch.randn(6, 8, dtype=torch.float64), labels(6, 3)
    if policy == "raise":
        with pytest.raises(revgn.NonFiniteStepError):
            opt.step(x, y)
    else:
        assert not opt.step(x, y).applied
    for p, q in zip(model.parameters(), snap):
        assert torch.allclose(p, q, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_all_finite_sees_every_non_finite_entry_and_no_overflow(dtype):
    from revgn.validation import all_finite
    big = torch.finfo(dtype).max
    x = torch.full((37, 5), big / 2, dtype=dtype)  # finite entries whose sum overflows
    assert not torch.isfinite(x.sum()) and all_finite(x)
    assert all_finite(torch.empty(0, 3, dtype=dtype))
    for value in (float("nan"), float("inf"), -float("inf")):
        assert not all_finite(_poke(x, 36, 4, value))
        assert not all_finite(_poke(torch.zeros(4, 3, dtype=dtype), 1, 2, value))
    both = _poke(_poke(torch.zeros(4, 3, dtype=dtype), 0, 0, float("inf")), 3, 2, -float("inf"))
    assert not all_finite(both)

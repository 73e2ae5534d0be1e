"""Inversion drift: measured by every step, bounded by anchors, re-anchored when too large."""
import copy

import pytest
import torch

import revgn
from tests.helpers import labels, make_model


def _deep_float32(depth=12, std=0.15):
    return make_model(16, 3, depth=depth, M=48, activation="relu", std=std, dtype=torch.float32)


def test_anchored_sweep_snaps_to_the_forward_stream():
    model = _deep_float32()
    x, y = torch.randn(10, 16), labels(10, 3)
    free = revgn.ExactGN(copy.deepcopy(model), lr=0.1, drift_tol=1.0).step(x, y)
    anchored = revgn.ExactGN(copy.deepcopy(model), lr=0.1, anchor_every=1, drift_tol=1.0)
    result = anchored.step(x, y)
    assert free.inversion_error > 0
    # with an anchor at every block only one block is ever inverted in a row
    assert result.inversion_error < free.inversion_error
    assert result.anchor_every == 1


def test_drift_above_tolerance_reanchors_once_and_warns():
    # std 0.4: a drift of 4.5e-5, far above float32 rounding, so that a quarter of it is a
    # tolerance the anchors can meet (at std 0.15 the drift, 5e-7, is rounding itself)
    model = _deep_float32(std=0.4)
    x, y = torch.randn(10, 16), labels(10, 3)
    probe = revgn.ExactGN(copy.deepcopy(model), lr=0.1, drift_tol=1.0).step(x, y)
    tol = probe.inversion_error / 4
    opt = revgn.ExactGN(model, lr=0.1, drift_tol=tol)
    snap = copy.deepcopy(model)
    with pytest.warns(RuntimeWarning, match="drift"):
        result = opt.step(x, y)
    assert result.reanchored and opt.anchor_every is not None and opt.anchor_every < 12
    assert opt.state[next(iter(model.parameters()))]["step"] == 1
    # the redone step equals a clean step with the chosen anchors (undo is exact to rounding)
    clean = revgn.ExactGN(snap, lr=0.1, anchor_every=opt.anchor_every, drift_tol=1.0)
    clean.step(x, y)
    for p, q in zip(model.parameters(), snap.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)
    assert not opt.step(x, y).reanchored or opt.anchor_every == 1


def test_float64_drift_is_negligible():
    model = make_model(16, 3, depth=8, M=48, std=0.15)
    result = revgn.ExactGN(model, lr=0.1).step(torch.randn(6, 16, dtype=torch.float64),
                                               labels(6, 3))
    assert result.inversion_error < 1e-12 and not result.reanchored

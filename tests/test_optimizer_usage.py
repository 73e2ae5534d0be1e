"""How ExactGN and EGN answer the habits of torch.optim users: step() without a batch, a
backward() first, closures, batches in another dtype or on another device; and what their
results say (applied, block order)."""
import copy

import pytest
import torch
from torch import nn

import revgn
from revgn.validation import check_same_device
from tests.helpers import labels, make_model


def _exact_gn():
    model = make_model(8, 3, depth=3, M=16)
    return model, revgn.ExactGN(model, lr=0.5), torch.randn(6, 8, dtype=torch.float64), labels(6, 3)


def _egn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    return (model, revgn.EGN(model, loss="cross_entropy", damping=0.1),
            torch.randn(6, 5, dtype=torch.float64), labels(6, 3))


MAKERS = {"ExactGN": _exact_gn, "EGN": _egn}


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(model, snap):
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), snap))


@pytest.mark.parametrize("name", MAKERS)
def test_step_without_a_batch_shows_the_call(name):
    model, opt, x, y = MAKERS[name]()
    snap = _params(model)
    with pytest.raises(TypeError) as err:
        opt.step()
    message = str(err.value)
    assert "opt.step(x, y)" in message and "no loss.backward()" in message
    assert name in message and "gradients" not in message
    with pytest.raises(TypeError, match="without the targets y"):
        opt.step(x)
    assert _same(model, snap)


@pytest.mark.parametrize("name", MAKERS)
def test_the_backward_habit_is_named(name):
    model, opt, x, y = MAKERS[name]()
    snap = _params(model)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(TypeError) as err:
        opt.step()
    message = str(err.value)
    assert "loss.backward()" in message and "does not read them" in message
    assert "opt.step(x, y)" in message
    assert _same(model, snap)


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("how", ["positional", "keyword"])
def test_a_closure_returning_the_batch_steps_like_the_batch(name, how):
    model, opt, x, y = MAKERS[name]()
    twin = copy.deepcopy(model)
    twin_opt = type(opt)(twin, **({"lr": 0.5} if name == "ExactGN" else
                                  {"loss": "cross_entropy", "damping": 0.1}))
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        return [x, y]  # a DataLoader batch is a list
    result = opt.step(closure) if how == "positional" else opt.step(closure=closure)
    want = twin_opt.step(x, y)
    assert calls == [True]  # called once, with grad enabled as torch.optim does
    assert result.loss == want.loss and result.applied
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_a_trainer_loop_that_calls_step_with_a_closure():
    """The shape of a framework's optimizer loop: zero_grad, then step(closure)."""
    model, opt, x, y = _exact_gn()
    losses = []

    def fit(optimizer, batches):
        for batch in batches:
            optimizer.zero_grad()
            losses.append(optimizer.step(lambda batch=batch: batch).loss)
    fit(opt, [(x, y)] * 3)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", MAKERS)
def test_a_closure_returning_a_loss_is_explained(name):
    model, opt, x, y = MAKERS[name]()
    snap = _params(model)

    def adam_style():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss
    with pytest.raises(TypeError, match=r"must return the batch \(x, y\).*a loss\?"):
        opt.step(adam_style)
    with pytest.raises(TypeError, match="not both"):
        opt.step(x, y, closure=lambda: (x, y))
    assert _same(model, snap)


@pytest.mark.parametrize("name", MAKERS)
def test_a_batch_in_another_dtype_is_a_type_error(name):
    model, opt, x, y = MAKERS[name]()
    snap = _params(model)
    with pytest.raises(TypeError, match=r"x is torch.float32 but the model is torch.float64"):
        opt.step(x.float(), y)
    assert _same(model, snap) and not opt.state


def test_exact_gn_rejects_integer_pixels_and_float32_targets():
    model = make_model(8, 3, depth=2, M=16)
    x = torch.randn(6, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="torch.uint8"):
        revgn.ExactGN(model).step(x.abs().mul(50).to(torch.uint8), labels(6, 3))
    with pytest.raises(TypeError, match=r"y is torch.float32 but the model is torch.float64"):
        revgn.ExactGN(model, loss="mse").step(x, torch.randn(6, 3))


def test_egn_rejects_float32_targets_and_keeps_integer_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"y is torch.float32"):
        revgn.EGN(model, loss="mse").step(x, torch.randn(6, 3))
    embed = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 3)).double()
    result = revgn.EGN(embed, loss="cross_entropy").step(torch.randint(0, 10, (6, 2)),
                                                         labels(6, 3))
    assert result.applied


def test_a_batch_on_another_device_is_a_type_error():
    with pytest.raises(TypeError, match=r"x is on meta but the model is on cpu"):
        check_same_device(torch.empty(2, 3, device="meta"), "x", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("name", MAKERS)
def test_a_cuda_batch_into_a_cpu_model(name):
    model, opt, x, y = MAKERS[name]()
    with pytest.raises(TypeError, match="is on cuda"):
        opt.step(x.cuda(), y)


def test_label_hints_name_only_the_losses_the_optimizer_takes():
    model, opt, x, y = _exact_gn()
    with pytest.raises(TypeError) as err:
        opt.step(x, y.float())
    assert "loss='mse'" in str(err.value) and "bce" not in str(err.value)
    _, egn, x, y = _egn()
    with pytest.raises(TypeError) as err:
        egn.step(x, y.double())
    assert "loss='mse'" in str(err.value) and "loss='bce'" in str(err.value)


def test_direction_says_it_applied_nothing():
    model, opt, x, y = _exact_gn()
    snap = _params(model)
    deltas, result = opt.direction(x, y)
    assert result.applied is False and result.skipped_reason is None
    assert _same(model, snap)
    assert opt.step(x, y).applied is True


def test_block_reports_are_in_block_order():
    model, opt, x, y = _exact_gn()
    want = [(b, c) for b in range(model.depth) for c in "FG"]
    for result in (opt.direction(x, y)[1], opt.step(x, y)):
        assert [(r.block, r.coupling) for r in result.blocks] == want
    assert result.blocks[0].block == 0

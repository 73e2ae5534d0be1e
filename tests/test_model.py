"""RevMLP as an ordinary nn.Module."""
import pytest
import torch

import revgn
from tests.helpers import make_model


def test_parameters_and_buffers():
    model = revgn.RevMLP(8, 3, depth=2, bottleneck=16)
    names = {n for n, _ in model.named_parameters()}
    assert names == {f"blocks.{l}.{c}.{p}" for l in range(2) for c in "FG" for p in "Wb"}
    buffers = set(model.state_dict()) - names
    assert buffers == {"U"} | {f"blocks.{l}.{c}.C" for l in range(2) for c in "FG"}
    assert model.blocks[0].F.W.shape == (4, 16)
    assert torch.allclose(model.U.t() @ model.U, torch.eye(3), atol=1e-6)


def test_forward_flattens_images():
    model = revgn.RevMLP(16, 4, depth=1, bottleneck=8)
    assert model(torch.randn(5, 1, 4, 4)).shape == (5, 4)


def test_odd_features_raise():
    with pytest.raises(ValueError, match="even"):
        revgn.RevMLP(7, 3)


def test_dtype_conversion_keeps_readout_orthonormal():
    model = revgn.RevMLP(20, 5, bottleneck=8).double()
    eye = torch.eye(5, dtype=torch.float64)
    assert (model.U.t() @ model.U - eye).abs().max() < 1e-14
    model = model.float()
    assert model.U.dtype == torch.float32


def test_no_bottleneck_ablation():
    model = revgn.RevMLP(10, 3, depth=2, inverted_bottleneck=False)
    assert model.blocks[0].F.C is None and model.blocks[0].F.W.shape == (5, 5)
    x = torch.randn(4, 10)
    assert torch.allclose(model.inverse(model.stream(x)), x, atol=1e-5)


@pytest.mark.parametrize("opt_cls,lr", [(torch.optim.Adam, 1e-2), (torch.optim.SGD, 0.2)])
def test_autograd_training_reduces_loss(opt_cls, lr):
    model = make_model(16, 4, depth=2, M=32, activation="relu", first_activation="identity",
                       std=0.05, dtype=torch.float32)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    opt = opt_cls(model.parameters(), lr=lr)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < 0.9 * losses[0]


def test_state_dict_round_trip():
    a = revgn.RevMLP(8, 3, depth=2, bottleneck=16, init_std=0.1)
    b = revgn.RevMLP(8, 3, depth=2, bottleneck=16, init_std=0.1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 8)
    assert torch.equal(a(x), b(x))

"""Tensor-parallel ExactGN on 2 gloo processes equals one process."""
import socket

import pytest
import torch
import torch.multiprocessing as mp

import revgn
from revgn import distributed


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_two_process_gloo_matches_one_process(tmp_path, dtype, tol, loss):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path / "parity.pt"
    mp.spawn(distributed._spawned_parity, args=(2, _free_port(), dtype, loss, str(out)),
             nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    model = revgn.RevMLP(12, 3, depth=2, bottleneck=37, init_std=0.3).to(getattr(torch, dtype))
    opt = revgn.ExactGN(model, lr=0.5, loss=loss, backend="reference")
    losses = [opt.step(x, y).loss for x, y in distributed.parity_batches(
        3, 10, 12, loss, getattr(torch, dtype), 0)]
    full = [c.W.detach() for _, _, c in model.couplings()]
    for a, b in zip(got["weights"], full):
        assert float((a - b).norm() / b.norm()) < tol
    assert got["losses"] == pytest.approx(losses, rel=tol)

"""Arbel et al. (NeurIPS 2023): GN's implicit bias depends on the regime the initialization sets.

A one-hidden-layer student ``f(x) = (1/H) sum_j a_j silu(w_j . x)`` learns the 5-unit teacher of
``revgn.data.teacher_student`` from 500 examples, trained full batch with GN (``revgn.EGN``,
small damping) and with gradient descent, for several scales of the hidden layer's
initialization. A last-layer refit (least squares on the trained hidden features) tells whether
the hidden layer learned features that help ("hidden learning").
"""
from __future__ import annotations

import time

import torch
from torch import nn

import revgn
from revgn.data import teacher_student


class MeanField(nn.Module):
    """The ``1/H`` output scaling, as a fixed elementwise map."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = 1.0 / width

    def forward(self, x):
        return x * self.scale


def student(width: int, init_std: float, seed: int):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(10, width), nn.SiLU(), nn.Linear(width, 1, bias=False),
                        MeanField(width))
    with torch.no_grad():
        net[0].weight.normal_(0, init_std)
        net[0].bias.zero_()
        net[2].weight.normal_(0, 1.0)
    return net.double()


@torch.no_grad()
def refit_last_layer(net, x, y, ridge=1e-8):
    """Test features of the trained hidden layer, readout refit by ridge least squares."""
    feats = net[1](net[0](x)) * net[3].scale
    gram = feats.t() @ feats + ridge * torch.eye(feats.shape[1], dtype=feats.dtype)
    return torch.linalg.solve(gram, feats.t() @ y)


@torch.no_grad()
def stable_gd_lr(net, x) -> float:
    """Under the ``1/H`` scaling the loss's curvature along the readout is about
    ``E[phi^2] / H``: a step of ``H / (2 (1 + E[phi^2]))`` stays stable at every init scale."""
    width = net[0].out_features
    second_moment = float(net[1](net[0](x)).pow(2).mean())
    return width / (2.0 * (1.0 + second_moment))


def run_one(optimizer: str, init_std: float, seed: int, steps: int, width: int, data,
            gd_lr: float = None):
    net = student(width, init_std, seed)
    x, y = data.x_train.double(), data.y_train.double()
    xt, yt = data.x_test.double(), data.y_test.double()
    mse = lambda out, t: float(0.5 * (out - t).pow(2).sum(1).mean())  # noqa: E731
    if optimizer == "gn":
        opt = revgn.EGN(net, lr=1.0, loss="mse", damping=1e-6)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=gd_lr or stable_gd_lr(net, x))
    history, elapsed = [], 0.0
    for step in range(steps + 1):
        if step:
            t0 = time.perf_counter()
            if optimizer == "gn":
                opt.step(x, y)
            else:
                opt.zero_grad()
                loss = 0.5 * (net(x) - y).pow(2).sum(1).mean()
                loss.backward()
                opt.step()
            elapsed += time.perf_counter() - t0
        if step % max(1, steps // 10) == 0 or step == steps:
            with torch.no_grad():
                history.append(dict(epoch=step, train_loss=mse(net(x), y), train_acc=None,
                                    test_loss=mse(net(xt), yt), test_acc=None, seconds=elapsed))
    with torch.no_grad():
        readout = refit_last_layer(net, x, y)
        feats = net[1](net[0](xt)) * net[3].scale
        refit_test = mse(feats @ readout, yt)
    return dict(optimizer=optimizer, seed=seed, label=f"{optimizer} std={init_std:g}",
                init_std=init_std, history=history, refit_test_loss=refit_test)


def runs(cfg):
    """(optimizer, init_std, seed) triples and the shared data."""
    data = teacher_student(n_train=cfg["teacher_train"], n_test=cfg["teacher_test"], seed=0)
    grid = [(opt, std, seed) for std in cfg["init_stds"] for opt in ("gn", "gd")
            for seed in cfg["seeds"]]
    return grid, data

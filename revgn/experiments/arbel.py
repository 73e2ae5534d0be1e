"""Arbel et al. (NeurIPS 2023): GN's implicit bias depends on the regime the initialization sets.

A one-hidden-layer student in the mean-field scaling,

    f(x) = (1/H) sum_j a_j silu(w_j . x + c_j),

learns the 5-unit teacher of ``revgn.data.teacher_student`` from 500 examples. Both layers train,
full batch, with GN (``revgn.EGN``, damping 1e-6; step sizes ``gn_lrs``) and with gradient
descent, for several scales ``std`` of the hidden layer's initialization ``w_j ~ N(0, std^2 I)``.

Hidden learning: refitting the readout ``a`` by least squares on the trained hidden features
``phi_j(x) = silu(w_j . x + c_j) / H`` and measuring the test error tells how good the learned
features are, apart from how well the readout was optimized. With ``n < H`` the refit is the
minimum-norm interpolant ``a = Phi^T (Phi Phi^T + rho I)^-1 y`` (``rho`` a tiny ridge).
"""
from __future__ import annotations

import time

import torch
from torch import nn

import revgn
from revgn.data import teacher_student

REFIT_RIDGE = 1e-10  # relative to the mean diagonal of Phi Phi^T
GN_DAMPING = 1e-6


def student(width: int, init_std: float, seed: int, dim: int = 10) -> nn.Sequential:
    """``Linear(dim, H) -> SiLU -> Linear(H, 1) -> x 1/H``; the ``1/H`` is a frozen
    ``Linear(1, 1)`` so that EGN's structured (Jacobian-free) path applies."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, 1, bias=False),
                        nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.normal_(0, init_std)
        net[0].bias.zero_()
        net[2].weight.normal_(0, 1.0)
        net[3].weight.fill_(1.0 / width)
    net[3].weight.requires_grad_(False)
    return net.double()


@torch.no_grad()
def features(net, x) -> torch.Tensor:
    """``Phi`` (n x H): the hidden features times the fixed ``1/H``."""
    return net[1](net[0](x)) * net[3].weight.item()


@torch.no_grad()
def refit_readout(net, x, y) -> torch.Tensor:
    """Minimum-norm least-squares readout ``a`` (H x 1) on the trained hidden features."""
    phi = features(net, x)
    gram = phi @ phi.t()
    rho = REFIT_RIDGE * float(gram.diagonal().mean())
    alpha = torch.linalg.solve(gram + rho * torch.eye(len(x), dtype=gram.dtype), y)
    return phi.t() @ alpha


@torch.no_grad()
def stable_gd_lr(net, x) -> float:
    """A GD step size that stays stable at every init scale. Under the ``1/H`` scaling the
    curvature along the readout is ``lambda_max(Phi^T Phi) / n <= E[phi^2] / H`` (``phi`` the
    unscaled features), and along each hidden unit ``O(a_j^2 / H^2)``, far smaller; so
    ``H / (2 (1 + E[phi^2]))``, measured at initialization."""
    width = net[0].out_features
    second_moment = float(net[1](net[0](x)).pow(2).mean())
    return width / (2.0 * (1.0 + second_moment))


def _mse(out, t) -> float:
    return float(0.5 * (out - t).pow(2).sum(1).mean())


def run_one(optimizer: str, init_std: float, seed: int, steps: int, width: int, data,
            lr: float | None = None, records: int = 10) -> dict:
    """Train one student (``optimizer`` gn | gd) for ``steps`` full-batch steps; history rows
    at ``records`` evenly spaced steps, each with the refit readout's test error."""
    net = student(width, init_std, seed, dim=data.in_features)
    x, y = data.x_train.double(), data.y_train.double()
    xt, yt = data.x_test.double(), data.y_test.double()
    if optimizer == "gn":
        lr = 1.0 if lr is None else lr
        opt = revgn.EGN(net, lr=lr, loss="mse", damping=GN_DAMPING)
    else:
        lr = stable_gd_lr(net, x) if lr is None else lr
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)
    every = max(1, steps // records)
    history, elapsed = [], 0.0
    for step in range(steps + 1):
        if step:
            t0 = time.perf_counter()
            if optimizer == "gn":
                opt.step(x, y)
            else:
                opt.zero_grad()
                (0.5 * (net(x) - y).pow(2).sum(1).mean()).backward()
                opt.step()
            elapsed += time.perf_counter() - t0
        if step % every == 0 or step == steps:
            with torch.no_grad():
                refit = features(net, xt) @ refit_readout(net, x, y)
                history.append(dict(epoch=step, train_loss=_mse(net(x), y), train_acc=None,
                                    test_loss=_mse(net(xt), yt), test_acc=None,
                                    refit_test_loss=_mse(refit, yt), seconds=elapsed))
    label = f"gn lr={lr:g}" if optimizer == "gn" else "gd"
    return dict(optimizer=optimizer, seed=seed, label=f"{label} std={init_std:g}", group=label,
                init_std=init_std, lr=lr, steps=steps, history=history,
                refit_test_loss=history[-1]["refit_test_loss"])


def jobs(cfg):
    """``(key, settings)`` of every run: each init std, GN at each step size and GD, each seed."""
    out = []
    for std in cfg["init_stds"]:
        for seed in cfg["seeds"]:
            for lr in cfg["gn_lrs"]:
                out.append((f"gn-lr{lr:g}-std{std:g}-seed{seed}",
                            dict(optimizer="gn", init_std=std, seed=seed, lr=lr,
                                 steps=cfg["steps"], width=cfg["width"])))
            out.append((f"gd-std{std:g}-seed{seed}",
                        dict(optimizer="gd", init_std=std, seed=seed, lr=None,
                             steps=cfg["gd_steps"], width=cfg["width"])))
    return out


def load(cfg):
    """The teacher-student data (teacher and samples drawn from seed 0)."""
    return teacher_student(n_train=cfg["teacher_train"], n_test=cfg["teacher_test"], seed=0)

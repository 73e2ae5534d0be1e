"""Arbel et al. (NeurIPS 2023): GN's implicit bias depends on the regime the initialization sets.

A one-hidden-layer student in the mean-field scaling,

    f(x) = (1/H) sum_j a_j silu(w_j . x + c_j),

learns a 5-unit SiLU teacher (``revgn.data.teacher_student(activation="silu")``) from 500
examples. As in the authors' code (github.com/MichaelArbel/Implicit-Bias-Gauss-Newton): the
hidden weights and biases start from ``N(0, std^2)``, the readout ``a`` from 0, and the teacher,
the samples and the student are drawn from the run's seed. Both layers train, full batch, on
``L = (1/2n) sum_i (f(x_i) - y_i)^2``:

- GN (``DampedGN``, ``revgn.EGN`` with the authors' damping rule): ``w <- w - lam J^T (J J^T +
  eps I)^-1 dL/df`` with ``eps = max(1e-7, s_min(J J^T))``, ``s_min`` the smallest singular
  value of the n x n Gram of the network's Jacobian on the training batch, recomputed at every
  step. Since ``dL/df = (f - y) / n``, the authors' step size ``lam`` is EGN's ``lr = lam / n``.
- GD: full-batch gradient descent at the largest stable step, measured at initialization.

Stopping rule: each run stops when its training loss reaches ``rel_tol`` times the loss at
initialization (the authors' rule, their ``rel_tol`` 1e-8), or at a step cap, in which case it
is marked unconverged (``converged: false``, ``stop: "cap"``). On the way every run reports
``crossings``: the step, test loss and refit test loss at which its training loss first reached
0.1, 0.01, ... times the initial one, so that runs can be compared at equal training loss.

Hidden learning: refitting the readout by least squares on the trained hidden features
``phi_j(x) = silu(w_j . x + c_j) / H`` tells how good the learned features are apart from how
well the readout was optimized. The random-features baseline refits the readout on the
*initial* features (the authors' "random features" runs): learning that beats it is more than
what the initialization gave. With ``n < H`` both refits are the minimum-norm interpolant
``a = Phi^T (Phi Phi^T + rho I)^-1 y`` (``rho`` a tiny ridge).
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

import revgn
from revgn.data import teacher_student

REFIT_RIDGE = 1e-10  # relative to the mean diagonal of Phi Phi^T
DAMPING_FLOOR = 1e-7  # the authors' epsilon: eps = max(1e-7, s_min(J J^T))
EVAL_CHUNK = 2500  # test rows per forward pass (10,000 x 5000 float64 would be 400 MB)
STUDENT_SEED_OFFSET = 1_000_000  # the student's generator: seed + offset (teacher: seed)
DIVERGED = 1e6  # a loss this many times the initial one stops the run as diverged
CROSSINGS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8)  # relative training losses a run reports


class DampedGN(revgn.EGN):
    """``revgn.EGN`` (mse) whose damping is set before every step from the Gram of that step:
    the row system is ``(J J^T + eps I) u = y - f`` with ``eps = max(floor, s_min(J J^T))``
    (Arbel et al.'s rule). ``last_eps`` and ``last_smin`` hold the values of the last step."""

    def __init__(self, model, lr: float = 1.0, floor: float = DAMPING_FLOOR, **kwargs):
        super().__init__(model, lr=lr, loss="mse", damping=floor, **kwargs)
        self.floor = float(floor)
        self.last_eps = self.last_smin = None

    def _row_damping(self, gram, b: int) -> float:
        c = gram.shape[-1]
        self.last_smin = smallest_singular_value(gram.reshape(b * c, b * c))
        self.last_eps = max(self.floor, self.last_smin)
        # EGN's damping lambda enters the row system as b lambda; report it in those units
        self.param_groups[0]["damping"] = self.last_eps / b
        return self.last_eps


def smallest_singular_value(gram: torch.Tensor) -> float:
    """``s_min`` of a symmetric matrix: the smallest ``|eigenvalue|`` (float64). The eigensolver
    runs on one thread: with more it slows down by 10-50x on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return float(torch.linalg.eigvalsh(gram.to(torch.float64)).abs().min())
    finally:
        torch.set_num_threads(threads)


def student(width: int, init_std: float, seed: int, dim: int = 10,
            readout: str = "zero") -> nn.Sequential:
    """``Linear(dim, H) -> SiLU -> Linear(H, 1) -> x 1/H``; the ``1/H`` is a frozen
    ``Linear(1, 1)`` so that EGN's structured (Jacobian-free) path applies. Hidden weights and
    biases ``N(0, init_std^2)``; readout 0 (``readout="zero"``, the authors') or ``N(0, 1)``."""
    net = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, 1, bias=False),
                        nn.Linear(1, 1, bias=False)).double()
    g = torch.Generator().manual_seed(seed + STUDENT_SEED_OFFSET)
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(width, dim, generator=g, dtype=torch.float64) * init_std)
        net[0].bias.copy_(torch.randn(width, generator=g, dtype=torch.float64) * init_std)
        if readout == "zero":
            net[2].weight.zero_()
        elif readout == "normal":
            net[2].weight.copy_(torch.randn(1, width, generator=g, dtype=torch.float64))
        else:
            raise ValueError(f"readout must be zero or normal; got {readout!r}")
        net[3].weight.fill_(1.0 / width)
    net[3].weight.requires_grad_(False)
    return net


@torch.no_grad()
def features(net, x) -> torch.Tensor:
    """``Phi`` (n x H): the hidden features times the fixed ``1/H``."""
    return net[1](net[0](x)) * net[3].weight.item()


@torch.no_grad()
def refit_readout(net, x, y) -> torch.Tensor:
    """Minimum-norm least-squares readout ``a`` (H x 1) on the network's hidden features."""
    phi = features(net, x)
    gram = phi @ phi.t()
    rho = REFIT_RIDGE * float(gram.diagonal().mean())
    alpha = torch.linalg.solve(gram + rho * torch.eye(len(x), dtype=gram.dtype), y)
    return phi.t() @ alpha


@torch.no_grad()
def refit_test_loss(net, x, y, xt, yt) -> float:
    """Test MSE of the readout refit on ``net``'s current hidden features."""
    a = refit_readout(net, x, y)
    return _mse(torch.cat([features(net, c) @ a for c in xt.split(EVAL_CHUNK)]), yt)


@torch.no_grad()
def predict(net, x) -> torch.Tensor:
    return torch.cat([net(c) for c in x.split(EVAL_CHUNK)])


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


def record_steps(cap: int, per_decade: int = 8) -> set:
    """Log-spaced steps ``0, 1, 2, ...`` up to ``cap`` at which a history row is written."""
    steps = {0}
    k = 0
    while True:
        s = int(round(10 ** (k / per_decade)))
        if s > cap:
            return steps
        steps.add(s)
        k += 1


def run_one(optimizer: str, init_std: float, seed: int, width: int, data, lr: float | None,
            rel_tol: float, max_steps: int, readout: str = "zero",
            damping_floor: float = DAMPING_FLOOR, levels=CROSSINGS) -> dict:
    """Train one student (``optimizer`` gn | gd) until its training loss is at most ``rel_tol``
    times the initial one, or for ``max_steps`` steps. GN's ``lr`` is the authors' step size
    ``lam`` (EGN's ``lr = lam / n``); GD's ``lr`` None means the largest stable step."""
    net = student(width, init_std, seed, dim=data.in_features, readout=readout)
    x, y = data.x_train.double(), data.y_train.double()
    xt, yt = data.x_test.double(), data.y_test.double()
    n = len(x)
    rf_test_loss = refit_test_loss(net, x, y, xt, yt)  # the random-features baseline
    if optimizer == "gn":
        opt = DampedGN(net, lr=lr / n, floor=damping_floor)
        applied_lr = lr / n
    else:
        lr = stable_gd_lr(net, x) if lr is None else lr
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)
        applied_lr = lr
    loss0 = _mse(predict(net, x), y)
    threshold = rel_tol * loss0
    at = record_steps(max_steps)
    history, elapsed, eps_seen = [], 0.0, []

    def record(step, loss):
        row = dict(epoch=step, train_loss=loss, train_acc=None,
                   test_loss=_mse(predict(net, xt), yt), test_acc=None, seconds=elapsed)
        if optimizer == "gn":
            row["damping_eps"] = opt.last_eps
        history.append(row)

    crossings = {}  # the first step at which the training loss reaches level x the initial one

    def cross(step, loss):
        for level in levels:
            if level >= rel_tol and str(level) not in crossings and loss <= level * loss0:
                crossings[str(level)] = dict(step=step, train_loss=loss,
                                             test_loss=_mse(predict(net, xt), yt),
                                             refit_test_loss=refit_test_loss(net, x, y, xt, yt))

    step, stop = 0, None
    while True:
        t0 = time.perf_counter()
        if optimizer == "gn":
            with torch.no_grad():
                loss = _mse(net(x), y)
        else:
            opt.zero_grad()
            objective = 0.5 * (net(x) - y).pow(2).sum(1).mean()
            loss = float(objective.detach())
        if not math.isfinite(loss) or loss > DIVERGED * loss0:
            stop = "diverged"
        elif loss <= threshold:
            stop = "threshold"
        elif step >= max_steps:
            stop = "cap"
        elapsed += time.perf_counter() - t0
        if stop != "diverged":
            cross(step, loss)
        if stop is not None or step in at:
            record(step, loss)  # the parameters the loss was measured at
        if stop is not None:
            break
        t0 = time.perf_counter()
        if optimizer == "gn":
            opt.step(x, y)
            eps_seen.append(opt.last_eps)
        else:
            objective.backward()
            opt.step()
        elapsed += time.perf_counter() - t0
        step += 1
    refit = refit_test_loss(net, x, y, xt, yt)
    history[-1].update(refit_test_loss=refit, rf_test_loss=rf_test_loss)
    group = f"gn lr={lr:g}" if optimizer == "gn" else "gd"
    out = dict(optimizer=optimizer, seed=seed, label=f"{group} std={init_std:g}", group=group,
               init_std=init_std, lr=lr, applied_lr=applied_lr, steps=step,
               converged=stop == "threshold", stop=stop, threshold=threshold,
               initial_train_loss=loss0, train_loss=history[-1]["train_loss"],
               test_loss=history[-1]["test_loss"], refit_test_loss=refit,
               rf_test_loss=rf_test_loss, crossings=crossings, seconds=elapsed,
               history=history)
    if optimizer == "gn":
        out["damping_eps"] = dict(first=eps_seen[0] if eps_seen else None,
                                  last=eps_seen[-1] if eps_seen else None,
                                  min=min(eps_seen, default=None),
                                  max=max(eps_seen, default=None),
                                  floor_steps=sum(e == damping_floor for e in eps_seen))
    return out


def run_key(optimizer, init_std, seed, lr=None) -> str:
    """The file name (under ``runs/``) of one run of the sweep."""
    if optimizer == "gn":
        return f"gn-lr{lr:g}-std{init_std:g}-seed{seed}"
    return f"gd-std{init_std:g}-seed{seed}"


def jobs(cfg):
    """``(key, settings)`` of every run: each init std and seed, GN at each step size and GD."""
    out = []
    common = dict(width=cfg["width"], rel_tol=cfg["rel_tol"], readout=cfg["readout_init"],
                  levels=list(CROSSINGS))
    for std in cfg["init_stds"]:
        for seed in cfg["seeds"]:
            for lr in cfg["gn_lrs"]:
                out.append((run_key("gn", std, seed, lr),
                            dict(optimizer="gn", init_std=std, seed=seed, lr=lr,
                                 max_steps=cfg["gn_max_steps"],
                                 damping_floor=cfg["damping_floor"], **common)))
            out.append((run_key("gd", std, seed),
                        dict(optimizer="gd", init_std=std, seed=seed, lr=cfg["gd_lr"],
                             max_steps=cfg["gd_max_steps"], **common)))
    return out


def load(cfg, seed):
    """The teacher-student data of one seed (teacher, training then test samples)."""
    t = cfg["teacher"]
    return teacher_student(n_train=cfg["teacher_train"], n_test=cfg["teacher_test"],
                           dim=t["dim"], teacher_units=t["units"], seed=seed,
                           activation=t["activation"])

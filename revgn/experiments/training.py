"""One training run: an optimizer on a model and dataset, with per-epoch evaluation and the
diagnostics an experiment asks for."""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import revgn
from revgn import diagnostics
from revgn.data import Dataset, batches


@dataclass
class RunSpec:
    """What to train: ``optimizer`` in gn | adam | sgd | gd | egn, and its settings."""
    optimizer: str
    lr: float
    seed: int = 0
    label: str | None = None
    epochs: int = 10
    batch_size: int | None = None            # None: full batch
    model: dict = field(default_factory=dict)  # RevMLP keyword arguments
    options: dict = field(default_factory=dict)  # optimizer keyword arguments
    then: "RunSpec | None" = None            # switch to this optimizer after ``switch_epoch``
    switch_epoch: int | None = None
    track: tuple = ()                        # "ntk", "cka", "cosine", "batch_change"

    @property
    def key(self) -> str:
        name = self.label or self.optimizer
        return f"{name}-seed{self.seed}"


def build_model(config: dict, data: Dataset):
    """A ``RevMLP`` (paper defaults scaled for CPU), or with ``arch="mlp"`` a tanh MLP for the
    optimizers that take any module."""
    config = dict(config)
    outputs = data.num_classes or 1
    if config.pop("arch", "revmlp") == "mlp":
        width = config.get("width", 256)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(data.in_features, width),
                                   torch.nn.Tanh(), torch.nn.Linear(width, outputs))
    kwargs = dict(depth=2, bottleneck=1024, init_std=1e-3)
    kwargs.update(config)
    return revgn.RevMLP(data.in_features, outputs, **kwargs)


def make_optimizer(name: str, model, lr: float, loss: str, options: dict):
    if name == "gn":
        opts = dict(step_scaling="per_block", rtol=1e-2)
        opts.update(options)
        return revgn.ExactGN(model, lr=lr, loss=loss, **opts)
    if name == "egn":
        return revgn.EGN(model, lr=lr, loss=loss, **options)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, **options)
    if name in ("sgd", "gd"):
        return torch.optim.SGD(model.parameters(), lr=lr, **options)
    raise ValueError(f"unknown optimizer {name!r}")


def loss_fn(logits, y, loss):
    if loss == "cross_entropy":
        return F.cross_entropy(logits, y)
    return 0.5 * (logits - y).pow(2).sum(dim=1).mean()


def take_step(name, opt, model, xb, yb, loss) -> float:
    """One step; returns the batch loss before it."""
    if name in ("gn", "egn"):
        return float(opt.step(xb, yb).loss)
    opt.zero_grad(set_to_none=True)
    value = loss_fn(model(xb), yb, loss)
    value.backward()
    opt.step()
    return float(value.detach())


@torch.no_grad()
def evaluate(model, x, y, loss, chunk=2048) -> tuple[float, float | None]:
    total, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        out = model(x[i:i + chunk])
        total += float(loss_fn(out, y[i:i + chunk], loss)) * len(out)
        if loss == "cross_entropy":
            correct += int((out.argmax(1) == y[i:i + chunk]).sum())
    acc = correct / len(x) if loss == "cross_entropy" else None
    return total / len(x), acc


def run(spec: RunSpec, data: Dataset, device="cpu", progress=None) -> dict:
    """Train and return ``{"optimizer", "seed", "label", "history": [...], ...}``."""
    loss = "cross_entropy" if data.num_classes else "mse"
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data).to(device)
    init = copy.deepcopy(model)
    xtr, ytr = data.x_train.to(device), data.y_train.to(device)
    xte, yte = data.x_test.to(device), data.y_test.to(device)
    probe = xtr[:32]
    ntk0 = diagnostics.empirical_ntk(init, probe) if "ntk" in spec.track else None
    current = spec
    opt = make_optimizer(spec.optimizer, model, spec.lr, loss, spec.options)
    gen = torch.Generator().manual_seed(spec.seed)
    history, batch_changes, elapsed = [], [], 0.0

    def record(epoch):
        tr_loss, tr_acc = evaluate(model, xtr, ytr, loss)
        te_loss, te_acc = evaluate(model, xte, yte, loss)
        row = dict(epoch=epoch, train_loss=tr_loss, train_acc=tr_acc, test_loss=te_loss,
                   test_acc=te_acc, seconds=elapsed, optimizer=current.optimizer)
        if ntk0 is not None:
            row["ntk_similarity"] = diagnostics.ntk_similarity(
                ntk0, diagnostics.empirical_ntk(model, probe))
        if "cka" in spec.track:
            row["cka"] = diagnostics.block_cka(model, init, probe)
        if "cosine" in spec.track:
            row["weight_cosine"] = diagnostics.weight_cosine(model, init)["all"]
        history.append(row)

    record(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rank-deficient first block, by design
        for epoch in range(1, spec.epochs + 1):
            if spec.then is not None and epoch == spec.switch_epoch + 1:
                current = spec.then
                opt = make_optimizer(current.optimizer, model, current.lr, loss, current.options)
            t0 = time.perf_counter()
            for xb, yb in batches(xtr, ytr, spec.batch_size or len(xtr), gen,
                                  shuffle=spec.batch_size is not None):
                before = take_step(current.optimizer, opt, model, xb, yb, loss)
                if "batch_change" in spec.track:
                    with torch.no_grad():
                        after = float(loss_fn(model(xb), yb, loss))
                    batch_changes.append(diagnostics.batch_loss_change(before, after))
            elapsed += time.perf_counter() - t0
            record(epoch)
            if progress is not None:
                progress.update(1, f"{spec.key} ep {epoch} train {history[-1]['train_loss']:.3f}")
    out = dict(optimizer=spec.optimizer, seed=spec.seed, label=spec.label or spec.optimizer,
               lr=spec.lr, history=history)
    if batch_changes:
        out["batch_loss_change"] = batch_changes
    if spec.then is not None:
        out["switch"] = dict(after_epoch=spec.switch_epoch, to=spec.then.optimizer)
    return out

"""One training run: an optimizer on a model and dataset, with per-epoch evaluation and the
diagnostics an experiment asks for."""
from __future__ import annotations

import copy
import dataclasses
import re
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import revgn
from revgn import diagnostics
from revgn.data import Dataset, batches

OPTIMIZERS = ("gn", "adam", "sgd", "gd", "egn", "sgn")
TRACKS = ("ntk", "cka", "cosine", "batch_change")
PROBE_SIZE = 32  # examples in the NTK / CKA probe batch (the first training examples)
# Buffelli et al.'s own NTK measure probes one training batch of 1000 along one random direction
# (diagnostics.ntk_direction_similarity); here the first 1000 training examples
DIRECTION_PROBE_SIZE = 1000


@dataclass
class RunSpec:
    """What to train: ``optimizer`` in gn | adam | sgd | gd | egn | sgn, and its settings.

    ``gd`` is SGD on the full training set (``batch_size=None``). With ``then`` set, training
    switches to that optimizer after epoch ``switch_epoch``.
    """
    optimizer: str
    lr: float
    seed: int = 0
    label: str | None = None
    epochs: int = 10
    batch_size: int | None = None              # None: full batch
    model: dict = field(default_factory=dict)  # RevMLP keyword arguments (or arch="mlp")
    options: dict = field(default_factory=dict)  # optimizer keyword arguments
    then: "RunSpec | None" = None
    switch_epoch: int | None = None
    track: tuple = ()                          # any of TRACKS
    eval_every: int = 1                        # evaluate every k epochs (and the last)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
        unknown = set(self.track) - set(TRACKS)
        if unknown:
            raise ValueError(f"unknown diagnostics {sorted(unknown)}; choose from {TRACKS}")

    @property
    def key(self) -> str:
        """A file-name-safe name of the run, unique within an experiment."""
        return re.sub(r"[^\w.=+-]", "_", f"{self.label or self.optimizer}-seed{self.seed}")

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for spec in (out, out["then"] or {}):  # the default stays out: older checkpoints match
            if spec.get("eval_every") == 1:
                del spec["eval_every"]
        return out


def build_model(config: dict, data: Dataset):
    """A ``RevMLP`` (defaults: depth 2, bottleneck 1024, init std 1e-3, linear first block), or
    with ``arch="mlp"`` a one-hidden-layer tanh MLP (``width`` units) for optimizers that take any
    module."""
    config = dict(config)
    outputs = data.num_classes or data.y_train.shape[1]
    if config.pop("arch", "revmlp") == "mlp":
        width = config.get("width", 256)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(data.in_features, width),
                                   torch.nn.Tanh(), torch.nn.Linear(width, outputs))
    kwargs = dict(depth=2, bottleneck=1024, init_std=1e-3)
    kwargs.update(config)
    return revgn.RevMLP(data.in_features, outputs, **kwargs)


def make_optimizer(name: str, model, lr: float, loss: str, options: dict):
    """GN is ``ExactGN`` with the paper's ``per_block`` scaling and ``rtol=1e-2`` unless
    ``options`` say otherwise."""
    if name == "gn":
        opts = dict(step_scaling="per_block", rtol=1e-2)
        opts.update(options)
        return revgn.ExactGN(model, lr=lr, loss=loss, **opts)
    if name == "egn":
        return revgn.EGN(model, lr=lr, loss=loss, **options)
    if name == "sgn":
        return revgn.SGN(model, lr=lr, loss=loss, **options)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, **options)
    return torch.optim.SGD(model.parameters(), lr=lr, **options)  # sgd, gd


def loss_fn(outputs, y, loss: str):
    """Mean cross-entropy, or ``mean_i 1/2 ||f_i - y_i||^2`` (the convention ``ExactGN`` uses)."""
    if loss == "cross_entropy":
        return F.cross_entropy(outputs, y)
    return 0.5 * (outputs - y).pow(2).sum(dim=1).mean()


def warm_up(spec: RunSpec, model, x, y, loss) -> None:
    """One untimed step on a copy of the model, thrown away: one-off costs (loading the
    extension, binding the op table, first allocations) stay out of the first timed epoch, so
    runs compare fairly against wall time whichever of them runs first in a process."""
    copy_ = copy.deepcopy(model)
    batch = spec.batch_size or len(x)
    opt = make_optimizer(spec.optimizer, copy_, spec.lr, loss, spec.options)
    take_step(spec.optimizer, opt, copy_, x[:batch], y[:batch], loss)


def take_step(name, opt, model, xb, yb, loss):
    """One step; returns ``(batch loss before it, exact)`` where ``exact`` is GN's exactness
    report (None for the other optimizers)."""
    if name == "gn":
        result = opt.step(xb, yb)
        return float(result.loss), bool(result.exact)
    if name in ("egn", "sgn"):
        return float(opt.step(xb, yb).loss), None
    opt.zero_grad(set_to_none=True)
    value = loss_fn(model(xb), yb, loss)
    value.backward()
    opt.step()
    return float(value.detach()), None


@torch.no_grad()
def evaluate(model, x, y, loss, chunk=2048) -> tuple[float, float | None]:
    """Mean loss and (for classification) accuracy over ``(x, y)``, in chunks."""
    total, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        out = model(x[i:i + chunk])
        total += float(loss_fn(out, y[i:i + chunk], loss)) * len(out)
        if loss == "cross_entropy":
            correct += int((out.argmax(1) == y[i:i + chunk]).sum())
    return total / len(x), (correct / len(x) if loss == "cross_entropy" else None)


def _state(epoch, model, opt, gen, history, batch_changes, elapsed) -> dict:
    """Everything an uninterrupted run carries from one epoch to the next, so that a run resumed
    from it continues step for step as if it had not stopped: the initial model, the NTK probe
    direction and the initial kernel follow from the seed and are rebuilt, not stored."""
    return dict(epoch=epoch, model=model.state_dict(), optimizer=opt.state_dict(),
                batch_generator=gen.get_state(), torch_rng=torch.get_rng_state(),
                history=history, batch_changes=batch_changes, seconds=elapsed)


def spec_at_epoch(spec: RunSpec, epoch: int) -> RunSpec:
    """The spec that trains epoch ``epoch`` (from 1): ``spec.then`` after ``switch_epoch``."""
    return spec.then if spec.then is not None and epoch > spec.switch_epoch else spec


def run(spec: RunSpec, data: Dataset, device="cpu", progress=None, checkpoint=None,
        save_every: float = 300.0) -> dict:
    """Train and return ``{"optimizer", "seed", "label", "lr", "history": [...], ...}``.

    History rows (epoch 0 is the initialization): ``epoch, train_loss, train_acc, test_loss,
    test_acc, seconds`` (cumulative training time, evaluation excluded), ``optimizer``, and when
    tracked ``ntk_similarity`` (to init), ``ntk_direction_similarity`` (to init, the authors'
    one-direction form on the first 1000 training examples), ``ntk_velocity`` (kernel distance to the previous row
    per epoch), ``cka`` (per block, to init), ``weight_cosine`` (per coupling, block, all);
    GN rows add ``exact_fraction`` (share of that epoch's steps every coupling solved exactly).

    With ``eval_every=k`` the training and test sets are evaluated every ``k`` epochs and at the
    last; in between the losses and accuracies are None, except that a full-batch run fills
    ``train_loss`` from the next step (the loss before a full-batch step is the training loss
    where the previous row left off), so its training loss is known at every step.

    With a ``checkpoint`` (``store.Checkpoint``) the run saves its state after an epoch once
    ``save_every`` seconds have passed since the last save, and a run that finds a saved state
    continues after that epoch with the same model, optimizer state, batch order and random
    streams: the same history as an uninterrupted run on the same device, only ``seconds`` and
    the wall clock differ (a state saved on another device resumes too, equal up to rounding).
    """
    loss = "cross_entropy" if data.num_classes else "mse"
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data).to(device)
    init = copy.deepcopy(model)
    xtr, ytr = data.x_train.to(device), data.y_train.to(device)
    xte, yte = data.x_test.to(device), data.y_test.to(device)
    probe = xtr[:PROBE_SIZE]
    kernels = [diagnostics.empirical_ntk(init, probe)] if "ntk" in spec.track else None
    if kernels is not None:
        direction_probe = xtr[:DIRECTION_PROBE_SIZE]
        # the stream X_L is as wide as the flattened input
        direction = torch.randn(len(direction_probe), data.in_features,
                                generator=torch.Generator().manual_seed(spec.seed),
                                dtype=xtr.dtype).to(device)

    def optimizer_for(s):
        return make_optimizer(s.optimizer, model, s.lr, loss, s.options)

    current = spec
    opt = optimizer_for(current)
    gen = torch.Generator().manual_seed(spec.seed)
    history, batch_changes, elapsed = [], [], 0.0

    full_batch = spec.batch_size is None

    def record(epoch, exact_steps):
        tr_loss = tr_acc = te_loss = te_acc = None
        if epoch % spec.eval_every == 0 or epoch == spec.epochs:
            tr_loss, tr_acc = evaluate(model, xtr, ytr, loss)
            te_loss, te_acc = evaluate(model, xte, yte, loss)
        row = dict(epoch=epoch, train_loss=tr_loss, train_acc=tr_acc, test_loss=te_loss,
                   test_acc=te_acc, seconds=elapsed, optimizer=current.optimizer)
        if kernels is not None:
            kernels.append(diagnostics.empirical_ntk(model, probe))
            row["ntk_similarity"] = diagnostics.ntk_similarity(kernels[0], kernels[-1])
            if epoch:
                row["ntk_velocity"] = diagnostics.kernel_velocity(kernels[-2:], [epoch - 1,
                                                                                 epoch])[0]
            del kernels[1:-1]  # keep the initial and the latest kernel only
            row["ntk_direction_similarity"] = diagnostics.ntk_direction_similarity(
                init, model, direction_probe, direction)
        if "cka" in spec.track:
            row["cka"] = diagnostics.block_cka(model, init, probe)
        if "cosine" in spec.track:
            row["weight_cosine"] = diagnostics.weight_cosine(model, init)
        if exact_steps:
            row["exact_fraction"] = sum(exact_steps) / len(exact_steps)
        history.append(row)

    with warnings.catch_warnings():
        # ExactGN warns when a block is rank deficient; with the paper's linear first block that
        # is the normal case (DESIGN §3.1) and exact_fraction records it
        warnings.simplefilter("ignore", RuntimeWarning)
        # on the initial model, before any saved state is loaded: as in an uninterrupted run
        warm_up(spec, model, xtr, ytr, loss)
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is None:
            record(0, [])
        else:
            model.load_state_dict(saved["model"])  # in place: the optimizer stays bound to it
            current = spec_at_epoch(spec, saved["epoch"])
            if current is not spec:  # the saved state is the switched-to optimizer's
                opt = optimizer_for(current)
            opt.load_state_dict(saved["optimizer"])
            gen.set_state(saved["batch_generator"])
            torch.set_rng_state(saved["torch_rng"])
            history, batch_changes = saved["history"], saved["batch_changes"]
            elapsed = saved["seconds"]
            if kernels is not None:  # the latest kernel, for the next row's velocity
                kernels.append(diagnostics.empirical_ntk(model, probe))
            print(f"{spec.key}: resuming after epoch {saved['epoch']} (state saved in "
                  f"{checkpoint.path})", file=sys.stderr)
            if progress is not None:
                progress.update(saved["epoch"],
                                f"{spec.key} resumed after epoch {saved['epoch']}")
        last_save = time.perf_counter()
        for epoch in range(1 if saved is None else saved["epoch"] + 1, spec.epochs + 1):
            trainer = spec_at_epoch(spec, epoch)
            if trainer is not current:
                current, opt = trainer, optimizer_for(trainer)
            t0 = time.perf_counter()
            exact_steps = []
            for xb, yb in batches(xtr, ytr, spec.batch_size or len(xtr), gen,
                                  shuffle=spec.batch_size is not None):
                before, exact = take_step(current.optimizer, opt, model, xb, yb, loss)
                if full_batch and history[-1]["train_loss"] is None:
                    # the loss before a full-batch step is the training loss of the row before
                    history[-1]["train_loss"] = before
                if exact is not None:
                    exact_steps.append(exact)
                if "batch_change" in spec.track:
                    with torch.no_grad():
                        after = float(loss_fn(model(xb), yb, loss))
                    batch_changes.append(diagnostics.batch_loss_change(before, after))
            elapsed += time.perf_counter() - t0
            record(epoch, exact_steps)
            if (checkpoint is not None and epoch < spec.epochs
                    and time.perf_counter() - last_save >= save_every):
                checkpoint.save(_state(epoch, model, opt, gen, history, batch_changes, elapsed))
                last_save = time.perf_counter()
            if progress is not None:
                progress.update(1, f"{spec.key} epoch {epoch} train "
                                   f"{history[-1]['train_loss'] or float('nan'):.3g}")
    out = dict(optimizer=spec.optimizer, seed=spec.seed, label=spec.label or spec.optimizer,
               lr=spec.lr, history=history)
    if batch_changes:
        out["batch_loss_change"] = batch_changes
    if spec.then is not None:
        out["switch"] = dict(after_epoch=spec.switch_epoch, to=spec.then.optimizer,
                             lr=spec.then.lr)
    return out

"""The experiments of DESIGN §5, each a list of training runs (``RunSpec``) and the figures to
draw from them. Learning rates follow the paper (GN 0.1 mini-batch and 0.5 full batch with
``per_block`` scaling, rtol 1e-2; Adam 1e-4 in the paper, 1e-3 here for the short CPU runs; SGD
0.1); model sizes are scaled down for CPU (bottleneck 1024 instead of 8000) and say so in the
config."""
from __future__ import annotations

from dataclasses import replace

from revgn.experiments.training import RunSpec

FULL_BATCH_SIZE = 1024


def _base(cfg, name, lr, **kw):
    return [RunSpec(name, lr, seed=s, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                    model=dict(cfg["model"]), **kw) for s in cfg["seeds"]]


def _trio(cfg, gn_lr, track=()):
    return (_base(cfg, "gn", gn_lr, track=track) + _base(cfg, "adam", cfg["adam_lr"], track=track)
            + _base(cfg, "sgd", cfg["sgd_lr"], track=track))


def fullbatch(cfg):
    cfg = dict(cfg, batch_size=None)
    return _trio(cfg, 0.5), dict(full_batch=True, examples=FULL_BATCH_SIZE)


def minibatch(cfg):
    return _trio(cfg, 0.1), {}


def batch_loss_change(cfg):
    return (_base(cfg, "gn", 0.1, track=("batch_change",))
            + _base(cfg, "adam", cfg["adam_lr"], track=("batch_change",))), {}


def ntk_cka(cfg):
    return (_base(cfg, "gn", 0.1, track=("ntk", "cka"))
            + _base(cfg, "adam", cfg["adam_lr"], track=("ntk", "cka"))), {}


def no_bottleneck(cfg):
    cfg = dict(cfg, model=dict(cfg["model"], inverted_bottleneck=False))
    return _trio(cfg, 0.1), dict(inverted_bottleneck=False)


def long_run(cfg):
    cfg = dict(cfg, epochs=cfg["epochs"] * 3)
    return _trio(cfg, 0.1), {}


def switch(cfg):
    half = max(1, cfg["epochs"] // 2)
    runs = []
    for first, second in (("adam", "gn"), ("gn", "adam")):
        lrs = {"adam": cfg["adam_lr"], "gn": 0.1}
        for spec in _base(cfg, first, lrs[first], label=f"{first}->{second}"):
            runs.append(replace(spec, then=RunSpec(second, lrs[second]), switch_epoch=half))
    return runs, dict(switch_epoch=half)


def init_std(cfg):
    runs = []
    for std in (1e-2, 1e-3, 1e-6):
        model = dict(cfg["model"], init_std=std)
        for name, lr in (("gn", 0.1), ("adam", cfg["adam_lr"])):
            runs += [replace(s, model=model, label=f"{name} std={std:g}")
                     for s in _base(cfg, name, lr)]
    return runs, {}


def lr_sweep(cfg):
    return [replace(s, label=f"gn lr={lr:g}") for lr in (0.01, 0.1, 0.5, 1.0)
            for s in _base(cfg, "gn", lr)], {}


def weight_decay(cfg):
    return [replace(s, label=f"gn wd={wd:g}", options=dict(weight_decay=wd))
            for wd in (0.0, 1e-3, 1e-2, 1e-1) for s in _base(cfg, "gn", 0.1)], {}


def pinv_regularization(cfg):
    variants = [("rtol=0", dict(rtol=0.0)), ("rtol=1e-2", dict(rtol=1e-2)),
                ("rtol=1e-1", dict(rtol=1e-1)),
                ("damped 1e-3", dict(solver="damped", pinv_damping=1e-3)),
                ("noise 0.1", dict(noise=0.1))]
    return [replace(s, label=f"gn {name}", options=opts) for name, opts in variants
            for s in _base(cfg, "gn", 0.1)], {}


def weight_cosine(cfg):
    return (_base(cfg, "gn", 0.1, track=("cosine",))
            + _base(cfg, "adam", cfg["adam_lr"], track=("cosine",))), {}


def egn(cfg):
    # EGN takes any module: a tanh MLP, the same for every optimizer
    cfg = dict(cfg, model=dict(arch="mlp", width=256))
    return (_base(cfg, "egn", 1.0, options=dict(damping=1.0))
            + _base(cfg, "adam", cfg["adam_lr"]) + _base(cfg, "sgd", cfg["sgd_lr"])), \
        dict(model="MLP in-256-out, tanh")


EXPERIMENTS = {
    "fullbatch": fullbatch, "minibatch": minibatch, "batch-loss-change": batch_loss_change,
    "ntk-cka": ntk_cka, "no-bottleneck": no_bottleneck, "long-run": long_run, "switch": switch,
    "init-std": init_std, "lr": lr_sweep, "weight-decay": weight_decay,
    "pinv-regularization": pinv_regularization, "weight-cosine": weight_cosine, "egn": egn,
}

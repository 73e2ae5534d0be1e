"""The experiments of DESIGN §5 on the reversible MLP: each maps a config to the training runs
(``RunSpec``) it needs and the fields it adds to results.json.

GN learning rates are the paper's (``per_block`` scaling, rtol 1e-2): 0.5 full batch, 0.1
mini-batch; ``--gn-lr`` overrides them. Adam and SGD rates come from the config.
"""
from __future__ import annotations

from dataclasses import replace

from revgn.experiments.training import RunSpec

FULL_BATCH_EXAMPLES = 1024
GN_LR_FULL_BATCH, GN_LR_MINI_BATCH = 0.5, 0.1


def _runs(cfg, optimizer, lr, seeds=None, **kw):
    """One run per seed (the config's, or ``seeds``) with the config's epochs, batch size, model
    and test interval."""
    return [RunSpec(optimizer, lr, seed=s, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                    model=dict(cfg["model"]), eval_every=cfg.get("eval_every", 1), **kw)
            for s in (cfg["seeds"] if seeds is None else seeds)]


def _sweep_seeds(cfg):
    """The seeds of the baselines beyond GN and Adam's first rate (``--sweep-seeds``): a
    learning-rate sweep that is only there to show the first rate is not an untuned one need not
    cost every seed."""
    return cfg.get("sweep_seeds") or cfg["seeds"]


def _adam_runs(cfg, **kw):
    """Adam at the config's rate, or one group per rate of an ``--adam-lrs`` sweep (labelled
    ``adam lr=LR``; rates after the first on the sweep seeds only)."""
    lrs = cfg.get("adam_lrs") or [cfg["adam_lr"]]
    if len(lrs) == 1:
        return _runs(cfg, "adam", lrs[0], **kw)
    label = kw.pop("label", "adam")
    return [spec for i, lr in enumerate(lrs)
            for spec in _runs(cfg, "adam", lr, seeds=None if i == 0 else _sweep_seeds(cfg),
                              label=f"{label} lr={lr:g}", **kw)]


def _gn_lr(cfg, default):
    return default if cfg.get("gn_lr") is None else cfg["gn_lr"]


def _gn_adam(cfg, gn_lr, **kw):
    return _runs(cfg, "gn", _gn_lr(cfg, gn_lr), **kw) + _adam_runs(cfg, **kw)


def _sgd_runs(cfg, **kw):
    """SGD at the config's rate on the sweep seeds; none under ``--no-sgd`` (rate None)."""
    if cfg.get("sgd_lr") is None:
        return []
    return _runs(cfg, "sgd", cfg["sgd_lr"], _sweep_seeds(cfg), **kw)


def _gn_adam_sgd(cfg, gn_lr, **kw):
    return _gn_adam(cfg, gn_lr, **kw) + _sgd_runs(cfg, **kw)


def fullbatch(cfg):
    """Fig. 1: the first 1024 training examples as one batch."""
    cfg = dict(cfg, batch_size=None)
    return _gn_adam_sgd(cfg, GN_LR_FULL_BATCH), dict(full_batch_examples=FULL_BATCH_EXAMPLES)


def minibatch(cfg):
    """Fig. 2: mini-batches over the whole training set."""
    return _gn_adam_sgd(cfg, GN_LR_MINI_BATCH), {}


def batch_loss_change(cfg):
    """Fig. 3: percent loss change on the batch each step was taken on."""
    return _gn_adam(cfg, GN_LR_MINI_BATCH, track=("batch_change",)), {}


def ntk_cka(cfg):
    """Fig. 4: NTK similarity / velocity and per-block CKA, to initialization."""
    return _gn_adam(cfg, GN_LR_MINI_BATCH, track=("ntk", "cka")), {}


def no_bottleneck(cfg):
    """Fig. 5: ``minibatch`` without the inverted bottleneck (``W in R^{h x h}``)."""
    cfg = dict(cfg, model=dict(cfg["model"], inverted_bottleneck=False))
    return _gn_adam_sgd(cfg, GN_LR_MINI_BATCH), dict(inverted_bottleneck=False)


def long_run(cfg):
    """``minibatch`` for three times the epochs."""
    cfg = dict(cfg, epochs=cfg["epochs"] * 3)
    return _gn_adam_sgd(cfg, GN_LR_MINI_BATCH), dict(epochs=cfg["epochs"])


def switch(cfg):
    """Adam then GN, and GN then Adam, switching after half the epochs."""
    half = max(1, cfg["epochs"] // 2)
    lrs = {"adam": cfg["adam_lr"], "gn": _gn_lr(cfg, GN_LR_MINI_BATCH)}
    runs = []
    for first, second in (("adam", "gn"), ("gn", "adam")):
        for spec in _runs(cfg, first, lrs[first], label=f"{first}->{second}"):
            runs.append(replace(spec, then=RunSpec(second, lrs[second]), switch_epoch=half))
    return runs, dict(switch_epoch=half)


def init_std(cfg):
    """GN and Adam from ``W ~ N(0, std^2)``, std in {1e-2, 1e-3, 1e-6}."""
    runs = []
    for std in (1e-2, 1e-3, 1e-6):
        model = dict(cfg["model"], init_std=std)
        runs += [replace(s, model=model, label=f"{s.label or s.optimizer} std={std:g}")
                 for s in _gn_adam(cfg, GN_LR_MINI_BATCH)]
    return runs, dict(init_stds=[1e-2, 1e-3, 1e-6])


def lr_sweep(cfg):
    """GN at learning rates 0.01, 0.1, 0.5, 1.0 (per_block)."""
    lrs = [0.01, 0.1, 0.5, 1.0]
    return [replace(s, label=f"gn lr={lr:g}") for lr in lrs for s in _runs(cfg, "gn", lr)], \
        dict(gn_lrs=lrs)


def weight_decay(cfg):
    """GN with decoupled weight decay 0, 1e-3, 1e-2, 1e-1."""
    wds = [0.0, 1e-3, 1e-2, 1e-1]
    return [replace(s, label=f"gn wd={wd:g}", options=dict(weight_decay=wd))
            for wd in wds for s in _runs(cfg, "gn", _gn_lr(cfg, GN_LR_MINI_BATCH))], \
        dict(weight_decays=wds)


PINV_VARIANTS = [("rtol=0", dict(rtol=0.0)), ("rtol=1e-2", dict(rtol=1e-2)),
                 ("rtol=1e-1", dict(rtol=1e-1)),
                 ("damped 1e-3", dict(solver="damped", pinv_damping=1e-3)),
                 ("noise 0.1", dict(noise=0.1))]


def pinv_regularization(cfg):
    """GN with the pseudoinverse truncated (rtol), Tikhonov-damped, or with solution noise."""
    return [replace(s, label=f"gn {name}", options=opts) for name, opts in PINV_VARIANTS
            for s in _runs(cfg, "gn", _gn_lr(cfg, GN_LR_MINI_BATCH))], \
        dict(variants={name: opts for name, opts in PINV_VARIANTS})


def weight_cosine(cfg):
    """Cosine of the weights to their initial values, per coupling, block and overall."""
    return _gn_adam(cfg, GN_LR_MINI_BATCH, track=("cosine",)), {}


def egn(cfg):
    """EGN (any module) vs Adam vs SGD on the same tanh MLP."""
    cfg = dict(cfg, model=dict(arch="mlp", width=256))
    return (_runs(cfg, "egn", 1.0, options=dict(damping=1.0))
            + _adam_runs(cfg) + _sgd_runs(cfg)), \
        dict(model="MLP in-256-out, tanh")


# Korbit et al.'s comparison: EGN with its line-search and momentum ablations, SGN (the
# truncated-CG GN baseline) and Adam and SGD each over a learning-rate sweep; damping 1 throughout
EGN_REGRESSION_VARIANTS = (
    ("egn", "egn", 1.0, dict(damping=1.0)),
    ("egn+ls", "egn", 1.0, dict(damping=1.0, line_search=True, alpha_max=8.0)),
    ("egn+mom", "egn", 1.0, dict(damping=1.0, momentum=0.9)),
    ("egn+ls+mom", "egn", 1.0, dict(damping=1.0, line_search=True, alpha_max=8.0,
                                    momentum=0.9)),
    ("sgn", "sgn", 1.0, dict(damping=1.0, cg_iters=10)),
    ("sgn+ls", "sgn", 1.0, dict(damping=1.0, cg_iters=10, line_search=True, alpha_max=8.0)),
)
EGN_REGRESSION_SWEEPS = dict(adam=(1e-3, 3e-3, 1e-2, 3e-2), sgd=(1e-3, 1e-2, 1e-1))


def egn_regression(cfg):
    """Korbit et al.: EGN, its ablations and SGN against tuned Adam and SGD on a tanh MLP
    (mean squared error, mini-batches); loss against epochs and against wall time."""
    runs = [spec for label, opt, lr, options in EGN_REGRESSION_VARIANTS
            for spec in _runs(cfg, opt, lr, label=label, options=options)]
    for opt, lrs in EGN_REGRESSION_SWEEPS.items():
        runs += [spec for lr in lrs for spec in _runs(cfg, opt, lr, label=f"{opt} lr={lr:g}")]
    return runs, dict(variants={label: dict(optimizer=opt, lr=lr, **options)
                                for label, opt, lr, options in EGN_REGRESSION_VARIANTS},
                      sweeps={k: list(v) for k, v in EGN_REGRESSION_SWEEPS.items()})


EXPERIMENTS = {
    "fullbatch": fullbatch, "minibatch": minibatch, "batch-loss-change": batch_loss_change,
    "ntk-cka": ntk_cka, "no-bottleneck": no_bottleneck, "long-run": long_run, "switch": switch,
    "init-std": init_std, "lr": lr_sweep, "weight-decay": weight_decay,
    "pinv-regularization": pinv_regularization, "weight-cosine": weight_cosine, "egn": egn,
    "egn-regression": egn_regression,
}

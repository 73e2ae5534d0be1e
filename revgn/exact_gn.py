"""``ExactGN``: the exact Gauss-Newton optimizer for ``RevMLP`` (DESIGN §3).

The step reaches the model only through the sweep (``revgn.sweep``) and the model's
``gram_reduce`` and ``all_finite``, so the same optimizer drives a model whose couplings are
split over ranks: ``revgn.distributed.DistributedExactGN`` is this class on a
``ShardedRevMLP``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from revgn.backend import check_backend_name
from revgn.losses import CURVATURES, LOSSES, batch_loss, output_step
from revgn.model import RevMLP
from revgn.ops import OpTable, bind
from revgn.solvers import SOLVERS, SolverConfig
from revgn.sweep import (TANGENT_MODES, CouplingReport, forward_for_sweep, gn_sweep,
                         relative_residual)
from revgn.validation import (all_finite, check_choice, check_features, check_nonnegative,
                              check_targets, step_batch)

STEP_SCALINGS = ("function", "per_block")
NONFINITE_POLICIES = ("raise", "skip")


@dataclass
class GNStepResult:
    """What one GN step did.

    ``loss`` is the batch loss before the step; ``blocks`` holds one exactness report per
    coupling in block order (``blocks[2 * l]`` is block ``l``'s F, ``blocks[2 * l + 1]`` its G;
    each report names its ``block`` and ``coupling`` too), although the sweep solves the last
    block first; ``exact`` is true when every coupling realized its target exactly;
    ``inversion_error`` is the largest ``||X(rebuilt) - X|| / ||X||`` of the sweep, at its end
    (the input) and at every anchor. ``applied`` says whether the parameters moved: False for
    the result of ``direction()``, which applies nothing, and for a skipped step
    (``skipped_reason`` says why).
    """
    loss: float
    blocks: list[CouplingReport] = field(default_factory=list)
    inversion_error: float = 0.0
    applied: bool = True
    skipped_reason: str | None = None
    #: block spacing of the stream anchors the sweep snapped to (None: none were used)
    anchor_every: int | None = None
    reanchored: bool = False

    def _order_blocks(self) -> None:
        self.blocks.sort(key=lambda r: (r.block, r.coupling))

    @property
    def exact(self) -> bool:
        return all(r.exact for r in self.blocks)

    @property
    def max_residual(self) -> float:
        return max((r.residual for r in self.blocks), default=0.0)

    def summary(self) -> str:
        rows = [f"loss {self.loss:.6g}  exact={self.exact}  inversion_error={self.inversion_error:.2e}"]
        for r in self.blocks:
            rows.append(f"  block {r.block} {r.coupling}: residual {r.residual:.2e}  rank "
                        f"{r.rank}/{r.rows}  {r.method}")
        return "\n".join(rows)


@dataclass
class CouplingUpdate:
    """One coupling's update: ``dW = Z^T A, db = 1^T Z`` on the Gram route (``Z`` set), else the
    explicit ``dW``, ``db``. ``u`` is the coupling's input, from which ``A`` can be rebuilt."""
    coupling: torch.nn.Module
    u: torch.Tensor
    Z: torch.Tensor | None
    dW: torch.Tensor | None
    db: torch.Tensor | None


class NonFiniteStepError(FloatingPointError):
    """A step produced a non-finite update; the parameters were left unchanged."""


class ExactGN(torch.optim.Optimizer):
    """Exact Gauss-Newton for a ``RevMLP``: one step moves the batch outputs by ``-lr * e``
    (``step_scaling="function"``) to first order, ``e_i = H_i^+ g_i``.

    Args:
        model: the ``RevMLP`` to train (its ``W`` and ``b`` are the parameters).
        lr: step size (function-space; see ``step_scaling``).
        loss: ``"cross_entropy"`` (integer labels) or ``"mse"`` (``1/2 ||f - y||^2`` per sample).
        curvature: cross-entropy output curvature, ``"identity"`` (the paper's configs),
            ``"exact"`` (the softmax Hessian's pseudoinverse) or ``"damped"`` (``H + damping I``).
        damping: lambda of ``curvature="damped"``.
        solver, rtol, atol: the pseudoinverse solve (``revgn.solvers``); truncation keeps singular
            values ``s > max(rtol s_max, atol)``.
        pinv_damping, pinv_damping_relative: lambda of ``solver="damped"``, relative to ``s_max^2``
            unless ``pinv_damping_relative=False``.
        rsvd_rank: rank of ``solver="rsvd"`` (default: all).
        noise: add ``noise * rms(D) * N(0, 1)`` to every solution (paper appendix ablation).
        step_scaling: ``"function"`` applies ``theta -= (lr / L) D`` so the step moves outputs by
            ``-lr e``; ``"per_block"`` applies ``theta -= lr D`` (the authors' convention, an
            effective step of ``L lr``).
        weight_decay: decoupled, ``theta -= lr * weight_decay * theta``.
        tangent_mode: ``"analytic"`` or ``"autodiff"`` (forward-mode AD through the inverse).
        backend: which implementation runs the ops (``revgn.backend``).
        on_nonfinite: ``"raise"`` (``NonFiniteStepError``) or ``"skip"`` (report and leave the
            parameters unchanged) when a step's update is not finite.
        seed: seed of the generator used by ``noise`` and ``rsvd``.
        anchor_every: keep the forward stream at every ``anchor_every``-th block and snap the
            sweep's rebuilt stream to it (bounds inversion drift in deep float32 networks).
        drift_tol: when the rebuilt input of a step differs from the true one by more than this
            (relative), the step is undone and redone with anchors (warned once); later steps
            keep them.
    """

    def __init__(self, model, lr: float = 1.0, loss: str = "cross_entropy",
                 curvature: str = "identity", damping: float = 0.0, solver: str = "cholesky",
                 rtol: float = 0.0, atol: float = 0.0, noise: float = 0.0,
                 step_scaling: str = "function", weight_decay: float = 0.0,
                 tangent_mode: str = "analytic", backend: str = "auto",
                 pinv_damping: float = 0.0, pinv_damping_relative: bool = True,
                 rsvd_rank: int | None = None, on_nonfinite: str = "raise", seed: int = 0,
                 anchor_every: int | None = None, drift_tol: float = 1e-3):
        self._check_model(model)
        check_choice(loss, "loss", LOSSES)
        check_choice(curvature, "curvature", CURVATURES)
        check_choice(solver, "solver", SOLVERS)
        check_choice(step_scaling, "step_scaling", STEP_SCALINGS)
        check_choice(tangent_mode, "tangent_mode", TANGENT_MODES)
        check_choice(on_nonfinite, "on_nonfinite", NONFINITE_POLICIES)
        check_backend_name(backend)
        for name, value in (("lr", lr), ("damping", damping), ("rtol", rtol), ("atol", atol),
                            ("noise", noise), ("weight_decay", weight_decay),
                            ("pinv_damping", pinv_damping)):
            check_nonnegative(value, name)
        if curvature == "damped" and damping <= 0:
            raise ValueError("curvature='damped' needs damping > 0 (damping=0 is "
                             "curvature='exact')")
        if curvature != "identity" and loss != "cross_entropy":
            raise ValueError(f"curvature={curvature!r} applies to loss='cross_entropy' only")
        if solver == "damped" and pinv_damping <= 0:
            raise ValueError("solver='damped' needs pinv_damping > 0")
        if anchor_every is not None and (not isinstance(anchor_every, int) or anchor_every < 1):
            raise ValueError(f"anchor_every must be a positive int or None; got {anchor_every!r}")
        check_nonnegative(drift_tol, "drift_tol")
        if rsvd_rank is not None and rsvd_rank < 1:
            raise ValueError(f"rsvd_rank must be >= 1; got {rsvd_rank}")
        defaults = dict(lr=lr, weight_decay=weight_decay)
        super().__init__(model.parameters(), defaults)
        self.model = model
        self.loss = loss
        self.curvature = curvature
        self.damping = damping
        self.noise = noise
        self.step_scaling = step_scaling
        self.tangent_mode = tangent_mode
        self.backend = backend
        self.on_nonfinite = on_nonfinite
        self.anchor_every = anchor_every
        self.drift_tol = drift_tol
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        self.solver_config = SolverConfig(
            solver=solver, rtol=rtol, atol=atol, pinv_damping=pinv_damping,
            pinv_damping_relative=pinv_damping_relative, rsvd_rank=rsvd_rank,
            ops=bind(backend, model.U.device),
            generator=self.generator, gram_reduce=model.gram_reduce)
        self._warned = set()

    @staticmethod
    def _check_model(model):
        if not isinstance(model, RevMLP):
            raise TypeError(
                f"ExactGN needs a revgn.RevMLP (its exact step inverts reversible couplings); got "
                f"{type(model).__name__}. For any other nn.Module use revgn.EGN.")

    # -- public API -----------------------------------------------------------------------------

    @torch.no_grad()
    def direction(self, x, y):
        """The parameter change one ``step(x, y)`` would apply, without applying it.

        Returns ``(deltas, result)``: one tensor per parameter of ``model.parameters()``, and
        the step's ``GNStepResult`` with ``applied=False`` (nothing was applied).
        """
        deltas = {id(p): torch.zeros_like(p) for p in self._params()}
        result = self._run(x, y, lambda update, A: self._accumulate(deltas, update, A),
                           commit=False)
        result.applied = False
        return [deltas[id(p)] for p in self._params()], result

    @torch.no_grad()
    def step(self, x=None, y=None, closure=None) -> GNStepResult:  # noqa: D417
        """One GN step on the batch ``(x, y)``; returns a ``GNStepResult``.

        No ``loss.backward()`` is needed: the step differentiates the model itself. Training
        loops that call ``optimizer.step(closure)`` work when the closure returns the batch,
        ``opt.step(lambda: (x, y))``.

        Each block's update is applied as soon as it is solved (no stored directions, one block's
        workspace alive at a time). Should a later block fail, the blocks already updated are
        restored by subtracting their update again, rebuilding ``A`` from the coupling's input.
        """
        x, y = step_batch(type(self).__name__, x, y, closure, self._params())
        applied: list[CouplingUpdate] = []

        def apply(update, A):
            self._apply_update(update, A, sign=1.0)
            applied.append(update)

        try:
            result = self._run(x, y, apply, commit=True)
        except Exception:  # a non-finite update, or any error after some blocks were updated
            self._undo(applied)
            raise
        if not result.applied:
            self._undo(applied)
        elif result.inversion_error > self.drift_tol and self._tighten_anchors(result):
            self._undo(applied)
            self.state[self._params()[0]]["step"] -= 1
            applied.clear()
            result = self._run(x, y, apply, commit=True)
            result.reanchored = True
        return result

    def _tighten_anchors(self, result) -> bool:
        """Choose a tighter anchor spacing after too much drift; False if none is tighter."""
        current = self.anchor_every or self.model.depth
        if current <= 1:
            return False
        # drift grows with the number of blocks inverted in a row: aim each stretch at the tolerance
        every = max(1, min(current - 1, int(current * self.drift_tol / result.inversion_error)))
        self._warn_once("drift", f"inversion drift {result.inversion_error:.2e} exceeds drift_tol="
                        f"{self.drift_tol:g}; the step was redone with the stream anchored every "
                        f"{every} blocks (anchor_every={every} from now on)")
        self.anchor_every = every
        return True

    def state_dict(self):
        """The optimizer state plus the generator behind ``noise`` and ``rsvd``, so that a
        loaded optimizer continues exactly like an uninterrupted one."""
        state = super().state_dict()
        state["generator"] = self.generator.get_state()
        state["anchor_every"] = self.anchor_every
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        generator = state_dict.pop("generator", None)
        self.anchor_every = state_dict.pop("anchor_every", self.anchor_every)
        super().load_state_dict(state_dict)
        if generator is not None:
            self.generator.set_state(generator)

    # -- the step ------------------------------------------------------------------------------

    def _params(self):
        return self.param_groups[0]["params"]

    def _group(self):
        return self.param_groups[0]

    def _scale(self) -> float:
        lr = self._group()["lr"]
        return lr / self.model.depth if self.step_scaling == "function" else lr

    def _prepare(self, x, y):
        model = self.model
        ref = model.U
        x = check_features(x, model.in_features, ref.dtype, ref.device)
        y = check_targets(y, x.shape[0], self.loss, model.num_classes, ref.dtype, ref.device,
                          LOSSES)
        return x, y

    @property
    def ops(self) -> OpTable:
        """The op table the steps run on, bound to ``backend`` on the model's device (bound
        again when the model moves)."""
        device = self.model.U.device
        if self.solver_config.ops.device != device:
            self.solver_config.ops = bind(self.backend, device)
        return self.solver_config.ops

    def _run(self, x, y, consume, commit: bool) -> GNStepResult:
        model = self.model
        x, y = self._prepare(x, y)
        ops = self.ops
        if self.tangent_mode == "analytic":
            X_L, anchors, top = forward_for_sweep(model, x, self.anchor_every)
        else:
            (X_L, anchors), top = model.stream_with_anchors(x, self.anchor_every), None
        logits = model.readout(X_L)
        if not all_finite(logits):
            return self._nonfinite(GNStepResult(loss=float("nan")), "the model's outputs are "
                                   "not finite at these parameters")
        loss = float(batch_loss(logits, y, self.loss))
        e = output_step(logits, y, self.loss, self.curvature, self.damping, ops)
        E = e @ model.U.t()  # the lift: U^T U = I, so E U = e
        result = GNStepResult(loss=loss, anchor_every=self.anchor_every)
        n = x.shape[0]
        self._warn_shape(n)
        drifts = []
        del logits
        sweep = gn_sweep(model, X_L, E, self.solver_config, self.tangent_mode, anchors, top, e)
        del top  # the sweep holds the top block's workspace until it is used
        for block_step in sweep:
            result.blocks.extend(block_step.reports)
            if block_step.drift is not None:
                drifts.append(block_step.drift)
            block = model.blocks[block_step.index]
            for coupling, sol, A in ((block.F, block_step.F, block_step.A_F),
                                     (block.G, block_step.G, block_step.A_G)):
                if not sol.finite:
                    return self._nonfinite(result, f"block {block_step.index} produced a "
                                           "non-finite solution")
                dW, db, Z = self._solution_update(sol, A)
                u = block_step.X2 if coupling is block.F else block_step.Y1
                consume(CouplingUpdate(coupling, u, Z, dW, db), A)
            X2 = block_step.X2
            del block_step
        # the bottom block rebuilds only the X2 half of the input: the drift is measured there
        result.inversion_error = max([relative_residual(X2, x[:, model.half:])] + drifts)
        result._order_blocks()
        self._warn_inexact(result)
        if commit:
            state = self.state[self._params()[0]]
            state["step"] = state.get("step", 0) + 1
        return result

    def _solution_update(self, sol, A):
        """``(dW, db, Z)``; the Gram route keeps ``Z`` (the update is ``Z^T A``) unless noise
        needs the explicit ``dW``."""
        if sol.Z is not None and not self.noise:
            return None, None, sol.Z
        dW, db = sol.parameter_update(A, self.ops)
        if self.noise:
            dW, db = self._add_noise(dW), (self._add_noise(db) if db is not None else None)
        if not self.model.all_finite(dW, db):
            raise NonFiniteStepError("a non-finite update was produced")
        return dW, db, None

    def _add_noise(self, D):
        rms = D.pow(2).mean().sqrt()
        xi = torch.randn(D.shape, generator=self.generator, dtype=D.dtype).to(D.device)
        return D + self.noise * rms * xi

    def _apply_update(self, update: CouplingUpdate, A, sign: float):
        """``theta <- (1 - lr wd) theta - scale D``; ``sign=-1`` undoes it."""
        group = self._group()
        decay = group["lr"] * group["weight_decay"]
        alpha = -sign * self._scale()
        coupling = update.coupling
        params = [coupling.W] + ([coupling.b] if coupling.b is not None else [])
        if decay and sign > 0:
            for p in params:
                p.mul_(1 - decay)
        if update.Z is not None:
            self.ops.jt_update_(coupling.W, coupling.b, A, update.Z, alpha)
        else:
            coupling.W.add_(update.dW, alpha=alpha)
            if coupling.b is not None:
                coupling.b.add_(update.db, alpha=alpha)
        if decay and sign < 0:
            for p in params:
                p.div_(1 - decay)

    def _undo(self, applied):
        for update in reversed(applied):
            A = update.coupling.activations(update.u) if update.Z is not None else None
            self._apply_update(update, A, sign=-1.0)

    def _accumulate(self, deltas, update: CouplingUpdate, A):
        dW, db = update.dW, update.db
        if update.Z is not None:
            dW, db = self.ops.jt_product(A, update.Z)
        group = self._group()
        decay = group["lr"] * group["weight_decay"]
        scale = self._scale()
        coupling = update.coupling
        deltas[id(coupling.W)] = -scale * dW - decay * coupling.W
        if coupling.b is not None:
            deltas[id(coupling.b)] = -scale * db - decay * coupling.b

    def _nonfinite(self, result: GNStepResult, why: str) -> GNStepResult:
        result._order_blocks()
        if self.on_nonfinite == "raise":
            raise NonFiniteStepError(f"{why}; the parameters were left unchanged "
                                     "(on_nonfinite='skip' reports instead of raising)")
        result.applied = False
        result.skipped_reason = why
        return result

    # -- reporting -----------------------------------------------------------------------------

    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _warn_shape(self, n: int):
        m = self.model.bottleneck + 1
        if n > m:
            self._warn_once("tall", f"batch size {n} exceeds the solve's column count {m} "
                            "(M + 1): the GN step is a least-squares fit, not exact")

    def _warn_inexact(self, result: GNStepResult):
        rank_short = [r for r in result.blocks if r.rank < r.rows and r.method != "transpose"]
        if rank_short:
            r = rank_short[0]
            self._warn_once("rank", f"block {r.block} coupling {r.coupling}: rank {r.rank} < "
                            f"batch {r.rows}; the step realizes only the projection of its "
                            f"target (pseudoinverse solution); see the step result's reports")

"""``EGN``: exact damped Gauss-Newton for any ``nn.Module`` through a batch-sized system
(Korbit et al., arXiv 2405.14402; DESIGN §4).

The objective is the mean loss ``L(w) = (1/b) sum_i l_i(f_i(w))`` (normalizations in
``revgn.egn.losses``). With ``J`` (bc x P) the Jacobian of the outputs, ``r = -dl/df`` (bc) and
``Q`` the block-diagonal per-sample output Hessians:

    grad L = -(1/b) J^T r,        G = (1/b) J^T Q J        (Gauss-Newton matrix of L)

and the Levenberg-Marquardt direction ``(G + lambda I) d = -grad L`` is, after multiplying by b,

    d = (J^T Q J + b lambda I_P)^-1 J^T r = J^T (Q J J^T + b lambda I_bc)^-1 r

(push-through identity: ``J^T (Q J J^T + mu I) = (J^T Q J + mu I) J^T``). So ``lambda`` is the
damping of the mean-loss curvature and ``b lambda`` enters the row system. The plain step is
``w <- w + lr d``. The bc x bc system is solved in symmetric form (``revgn.egn.rowsystem``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from revgn.backend import check_backend_name
from revgn.ops import bind
from revgn.egn import linesearch
from revgn.egn.input_checks import check_batch, check_outputs, check_targets
from revgn.egn.jacobian import JACOBIAN_MODES, resolve_path, row_jacobian
from revgn.egn.losses import EGN_LOSSES, hessian, mean_loss, output_model
from revgn.egn.rowsystem import row_coefficients
from revgn.exact_gn import NonFiniteStepError
from revgn.validation import check_choice, check_nonnegative, step_batch


@dataclass
class EGNResult:
    loss: float                      # batch loss before the step
    loss_after: float | None         # batch loss after, when evaluated (line search, damping)
    step_size: float                 # alpha applied to the direction (0.0: no move)
    damping: float                   # lambda used for this step
    trials: int                      # loss evaluations made by the line search
    jacobian: str                    # "structured" or "explicit"
    predicted_reduction: float | None = None  # -(alpha g^T d + alpha^2/2 d^T G d)
    actual_reduction: float | None = None     # loss - loss_after
    applied: bool = True             # whether the parameters moved
    skipped_reason: str | None = None

    @property
    def rho(self) -> float | None:
        """``actual / predicted`` reduction; None when either is missing or predicted is 0."""
        if self.actual_reduction is None or not self.predicted_reduction:
            return None
        return self.actual_reduction / self.predicted_reduction


class EGN(torch.optim.Optimizer):
    """Exact row-space Gauss-Newton: ``w <- w + alpha d``, ``d`` as in the module docstring.

    Args:
        model: a module mapping a batch ``x`` to outputs ``(b, c)``; its trainable parameters
            are optimized.
        lr: the step size; with ``line_search`` the first trial step size.
        loss: ``"mse"`` (float targets (b, c)), ``"cross_entropy"`` (int64 labels (b,)) or
            ``"bce"`` (float targets in [0, 1], (b, c); the model outputs logits).
        damping: lambda >= 0, the damping of the mean-loss curvature (the row system adds
            ``b lambda I``); 0 gives the minimum-norm Gauss-Newton direction.
        line_search: stochastic Armijo on the same batch: ``alpha = min(grow alpha_prev,
            alpha_max)`` (``min(lr, alpha_max)`` at first), times ``shrink`` while
            ``L(w + alpha d) > L(w) + armijo_c alpha g^T d``, at most ``max_trials`` tries; no
            move when none passes (reported) or when ``g^T d >= 0``.
        momentum: beta of the bias-corrected EMA of directions, ``m_t = beta m_(t-1) +
            (1 - beta) d_t``, step along ``m_t / (1 - beta^t)`` (0 disables it).
        adaptive_damping: after each step ``rho = actual / predicted`` reduction (predicted by
            the undamped GN quadratic model); lambda is multiplied by ``damping_increase`` when
            ``rho < 0.25`` or no step was taken, by ``damping_decrease`` when ``rho > 0.75``,
            and clamped to ``damping_range``.
        jacobian: ``"auto"`` (structured when the model is a Linear stack, else explicit),
            ``"structured"`` or ``"explicit"``.
        backend: implementation of the Gram, ``J^T u`` and solve ops (``revgn.backend``).
        on_nonfinite: ``"raise"`` (``NonFiniteStepError``) or ``"skip"`` (result.applied False)
            when the direction is not finite; the parameters never receive it.
    """

    def __init__(self, model, lr: float = 1.0, loss: str = "mse", damping: float = 1.0,
                 line_search: bool = False, momentum: float = 0.0,
                 adaptive_damping: bool = False, jacobian: str = "auto",
                 backend: str = "auto", armijo_c: float = 0.1, shrink: float = 0.8,
                 grow: float = 1.5, alpha_max: float = 1.0, max_trials: int = 15,
                 damping_range: tuple[float, float] = (1e-8, 1e8),
                 damping_increase: float = 2.0, damping_decrease: float = 0.5,
                 on_nonfinite: str = "raise"):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"EGN needs the nn.Module itself (not its parameters); got "
                            f"{type(model).__name__}")
        check_choice(loss, "loss", EGN_LOSSES)
        check_choice(jacobian, "jacobian", JACOBIAN_MODES)
        check_choice(on_nonfinite, "on_nonfinite", ("raise", "skip"))
        check_backend_name(backend)
        for name, value in (("lr", lr), ("damping", damping), ("armijo_c", armijo_c),
                            ("alpha_max", alpha_max)):
            check_nonnegative(value, name)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        if not (0 < shrink < 1 and grow >= 1 and int(max_trials) >= 1):
            raise ValueError(f"line search needs 0 < shrink < 1, grow >= 1, max_trials >= 1; got "
                             f"shrink={shrink}, grow={grow}, max_trials={max_trials}")
        lo, hi = damping_range
        if not 0 <= lo <= hi:
            raise ValueError(f"damping_range must satisfy 0 <= low <= high; got {damping_range}")
        if not (damping_increase >= 1 and 0 < damping_decrease <= 1):
            raise ValueError("adaptive damping needs damping_increase >= 1 and "
                             "0 < damping_decrease <= 1")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        super().__init__(params, dict(lr=lr, damping=damping))
        self.model = model
        self.loss = loss
        self.line_search = line_search
        self.momentum = momentum
        self.adaptive_damping = adaptive_damping
        self.jacobian = jacobian
        self.backend = backend
        self._tables = {}
        self.armijo_c, self.shrink, self.grow = armijo_c, shrink, grow
        self.alpha_max, self.max_trials = alpha_max, int(max_trials)
        self.damping_range = (lo, hi)
        self.damping_increase, self.damping_decrease = damping_increase, damping_decrease
        self.on_nonfinite = on_nonfinite

    # -- public API -----------------------------------------------------------------------------

    def direction(self, x, y) -> list[torch.Tensor]:
        """The plain damped GN direction ``d`` at the current damping (no momentum, no step
        size), one tensor per trainable parameter, in ``model.parameters()`` order."""
        *_, d = self._solve(check_batch(x, self.model), y)
        return [d[p] for p in self._params()]

    def jacobian_path(self, x) -> str:
        """``"structured"`` or ``"explicit"``: the path ``step(x, ...)`` takes."""
        return resolve_path(self.model, check_batch(x, self.model), self.jacobian)

    def step(self, x=None, y=None, closure=None) -> EGNResult:  # noqa: D417
        """One step on the batch ``(x, y)``; see the class docstring. No ``loss.backward()`` is
        needed; ``opt.step(closure)`` works with a closure that returns the batch ``(x, y)``."""
        x, y = step_batch(type(self).__name__, x, y, closure, self._params())
        x = check_batch(x, self.model)
        group = self.param_groups[0]
        lam = float(group["damping"])
        jac, f, y, om, d = self._solve(x, y)
        loss0 = self._batch_loss(f, y)
        result = EGNResult(loss=loss0, loss_after=None, step_size=0.0, damping=lam, trials=0,
                           jacobian=jac.path)
        if not all(bool(torch.isfinite(t).all()) for t in d.values()):
            return self._nonfinite(result, "the direction is not finite")

        state = self.state[self._params()[0]]  # step-wide scalars live with the first parameter
        step_dir = self._momentum_direction(d, state)
        slope, curvature = self._quadratic_model(x, f, om, step_dir)

        def loss_at(alpha):
            return self._loss_at(x, y, step_dir, alpha)

        loss_new = None
        if self.line_search:
            alpha = linesearch.first_trial(state.get("alpha"), group["lr"], self.grow,
                                           self.alpha_max)
            if slope < 0:
                search = linesearch.armijo(loss_at, loss0, slope, alpha, self.armijo_c,
                                           self.shrink, self.max_trials)
                result.trials = search.trials
                state["alpha"] = search.alpha if search.accepted else search.last_tried
                alpha, loss_new = search.alpha, search.loss
                if not search.accepted:
                    result.skipped_reason = (f"no step size passed the Armijo test in "
                                             f"{search.trials} trials")
            else:
                alpha, loss_new = 0.0, loss0
                result.skipped_reason = f"not a descent direction (g^T d = {slope:.3g} >= 0)"
        else:
            alpha = float(group["lr"])
            if self.adaptive_damping:
                loss_new = loss_at(alpha)
        if alpha:
            with torch.no_grad():
                for p in self._params():
                    p.add_(step_dir[p].to(p.dtype), alpha=alpha)
        result.applied = alpha != 0
        result.step_size = alpha
        result.loss_after = loss_new
        result.predicted_reduction = -(alpha * slope + 0.5 * alpha * alpha * curvature)
        if loss_new is not None:
            result.actual_reduction = loss0 - loss_new
        if self.adaptive_damping:
            lo, hi = self.damping_range
            group["damping"] = linesearch.adapt_damping(
                lam, result.rho, self.damping_increase, self.damping_decrease, lo, hi)
        state["step"] = state.get("step", 0) + 1
        return result

    # -- pieces ---------------------------------------------------------------------------------

    def _params(self):
        return self.param_groups[0]["params"]

    def _ops(self, device):
        """The op table of ``backend`` on ``device``, bound once per device."""
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = bind(self.backend, device)
        return self._tables[device]

    def _solve(self, x, y):
        """Forward, validation (before any state changes), then ``d = J^T u``."""
        ops = self._ops(x.device)
        jac = row_jacobian(self.model, x, self.jacobian, ops)
        f = jac.outputs.detach()
        check_outputs(f, x.shape[0])
        y = check_targets(f, y, self.loss, EGN_LOSSES)
        om = output_model(f, y, self.loss)
        gram = jac.gram()
        u, _ = row_coefficients(gram, om, self._row_damping(gram, f.shape[0]), ops)
        d = {p: t.detach() for p, t in jac.transpose_apply(u.to(f.dtype)).items()}
        for p in self._params():  # a parameter the outputs do not depend on does not move
            d.setdefault(p, torch.zeros_like(p))
        return jac, f, y, om, d

    def _row_damping(self, gram, b: int) -> float:
        """``mu = b lambda``: the damping as it enters the row system ``(J J^T + mu I) u``
        (``lambda`` is per sample). ``gram`` is that step's ``J J^T``, for a subclass whose
        damping depends on it."""
        return b * float(self.param_groups[0]["damping"])

    def _batch_loss(self, f, y) -> float:
        # float64: the Armijo test compares losses that differ by c alpha g^T d, often tiny
        y = y.to(torch.float64) if y.is_floating_point() else y
        return float(mean_loss(f.to(torch.float64), y, self.loss))

    def _quadratic_model(self, x, f, om, direction):
        """``(g^T d, d^T G d)`` for the mean loss: ``-(1/b) r . Jd`` and ``(1/b) Jd . Q Jd``."""
        Jd = self._jvp(x, direction).to(torch.float64)
        b = f.shape[0]
        slope = -float((om.r * Jd).sum()) / b
        Q = hessian(f.to(torch.float64), self.loss)
        curvature = float(torch.einsum("ic,icd,id->", Jd, Q, Jd)) / b
        return slope, curvature

    def _momentum_direction(self, d, state):
        if not self.momentum:
            return d
        beta = self.momentum
        t = state.get("step", 0) + 1
        out = {}
        for p, dp in d.items():
            buf = self.state[p].get("momentum_buffer")
            # out of place: a loaded state_dict may share its tensors with the one it came from
            buf = (1 - beta) * dp if buf is None else beta * buf + (1 - beta) * dp
            self.state[p]["momentum_buffer"] = buf
            out[p] = buf / (1 - beta ** t)
        return out

    def _named(self, direction=None, alpha=0.0):
        """Every parameter by name, the trainable ones moved by ``alpha * direction``."""
        named = {n: p.detach() for n, p in self.model.named_parameters()}
        if direction is not None:
            names = {p: n for n, p in self.model.named_parameters()}
            for p, dp in direction.items():
                named[names[p]] = named[names[p]] + alpha * dp.to(p.dtype)
        return named

    def _loss_at(self, x, y, direction, alpha) -> float:
        with torch.no_grad():
            f = torch.func.functional_call(self.model, self._named(direction, alpha), (x,))
        return self._batch_loss(f, y)

    def _outputs_fn(self, x, params):
        """``(f, primals)``: ``f(*values)`` is the model's output on ``x`` with ``params`` set to
        ``values`` and every other parameter at its current value; ``primals`` are the current
        values of ``params``."""
        names = {p: n for n, p in self.model.named_parameters()}
        keys = [names[p] for p in params]
        base = self._named()

        def f(*values):
            return torch.func.functional_call(self.model, {**base, **dict(zip(keys, values))},
                                              (x,))
        return f, tuple(base[k] for k in keys)

    def _jvp(self, x, direction):
        f, primals = self._outputs_fn(x, list(direction))
        with torch.no_grad():
            return torch.func.jvp(f, primals, tuple(direction[p].to(v.dtype)
                                                    for p, v in zip(direction, primals)))[1]

    def _nonfinite(self, result, why):
        if self.on_nonfinite == "raise":
            raise NonFiniteStepError(f"{why}; the parameters were left unchanged (lower lr, "
                                     f"raise damping, or pass on_nonfinite='skip')")
        result.applied, result.skipped_reason = False, why
        return result

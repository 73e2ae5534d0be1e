"""``EGN``: exact damped Gauss-Newton for any ``nn.Module`` through a batch-sized system
(Korbit et al., arXiv 2405.14402; DESIGN §4).

For the mean loss ``L = (1/b) sum_i l_i``, the Levenberg-Marquardt direction is

    d = (J^T Q J + b lambda I)^-1 J^T r  =  J^T (Q J J^T + b lambda I_bc)^-1 r

(push-through identity). With the exact factor ``Q = F F^T`` and ``r = F t``
(``revgn.egn.losses``) it is solved in symmetric form: ``J~ = F^T J``,

    (J~ J~^T + b lambda I) v = t,      d = J^T F v,

an SPD system of size ``b c`` (Cholesky; the pseudoinverse when it is singular).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from revgn.egn.jacobian import JACOBIAN_MODES, row_jacobian
from revgn.egn.losses import EGN_LOSSES, hessian, mean_loss, output_model
from revgn.exact_gn import NonFiniteStepError
from revgn.ops import gram_solve
from revgn.validation import check_choice, check_finite_tensor, check_nonnegative


@dataclass
class EGNResult:
    loss: float                      # batch loss before the step
    loss_after: float | None         # after, when it was evaluated (line search, damping)
    step_size: float                 # alpha actually applied (0.0: no move)
    damping: float                   # lambda used for this step
    trials: int                      # loss evaluations by the line search
    jacobian: str                    # "structured" or "explicit"
    predicted_reduction: float | None = None
    actual_reduction: float | None = None
    applied: bool = True
    skipped_reason: str | None = None

    @property
    def rho(self) -> float | None:
        if self.actual_reduction is None or not self.predicted_reduction:
            return None
        return self.actual_reduction / self.predicted_reduction


class EGN(torch.optim.Optimizer):
    """Exact row-space Gauss-Newton (see the module docstring).

    Args:
        model: any module mapping a batch to outputs ``(b, c)``.
        lr: the step size (the first trial step with ``line_search``).
        loss: ``"mse"`` (float targets (b, c)), ``"cross_entropy"`` (int64 labels (b,)) or
            ``"bce"`` (targets in [0, 1], (b, c); logits out).
        damping: lambda (relative to the mean loss: the system adds ``b lambda I``).
        line_search: stochastic Armijo on the same batch: ``alpha = min(grow alpha_prev,
            alpha_max)``, shrunk by ``shrink`` while ``L(w + alpha d) > L(w) + c alpha g^T d``,
            at most ``max_trials`` tries; no move when none passes.
        momentum: beta of the bias-corrected EMA of directions (0 disables it).
        adaptive_damping: ``rho = actual / predicted`` reduction (GN quadratic model); lambda is
            multiplied by ``damping_increase`` when ``rho < 0.25`` and by ``damping_decrease``
            when ``rho > 0.75``, within ``damping_range``.
        jacobian: ``"auto"`` (structured when the model allows, else explicit), ``"structured"``
            or ``"explicit"``.
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
            raise TypeError(f"EGN needs an nn.Module; got {type(model).__name__}")
        check_choice(loss, "loss", EGN_LOSSES)
        check_choice(jacobian, "jacobian", JACOBIAN_MODES)
        check_choice(on_nonfinite, "on_nonfinite", ("raise", "skip"))
        for name, value in (("lr", lr), ("damping", damping), ("armijo_c", armijo_c),
                            ("alpha_max", alpha_max)):
            check_nonnegative(value, name)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        if not 0 < shrink < 1 or grow < 1 or max_trials < 1:
            raise ValueError("line search needs 0 < shrink < 1, grow >= 1, max_trials >= 1")
        lo, hi = damping_range
        if not 0 <= lo <= hi:
            raise ValueError(f"damping_range must satisfy 0 <= low <= high; got {damping_range}")
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
        self.armijo_c, self.shrink, self.grow = armijo_c, shrink, grow
        self.alpha_max, self.max_trials = alpha_max, max_trials
        self.damping_range = (lo, hi)
        self.damping_increase, self.damping_decrease = damping_increase, damping_decrease
        self.on_nonfinite = on_nonfinite

    # -- public API -----------------------------------------------------------------------------

    def direction(self, x, y):
        """The plain damped GN direction ``d`` (no momentum, no step size) and its Jacobian path:
        ``(list of tensors aligned with the parameters, path)``."""
        x = self._check_x(x)
        d, _, _, path = self._direction(x, y)
        return [d[p] for p in self._params()], path

    def step(self, x, y) -> EGNResult:  # noqa: D401 - signature differs from Optimizer.step
        x = self._check_x(x)
        group = self.param_groups[0]
        lam = float(group["damping"])
        d, f, y, path = self._direction(x, y)
        loss0 = float(mean_loss(f, y, self.loss))
        result = EGNResult(loss=loss0, loss_after=None, step_size=0.0, damping=lam, trials=0,
                           jacobian=path)
        if not all(bool(torch.isfinite(t).all()) for t in d.values()):
            return self._nonfinite(result, "the direction is not finite")
        state = self.state[self._params()[0]]
        step_dir = self._momentum_direction(d, state)
        Jd = self._jvp(x, step_dir)
        # g^T d with g = -(1/b) J^T r: the directional derivative of the mean loss
        slope = -float((self._residual(f, y) * Jd).sum()) / f.shape[0]
        curvature = float(torch.einsum("ic,icd,id->", Jd, hessian(f, self.loss), Jd)) / f.shape[0]

        def predicted(alpha):
            return -(alpha * slope + 0.5 * alpha * alpha * curvature)

        if self.line_search:
            alpha = min(self.grow * state.get("alpha", group["lr"]), self.alpha_max)
            accepted, loss_new = False, None
            for _ in range(self.max_trials):
                result.trials += 1
                loss_new = self._loss_at(x, y, step_dir, alpha)
                if loss_new <= loss0 + self.armijo_c * alpha * slope:
                    accepted = True
                    break
                alpha *= self.shrink
            if not accepted:
                alpha, loss_new = 0.0, loss0
            state["alpha"] = alpha if accepted else state.get("alpha", group["lr"])
        else:
            alpha = group["lr"]
            loss_new = self._loss_at(x, y, step_dir, alpha) if self.adaptive_damping else None
        if alpha:
            with torch.no_grad():
                for p in self._params():
                    p.add_(step_dir[p], alpha=alpha)
        result.step_size = alpha
        result.loss_after = loss_new
        result.predicted_reduction = predicted(alpha)
        if loss_new is not None:
            result.actual_reduction = loss0 - loss_new
        if self.adaptive_damping and result.rho is not None:
            group["damping"] = self._adapted_damping(lam, result.rho)
        state["step"] = state.get("step", 0) + 1
        return result

    # -- pieces ---------------------------------------------------------------------------------

    def _params(self):
        return self.param_groups[0]["params"]

    def _check_x(self, x):
        check_finite_tensor(x, "x")
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError("empty batch: x has no examples")
        return x

    def _check_targets(self, f, y):
        b, c = f.shape
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor; got {type(y).__name__}")
        if self.loss == "cross_entropy":
            if y.dtype != torch.int64:
                raise TypeError(f"cross_entropy targets must be int64 class indices; got {y.dtype}")
            if y.shape != (b,):
                raise ValueError(f"y must have shape ({b},) to match x; got {tuple(y.shape)}")
            if int(y.min()) < 0 or int(y.max()) >= c:
                raise ValueError(f"labels must lie in [0, {c}); got [{int(y.min())}, "
                                 f"{int(y.max())}]")
            return y.to(f.device)
        if not y.is_floating_point():
            raise TypeError(f"{self.loss} targets must be floating point; got {y.dtype}")
        if y.shape != (b, c):
            raise ValueError(f"{self.loss} targets must have shape ({b}, {c}) like the model's "
                             f"outputs; got {tuple(y.shape)}")
        check_finite_tensor(y, "y")
        if self.loss == "bce" and (bool((y < 0).any()) or bool((y > 1).any())):
            raise ValueError("bce targets must lie in [0, 1]")
        return y.to(f.device, f.dtype)

    def _direction(self, x, y):
        jac = row_jacobian(self.model, x, self.jacobian)
        f = jac.outputs.detach()
        if f.dim() != 2:
            raise ValueError(f"the model must map a batch to outputs (b, c); got {tuple(f.shape)}")
        y = self._check_targets(f, y)
        with torch.no_grad():
            om = output_model(f, y, self.loss)
            b, c = f.shape
            JJ = jac.gram().detach().to(torch.float64)
            Fm = om.factor.to(torch.float64)
            K = torch.einsum("iac,iajb,jbd->icjd", Fm, JJ, Fm).reshape(b * c, b * c)
            lam = b * float(self.param_groups[0]["damping"])
            sol = gram_solve(K, om.t.to(torch.float64).reshape(b * c, 1), "damped",
                             damping=lam, backend=self.backend)
            u = torch.einsum("icd,id->ic", Fm, sol.Z.reshape(b, c)).to(f.dtype)
            d = {p: t.detach() for p, t in jac.transpose_apply(u).items()}
        return d, f, y, jac.path

    def _residual(self, f, y):
        return output_model(f, y, self.loss).r

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

    def _functional(self, shift=None, alpha=0.0):
        names = {p: n for n, p in self.model.named_parameters()}
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        if shift is not None:
            for p, dp in shift.items():
                params[names[p]] = params[names[p]] + alpha * dp
        return params

    def _loss_at(self, x, y, direction, alpha) -> float:
        with torch.no_grad():
            f = torch.func.functional_call(self.model, self._functional(direction, alpha), (x,))
            return float(mean_loss(f, y, self.loss))

    def _jvp(self, x, direction):
        names = {p: n for n, p in self.model.named_parameters()}
        keys = [names[p] for p in direction]
        base = self._functional()

        def f(*values):
            params = dict(base)
            params.update(zip(keys, values))
            return torch.func.functional_call(self.model, params, (x,))
        with torch.no_grad():
            return torch.func.jvp(f, tuple(base[k] for k in keys),
                                  tuple(direction[p] for p in direction))[1]

    def _adapted_damping(self, lam, rho):
        lo, hi = self.damping_range
        if rho < 0.25:
            lam *= self.damping_increase
        elif rho > 0.75:
            lam *= self.damping_decrease
        return min(max(lam, lo), hi)

    def _nonfinite(self, result, why):
        if self.on_nonfinite == "raise":
            raise NonFiniteStepError(f"{why}; the parameters were left unchanged")
        result.applied, result.skipped_reason = False, why
        return result

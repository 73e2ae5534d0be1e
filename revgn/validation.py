"""Input checks run before any state changes: bad input raises and leaves parameters untouched."""
from __future__ import annotations

import torch

STEP_USAGE = ("{owner} computes its step from the batch itself: call opt.step(x, y) with the "
              "inputs x and the targets y; no loss.backward() (and no zero_grad()) is needed. "
              "A training loop that calls opt.step(closure) works when the closure returns the "
              "batch: opt.step(lambda: (x, y)).")


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}" + (" (a loss?)" if value.dim() == 0
                                                            else "")
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def step_batch(owner: str, x, y, closure, params) -> tuple:
    """The batch ``(x, y)`` of ``owner.step(x, y)`` or ``owner.step(closure)``.

    ``torch.optim`` habits (``step()`` after ``loss.backward()``, a closure that returns a loss)
    get a message that shows the intended call instead of Python's missing-argument error.
    """
    usage = STEP_USAGE.format(owner=owner)
    if closure is None and y is None and callable(x) and not isinstance(x, torch.Tensor):
        closure, x = x, None
    if closure is not None:
        if x is not None or y is not None:
            raise TypeError(f"{owner}.step: pass the batch (x, y) or a closure that returns it, "
                            "not both")
        with torch.enable_grad():  # as torch.optim calls closures
            batch = closure()
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"{owner}.step(closure): the closure must return the batch (x, y); "
                            f"it returned {_describe(batch)}. {usage}")
        return tuple(batch)
    if x is None or y is None:
        called = "without a batch" if x is None else "without the targets y"
        habit = ""
        if any(p.grad is not None for p in params):
            habit = (" The parameters hold gradients, as after loss.backward(): this optimizer "
                     "does not read them.")
        raise TypeError(f"{owner}.step() was called {called}.{habit} {usage}")
    return x, y


def check_same_device(t: torch.Tensor, name: str, device: torch.device) -> None:
    if t.device != torch.device(device):
        raise TypeError(f"{name} is on {t.device} but the model is on {device}: move the batch "
                        f"({name}.to('{device}')) or the model")


def check_same_dtype(t: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise TypeError(f"{name} is {t.dtype} but the model is {dtype}: convert the batch "
                        f"({name}.to({dtype})) or the model (model.to({t.dtype}))")


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of the floating tensor ``t`` is finite.

    One sum settles the common case: a NaN or an Inf anywhere makes the sum non-finite, so a
    finite sum proves every entry finite without ``isfinite``'s elementwise passes (an ``abs``,
    two comparisons and a copy of ``t``). Only a sum that is not finite, a real NaN or Inf or an
    overflow of finite entries, pays for the entrywise check.
    """
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_finite_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.is_floating_point() and not all_finite(t):
        raise ValueError(f"{name} contains NaN or Inf; clean the batch before the step")


def check_features(x: torch.Tensor, in_features: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """Flatten ``x`` to ``(n, in_features)``; it must already have the model's dtype and device
    (a silent conversion would hide, say, unnormalized uint8 pixels or a float32 pipeline
    feeding a float64 model)."""
    check_finite_tensor(x, "x")
    check_same_dtype(x, "x", dtype)
    check_same_device(x, "x", device)
    if x.dim() < 2:
        raise ValueError(f"x must be batched, shape (n, ...); got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("empty batch: x has 0 examples")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != in_features:
        raise ValueError(f"x has {flat.shape[1]} features per example after flattening; the "
                         f"model expects {in_features}")
    return flat


def check_targets(y, n: int, loss: str, num_outputs: int, dtype: torch.dtype,
                  device: torch.device, losses=("cross_entropy", "mse")) -> torch.Tensor:
    """Targets for ``n`` outputs of width ``num_outputs``: int64 class indices (n,) in
    [0, num_outputs) for ``cross_entropy``; float (n, num_outputs) in ``dtype`` for ``mse``, and
    in [0, 1] for ``bce``; on ``device`` in every case. ``losses``: those the optimizer accepts,
    which the hints name."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor; got {type(y).__name__}")
    if loss == "cross_entropy":
        if y.dtype != torch.int64:
            soft = [f"loss={name!r}" for name in losses if name != "cross_entropy"]
            hint = f"; for soft targets use {' or '.join(soft)}" if soft else ""
            raise TypeError(f"cross_entropy targets must be int64 class indices of shape ({n},); "
                            f"got dtype {y.dtype} (use y.long(){hint})")
        check_same_device(y, "y", device)
        if y.dim() != 1 or y.shape[0] != n:
            raise ValueError(f"cross_entropy targets must have shape ({n},) to match the batch; "
                             f"got {tuple(y.shape)}")
        if n and (int(y.min()) < 0 or int(y.max()) >= num_outputs):
            raise ValueError(f"class labels must lie in [0, {num_outputs}) for a model with "
                             f"{num_outputs} outputs; got range [{int(y.min())}, {int(y.max())}]")
        return y
    if not y.is_floating_point():
        raise TypeError(f"{loss} targets must be floating point of shape ({n}, {num_outputs}); "
                        f"got dtype {y.dtype} (use y.to({dtype}))")
    if y.shape != (n, num_outputs):
        raise ValueError(f"{loss} targets must have shape ({n}, {num_outputs}) like the model's "
                         f"outputs; got {tuple(y.shape)}")
    check_finite_tensor(y, "y")
    check_same_dtype(y, "y", dtype)
    check_same_device(y, "y", device)
    if loss == "bce" and (bool((y < 0).any()) or bool((y > 1).any())):
        raise ValueError(f"bce targets must lie in [0, 1]; got range [{float(y.min())}, "
                         f"{float(y.max())}] (the model should output logits, the targets "
                         f"probabilities)")
    return y


def check_choice(value, name: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {tuple(choices)}")


def check_nonnegative(value, name: str) -> None:
    if not isinstance(value, (int, float)) or value != value or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")

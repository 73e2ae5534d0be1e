"""Input checks run before any state changes: bad input raises and leaves parameters untouched."""
from __future__ import annotations

import torch


def check_finite_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf; clean the batch before the step")


def check_features(x: torch.Tensor, in_features: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """Flatten ``x`` to ``(n, in_features)`` in the model's dtype and device."""
    check_finite_tensor(x, "x")
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16,
                                                  torch.int32, torch.int64)):
        raise TypeError(f"x must be a real tensor; got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must be batched, shape (n, ...); got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("empty batch: x has 0 examples")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != in_features:
        raise ValueError(f"x has {flat.shape[1]} features per example after flattening; the "
                         f"model expects {in_features}")
    return flat.to(device=device, dtype=dtype)


def check_targets(y, n: int, loss: str, num_outputs: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """Targets for ``n`` outputs of width ``num_outputs``: int64 class indices (n,) in
    [0, num_outputs) for ``cross_entropy``; float (n, num_outputs) for ``mse``, and in [0, 1]
    for ``bce``. Returns ``y`` on ``device`` (floats in ``dtype``)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor; got {type(y).__name__}")
    if loss == "cross_entropy":
        if y.dtype != torch.int64:
            raise TypeError(f"cross_entropy targets must be int64 class indices of shape ({n},); "
                            f"got dtype {y.dtype} (use y.long(); for soft targets use "
                            f"loss='mse' or 'bce')")
        if y.dim() != 1 or y.shape[0] != n:
            raise ValueError(f"cross_entropy targets must have shape ({n},) to match the batch; "
                             f"got {tuple(y.shape)}")
        if n and (int(y.min()) < 0 or int(y.max()) >= num_outputs):
            raise ValueError(f"class labels must lie in [0, {num_outputs}) for a model with "
                             f"{num_outputs} outputs; got range [{int(y.min())}, {int(y.max())}]")
        return y.to(device)
    if not y.is_floating_point():
        raise TypeError(f"{loss} targets must be floating point of shape ({n}, {num_outputs}); "
                        f"got dtype {y.dtype} (use y.float())")
    if y.shape != (n, num_outputs):
        raise ValueError(f"{loss} targets must have shape ({n}, {num_outputs}) like the model's "
                         f"outputs; got {tuple(y.shape)}")
    check_finite_tensor(y, "y")
    if loss == "bce" and (bool((y < 0).any()) or bool((y > 1).any())):
        raise ValueError(f"bce targets must lie in [0, 1]; got range [{float(y.min())}, "
                         f"{float(y.max())}] (the model should output logits, the targets "
                         f"probabilities)")
    return y.to(device=device, dtype=dtype)


def check_choice(value, name: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {tuple(choices)}")


def check_nonnegative(value, name: str) -> None:
    if not isinstance(value, (int, float)) or value != value or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")

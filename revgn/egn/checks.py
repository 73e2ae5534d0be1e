"""Input checks for EGN. Each runs before the optimizer changes anything, so a bad batch raises
and leaves the parameters and the optimizer state bit-identical."""
from __future__ import annotations

import torch

from revgn.validation import check_finite_tensor


def check_batch(x) -> torch.Tensor:
    check_finite_tensor(x, "x")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"empty batch: x has shape {tuple(x.shape)}; pass at least one example "
                         f"along dimension 0")
    return x


def check_outputs(f: torch.Tensor, b: int) -> None:
    if f.dim() != 2 or f.shape[0] != b:
        raise ValueError(f"the model must map a batch of {b} examples to outputs of shape "
                         f"({b}, c); it returned {tuple(f.shape)} (flatten or squeeze the "
                         f"model's output)")


def check_targets(f: torch.Tensor, y, loss: str) -> torch.Tensor:
    """Targets for outputs ``f`` (b, c): int64 class indices (b,) in [0, c) for cross_entropy,
    float (b, c) for mse, float (b, c) in [0, 1] for bce. Returns ``y`` on ``f``'s device."""
    b, c = f.shape
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor; got {type(y).__name__}")
    if loss == "cross_entropy":
        if y.dtype != torch.int64:
            raise TypeError(f"cross_entropy targets must be int64 class indices of shape ({b},); "
                            f"got dtype {y.dtype} (use y.long(); for soft targets use "
                            f"loss='mse' or 'bce')")
        if y.shape != (b,):
            raise ValueError(f"cross_entropy targets must have shape ({b},) to match the batch; "
                             f"got {tuple(y.shape)}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= c:
            raise ValueError(f"class labels must lie in [0, {c}) for a model with {c} outputs; "
                             f"got range [{lo}, {hi}]")
        return y.to(f.device)
    if not y.is_floating_point():
        raise TypeError(f"{loss} targets must be floating point of shape ({b}, {c}); got dtype "
                        f"{y.dtype} (use y.float())")
    if y.shape != (b, c):
        raise ValueError(f"{loss} targets must have shape ({b}, {c}) like the model's outputs; "
                         f"got {tuple(y.shape)}")
    check_finite_tensor(y, "y")
    if loss == "bce" and (bool((y < 0).any()) or bool((y > 1).any())):
        raise ValueError(f"bce targets must lie in [0, 1]; got range [{float(y.min())}, "
                         f"{float(y.max())}] (the model should output logits, the targets "
                         f"probabilities)")
    return y.to(f.device, f.dtype)

"""Input checks for EGN. Each runs before the optimizer changes anything, so a bad batch raises
and leaves the parameters and the optimizer state bit-identical."""
from __future__ import annotations

import torch

from revgn.validation import check_finite_tensor
from revgn.validation import check_targets as validate_targets


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
    """Targets for outputs ``f`` (b, c); see ``revgn.validation.check_targets``."""
    b, c = f.shape
    return validate_targets(y, b, loss, c, f.dtype, f.device)

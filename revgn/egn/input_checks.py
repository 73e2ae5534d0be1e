"""Input checks for EGN. Each runs before the optimizer changes anything, so a bad batch raises
and leaves the parameters and the optimizer state bit-identical."""
from __future__ import annotations

import torch

from revgn.validation import check_finite_tensor, check_same_device, check_same_dtype
from revgn.validation import check_targets as validate_targets


def check_batch(x, model=None) -> torch.Tensor:
    """``x`` must be on the device of ``model``'s parameters and, when floating point, in their
    dtype; integer inputs (indices for an embedding) pass as they are."""
    check_finite_tensor(x, "x")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"empty batch: x has shape {tuple(x.shape)}; pass at least one example "
                         f"along dimension 0")
    ref = _reference_parameter(model)
    if ref is not None:
        if x.is_floating_point():
            check_same_dtype(x, "x", ref.dtype)
        check_same_device(x, "x", ref.device)
    return x


def _reference_parameter(model):
    if model is None:
        return None
    params = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
    return params[0] if params else None


def check_outputs(f: torch.Tensor, b: int) -> None:
    if f.dim() != 2 or f.shape[0] != b:
        raise ValueError(f"the model must map a batch of {b} examples to outputs of shape "
                         f"({b}, c); it returned {tuple(f.shape)} (flatten or squeeze the "
                         f"model's output)")


def check_targets(f: torch.Tensor, y, loss: str, losses) -> torch.Tensor:
    """Targets for outputs ``f`` (b, c); see ``revgn.validation.check_targets``."""
    b, c = f.shape
    return validate_targets(y, b, loss, c, f.dtype, f.device, losses)

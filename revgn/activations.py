"""Elementwise activations with their derivatives: the one table of activations.

The GN sweep pushes tangents through ``s(u C)``, so every activation needs ``s'`` in closed form:
the tangent of ``s(P)`` along ``dP`` is ``s'(P) * dP``. The fast backends know the activations by
``Activation.code``: the Triton kernels read the codes from here, the C++ extension's
``csrc/activation.h`` spells the same codes and slope (``tests/test_op_table.py`` holds them to
this table).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

LEAKY_RELU_SLOPE = 0.01


@dataclass(frozen=True)
class Activation:
    name: str
    #: the integer the kernels switch on (Triton's ACT constexpr, the C++ enum)
    code: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]
    #: s(u C) is linear in u, so rank(A) <= h: used to predict rank deficiency.
    linear: bool = False
    #: in-place variant (returns its argument), for large workspaces
    inplace: Callable[[torch.Tensor], torch.Tensor] | None = None

    def mul_grad_(self, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``t *= s'(p)`` in place: the tangent through the activation."""
        if self.name == "relu":
            return t.mul_(p > 0)  # a byte mask instead of a float derivative
        if self.name == "identity":
            return t
        return t.mul_(self.grad(p))

    def fn_(self, p: torch.Tensor) -> torch.Tensor:
        if self.inplace is not None:
            return self.inplace(p)
        return p.copy_(self.fn(p))


def _relu_grad(p):
    return (p > 0).to(p.dtype)


def _leaky_grad(p):
    return torch.where(p > 0, torch.ones_like(p), torch.full_like(p, LEAKY_RELU_SLOPE))


def _tanh_grad(p):
    t = torch.tanh(p)
    return 1 - t * t


def _gelu_grad(p):
    # d/dp [p * Phi(p)] = Phi(p) + p * phi(p)
    cdf = 0.5 * (1 + torch.erf(p / math.sqrt(2)))
    pdf = torch.exp(-0.5 * p * p) / math.sqrt(2 * math.pi)
    return cdf + p * pdf


def _silu_grad(p):
    sig = torch.sigmoid(p)
    return sig * (1 + p * (1 - sig))


ACTIVATIONS = {
    "identity": Activation("identity", 0, lambda p: p, torch.ones_like, linear=True,
                           inplace=lambda p: p),
    "relu": Activation("relu", 1, F.relu, _relu_grad, inplace=torch.relu_),
    "leaky_relu": Activation("leaky_relu", 2, lambda p: F.leaky_relu(p, LEAKY_RELU_SLOPE),
                             _leaky_grad, inplace=lambda p: F.leaky_relu_(p, LEAKY_RELU_SLOPE)),
    "tanh": Activation("tanh", 3, torch.tanh, _tanh_grad, inplace=torch.tanh_),
    "gelu": Activation("gelu", 4, F.gelu, _gelu_grad),
    "silu": Activation("silu", 5, F.silu, _silu_grad),
}


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None

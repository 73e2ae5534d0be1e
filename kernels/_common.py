"""Pieces shared by the Triton kernels: activations, tile sizes, precision."""
import os

import torch
import triton
import triton.language as tl

# Integer codes of the activations (revgn/activations.py names them).
ACTIVATION_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "tanh": 3, "gelu": 4, "silu": 5}
LEAKY_SLOPE = 0.01


def activation_code(name: str) -> int:
    try:
        return ACTIVATION_CODES[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}") from None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def matmul_blocks(device: torch.device):
    """(BLOCK_M, BLOCK_N, BLOCK_K): small under the CPU interpreter, Hopper-sized on a GPU."""
    if device.type != "cuda":
        return 16, 16, 16
    return 64, 64, 32


def dot_precision(dtype: torch.dtype) -> str:
    """IEEE float32 products by default (exact against the reference); ``REVGN_TRITON_TF32=1``
    switches float32 to TF32 (about 3e-4 relative error, several times faster on Hopper)."""
    if dtype == torch.float32 and os.environ.get("REVGN_TRITON_TF32") == "1":
        return "tf32"
    return "ieee"


@triton.jit
def _const(p, value):
    # Constants through tl.full keep their full precision in float64 (a bare Python float is a
    # float32 constant to the compiler).
    return tl.full(p.shape, value, p.dtype)


@triton.jit
def activation_and_slope(p, ACT: tl.constexpr):
    """``(s(p), s'(p))`` for the activation code ``ACT``, in ``p``'s dtype."""
    one = _const(p, 1.0)
    zero = _const(p, 0.0)
    if ACT == 0:
        value = p
        slope = one
    elif ACT == 1:
        value = tl.where(p > 0, p, zero)
        slope = tl.where(p > 0, one, zero)
    elif ACT == 2:
        leak = _const(p, 0.01)
        value = tl.where(p > 0, p, leak * p)
        slope = tl.where(p > 0, one, leak)
    elif ACT == 3:
        # tanh(p) = 1 - 2 / (exp(2p) + 1), stable at both ends
        t = one - 2.0 / (tl.exp(2.0 * p) + one)
        value = t
        slope = one - t * t
    elif ACT == 4:
        cdf = 0.5 * (one + tl.erf(p * _const(p, 0.7071067811865476)))
        value = p * cdf
        slope = cdf + p * _const(p, 0.3989422804014327) * tl.exp(-0.5 * p * p)
    else:
        sig = one / (one + tl.exp(-p))
        value = p * sig
        slope = sig * (one + p * (one - sig))
    return value, slope

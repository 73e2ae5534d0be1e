"""Pieces shared by the Triton kernels: the activation epilogue, tile sizes, precision, scalars.

Every kernel accumulates in its operands' dtype (float32 or float64); other dtypes are refused.
"""
import contextlib
import functools
import os
import warnings
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from revgn.activations import ACTIVATIONS, LEAKY_RELU_SLOPE

# The kernels' ACT constexpr: the codes of revgn.activations, the one table of activations.
ACTIVATION_CODES = {name: act.code for name, act in ACTIVATIONS.items()}
_IDENTITY = tl.constexpr(ACTIVATION_CODES["identity"])
_RELU = tl.constexpr(ACTIVATION_CODES["relu"])
_LEAKY_RELU = tl.constexpr(ACTIVATION_CODES["leaky_relu"])
_TANH = tl.constexpr(ACTIVATION_CODES["tanh"])
_GELU = tl.constexpr(ACTIVATION_CODES["gelu"])
_SILU = tl.constexpr(ACTIVATION_CODES["silu"])
LEAKY_SLOPE = tl.constexpr(LEAKY_RELU_SLOPE)
SQRT_HALF = tl.constexpr(0.7071067811865476)       # 1 / sqrt(2)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)    # 1 / sqrt(2 pi)

SUPPORTED_DTYPES = (torch.float32, torch.float64)
PRECISION_ENV = "REVGN_TRITON_INPUT_PRECISION"
TF32_ENV = "REVGN_TRITON_TF32"
FP64_DOT_ENV = "REVGN_TRITON_FP64_DOT"
INPUT_PRECISIONS = ("ieee", "tf32", "tf32x3")


def activation_code(name: str) -> int:
    try:
        return ACTIVATION_CODES[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATION_CODES)}") from None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_operands(*tensors):
    """One float dtype (float32 or float64) and one device for every tensor given (None skipped);
    returns that dtype."""
    present = [t for t in tensors if t is not None]
    dtype, device = present[0].dtype, present[0].device
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"revgn Triton kernels take float32 or float64 tensors, got {dtype}")
    for t in present:
        if t.dtype != dtype or t.device != device:
            raise TypeError(f"operands must share one dtype and device; got {t.dtype} on "
                            f"{t.device} beside {dtype} on {device}")
    return dtype


def on_device(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the current device)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of float32 ``tl.dot``: "ieee" by default (matches the reference to
    rounding). ``REVGN_TRITON_TF32=1`` selects "tf32" (tensor cores, about 1e-3 relative error
    on the products); ``REVGN_TRITON_INPUT_PRECISION`` names any of ieee / tf32 / tf32x3 (three
    TF32 products, close to float32 accuracy). float64 products are always exact."""
    if dtype != torch.float32:
        return "ieee"
    chosen = os.environ.get(PRECISION_ENV)
    if chosen:
        if chosen not in INPUT_PRECISIONS:
            raise ValueError(f"{PRECISION_ENV}={chosen!r}; choose one of {INPUT_PRECISIONS}")
        return chosen
    return "tf32" if os.environ.get(TF32_ENV) == "1" else "ieee"


@triton.jit
def _fp64_dot_probe_kernel(A, OUT):
    # The product exactly as the kernels call it: 16 x 16 x 16, float64 accumulator.
    r = tl.arange(0, 16)
    a = tl.load(A + r[:, None] * 16 + r[None, :])
    acc = accumulate_product(tl.zeros((16, 16), dtype=tl.float64), a, a, "ieee", True)
    tl.store(OUT + r[:, None] * 16 + r[None, :], acc)


@functools.lru_cache(maxsize=None)
def _probe_fp64_dot(index: int) -> bool:
    try:
        a = torch.randn(16, 16, dtype=torch.float64, device=torch.device("cuda", index))
        out = torch.empty_like(a)
        with torch.cuda.device(index):
            _fp64_dot_probe_kernel[(1,)](a, out)
        return bool(torch.allclose(out, a @ a, rtol=1e-12, atol=1e-12))
    except Exception as exc:  # compilation or lowering refused: this Triton has no fp64 dot
        warnings.warn(f"Triton has no float64 tl.dot here ({type(exc).__name__}); float64 "
                      f"products of revgn's kernels run as multiply-and-sum on CUDA cores")
        return False


def use_dot(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether products of ``dtype`` go through ``tl.dot``.

    float32: always. float64: when this Triton lowers a float64 ``tl.dot`` (recent releases do,
    with float64 tensor cores on sm80 / sm90; older ones refuse it). A one-time probe kernel
    decides; ``REVGN_TRITON_FP64_DOT=0|1`` overrides it (0 also exercises the fallback under the
    interpreter)."""
    if dtype != torch.float64:
        return True
    forced = os.environ.get(FP64_DOT_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    if device.type != "cuda" or interpreted():
        return True
    return _probe_fp64_dot(device.index if device.index is not None else
                           torch.cuda.current_device())


def split_scalar(value: float) -> tuple[float, float]:
    """``value = hi + lo`` with both parts float32-exact.

    Triton passes Python floats as float32 scalars; rebuilt as ``hi + lo`` in float64 inside a
    kernel (``exact_scalar``) the value keeps 48 of its 53 bits, so a float64 ``alpha`` or
    ``damping`` is not rounded to float32."""
    hi = float(torch.tensor(value, dtype=torch.float32))
    lo = float(torch.tensor(value - hi, dtype=torch.float32))
    return hi, lo


@dataclass(frozen=True)
class Tiles:
    """Tile sizes and launch options of one kernel launch."""
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2

    def options(self) -> dict:
        return dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_K=self.block_k,
                    num_warps=self.num_warps, num_stages=self.num_stages)


# Under the interpreter a program instance costs about as much as its numpy operations: small
# tiles make shapes with a few rows exercise several tiles and their tails.
INTERPRETER_TILES = Tiles(16, 16, 16, num_warps=1, num_stages=1)


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def gpu_tiles(dtype: torch.dtype, precision: str, accumulators: int = 1, square: bool = False,
              dot: bool = True) -> Tiles:
    """Hopper-sized tiles before any shrinking, checked for register spills on sm90 with ptxas
    through Triton's ahead-of-time compiler (``_compile_all``):

    ========================  ===================  ====================  ===================
    dtype / products          one accumulator      two (stacked), each   square (Gram)
    ========================  ===================  ====================  ===================
    float32, IEEE or TF32x3   64 x 128 x 32, 8 w   64 x 128 x 32, 8 w    128 x 128 x 16, 8 w
    float32, TF32             128 x 128 x 32, 8 w  64 x 128 x 32, 8 w    128 x 128 x 32, 8 w
    float64                   64 x 64 x 16, 8 w    32 x 64 x 16, 4 w     64 x 64 x 16, 8 w
    float64 without tl.dot    32 x 32 x 4, 4 w     32 x 32 x 4, 4 w      32 x 32 x 4, 4 w
    ========================  ===================  ====================  ===================

    (w: warps.) IEEE float32 products run on CUDA cores with their operands in registers, hence
    the smaller tiles; without ``tl.dot`` a tile's product is a (BLOCK_M, BLOCK_K, BLOCK_N)
    broadcast in registers.
    """
    stacked = accumulators == 2
    if not dot:
        return Tiles(32, 32, 4, num_warps=4, num_stages=2)
    if dtype == torch.float64:
        # The stacked 32 x 64 pair spills with 8 warps and fits with 4.
        return Tiles(32, 64, 16, num_warps=4, num_stages=3) if stacked else \
            Tiles(64, 64, 16, num_warps=8, num_stages=3)
    if square:
        return Tiles(128, 128, 16 if precision == "ieee" else 32, num_warps=8, num_stages=3)
    if stacked or precision != "tf32":
        return Tiles(64, 128, 32, num_warps=8, num_stages=3)
    return Tiles(128, 128, 32, num_warps=8, num_stages=3)


def shrink_warps(bm: int, bn: int, accumulators: int, dtype: torch.dtype, base: Tiles) -> int:
    """Warps of a shrunk tile: the base's while its accumulators hold 32 KiB or more, else 4."""
    accumulator_bytes = bm * bn * accumulators * (8 if dtype == torch.float64 else 4)
    return base.num_warps if accumulator_bytes >= 32 * 1024 else 4


def shrink_step(bm: int, bn: int, accumulators: int, square: bool) -> tuple[int, int]:
    """One halving: both sides of a square tile; the rows first for two accumulators (each
    tile row is two rows of the stacked product); else the longer side."""
    if square:
        return bm // 2, bn // 2
    if (accumulators == 2 and bm > 32) or bm > bn:
        return bm // 2, bn
    return bm, bn // 2


def matmul_tiles(rows: int, cols: int, dtype: torch.dtype, device: torch.device,
                 accumulators: int = 1, square: bool = False, dot: bool = True,
                 precision: str = "ieee") -> Tiles:
    """Tiles for an output of ``rows x cols`` on ``device``: ``gpu_tiles``, then, while the grid
    has fewer programs than the GPU has multiprocessors, ``shrink_step`` (to 32 at least): for
    the skinny outputs of the sweep (``n x h``, ``n x n``) the parallelism is worth more than
    the reuse. ``square`` keeps ``block_m == block_n`` (the Gram mirrors tiles); its grid counts
    only the lower triangle. Interpreter (or CPU tensors): ``INTERPRETER_TILES``.
    """
    if device.type != "cuda" or interpreted():
        return INTERPRETER_TILES
    base = gpu_tiles(dtype, precision, accumulators, square, dot)
    if not dot:
        return base
    bm, bn = base.block_m, base.block_n
    sms = _multiprocessors(device.index if device.index is not None else
                           torch.cuda.current_device())

    def programs(m, n):
        tiles_m, tiles_n = triton.cdiv(rows, m), triton.cdiv(cols, n)
        return tiles_m * (tiles_m + 1) // 2 if square else tiles_m * tiles_n

    while programs(bm, bn) < sms and max(bm, bn) > 32:
        bm, bn = shrink_step(bm, bn, accumulators, square)
    return Tiles(bm, bn, base.block_k, num_warps=shrink_warps(bm, bn, accumulators, dtype, base),
                 num_stages=base.num_stages)


def matmul_launch(rows: int, cols: int, dtype: torch.dtype, device: torch.device,
                  accumulators: int = 1, square: bool = False) -> dict:
    """Launch options of a kernel built on ``accumulate_product``: tile sizes, warps, stages,
    ``PRECISION`` and ``USE_DOT``."""
    dot = use_dot(dtype, device)
    precision = dot_precision(dtype)
    tiles = matmul_tiles(rows, cols, dtype, device, accumulators, square, dot, precision)
    return dict(tiles.options(), PRECISION=precision, USE_DOT=dot)


@triton.jit
def accumulate_product(acc, a, b, PRECISION: tl.constexpr, USE_DOT: tl.constexpr):
    """``acc + a @ b``: ``tl.dot``, or without it (float64 where this Triton has no float64
    dot, see ``use_dot``) a broadcast multiply-and-sum on CUDA cores."""
    if USE_DOT:
        return tl.dot(a, b, acc, input_precision=PRECISION)
    return acc + tl.sum(a[:, :, None] * b[None, :, :], axis=1)


@triton.jit
def exact_scalar(hi, lo, like):
    """``hi + lo`` (see ``split_scalar``) broadcast to ``like``'s shape and dtype."""
    return tl.zeros_like(like) + hi + lo


@triton.jit
def _constant(like, value):
    # tl.full keeps a Python float at full precision in float64 (a bare literal is a float32
    # constant to the compiler).
    return tl.full(like.shape, value, like.dtype)


@triton.jit
def activation_and_slope(p, ACT: tl.constexpr):
    """``(s(p), s'(p))`` for the activation code ``ACT`` (``ACTIVATION_CODES``), in ``p``'s dtype.

    Only tl.exp and tl.erf are used: libdevice functions do not run under the interpreter.
    """
    one = _constant(p, 1.0)
    zero = _constant(p, 0.0)
    if ACT == _IDENTITY:
        value = p
        slope = one
    elif ACT == _RELU:
        value = tl.where(p > 0, p, zero)
        slope = tl.where(p > 0, one, zero)
    elif ACT == _LEAKY_RELU:
        leak = _constant(p, LEAKY_SLOPE)
        value = tl.where(p > 0, p, leak * p)
        slope = tl.where(p > 0, one, leak)
    elif ACT == _TANH:
        # tanh|p| = (1 - e) / (1 + e), e = exp(-2|p|) <= 1: no overflow at either end, and the
        # absolute error stays at one rounding of 1 (what A = s(P) and x = y - A W^T need).
        e = tl.exp(-2.0 * tl.abs(p))
        t = (one - e) / (one + e)
        value = tl.where(p < 0, -t, t)
        slope = one - t * t
    elif ACT == _GELU:  # exact: p Phi(p), Phi'(p) = phi(p)
        cdf = 0.5 * (one + tl.erf(p * _constant(p, SQRT_HALF)))
        value = p * cdf
        slope = cdf + p * _constant(p, INV_SQRT_2PI) * tl.exp(-0.5 * p * p)
    else:  # _SILU: p sigmoid(p)
        tl.static_assert(ACT == _SILU, "unknown activation code")
        # exp(-p) overflows to inf for p < -88 (float32): sigmoid -> 0, slope -> 0, as it should.
        sig = one / (one + tl.exp(-p))
        value = p * sig
        slope = sig * (one + p * (one - sig))
    return value, slope

"""Compile every kernel configuration the launchers can choose, for an NVIDIA target, with no GPU.

    TRITON_INTERPRET=0 python -c "import revgn, sys; revgn.load_kernels(); \
        from revgn.kernels import _compile_all; sys.exit(_compile_all.main())" [90] [--quick] \
        [--out FILE]

Triton's ahead-of-time compiler (``triton.compile`` on an ``ASTSource`` with a ``GPUTarget``)
runs the whole pipeline down to a cubin with the ptxas bundled in Triton's wheel, so lowering
errors, shared-memory overflows and register spills show up on a machine without a GPU. Each
configuration's registers per thread and spill bytes come from ``cuobjdump -res-usage``.
It checks the Triton installed here, for sm90 by default (H100 / H200); ``--out FILE`` also
writes every configuration's result as JSON.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import torch
import triton

from . import _common
from .cholesky import MAX_SMALL_N, _small_cholesky_solve_kernel, _warps
from .coupling import ACTIVATE, INVERT, PUSH, STORE, _stacked_matmul_kernel
from .gram import _gram_kernel
from .jt import _zt_a_kernel

TYPE_NAMES = {torch.float32: "fp32", torch.float64: "fp64"}
FLOAT_SCALARS = ("alpha_hi", "alpha_lo", "shift_hi", "shift_lo")
INT_POINTERS = ("INFO",)
IDENTITY, GELU = _common.ACTIVATION_CODES["identity"], _common.ACTIVATION_CODES["gelu"]


@dataclass
class Compiled:
    kernel: str
    config: dict
    ok: bool
    registers: int = -1
    spill_bytes: int = -1
    error: str = ""


def _signature(fn, dtype, constants):
    """Pointer parameters are the non-constexpr UPPERCASE ones (the kernels' convention)."""
    element = TYPE_NAMES[dtype]
    signature = {}
    for name in fn.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in INT_POINTERS:
            signature[name] = "*i32"
        elif name.isupper():
            signature[name] = "*" + element
        else:
            signature[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    return signature


def _resources(cubin: bytes):
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    if not os.path.exists(tool):
        return -1, -1
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run([tool, "-res-usage", f.name], capture_output=True,
                                text=True).stdout
    registers = re.search(r"REG:(\d+)", report)
    stack = re.search(r"STACK:(\d+)", report)
    return (int(registers.group(1)) if registers else -1, int(stack.group(1)) if stack else -1)


def compile_one(fn, dtype, constants, num_warps, num_stages, arch=90):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    config = dict(constants, dtype=TYPE_NAMES[dtype], num_warps=num_warps)
    try:
        source = ASTSource(fn, _signature(fn, dtype, constants), constexprs=constants)
        kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                options=dict(num_warps=num_warps, num_stages=num_stages))
    except Exception as exc:  # report every failing configuration, not only the first
        return Compiled(fn.__name__, config, False, error=f"{type(exc).__name__}: {exc}")
    registers, spills = _resources(kernel.asm["cubin"])
    return Compiled(fn.__name__, config, True, registers, spills)


def _shrunk(tiles, accumulators, dtype, square):
    """The base tile and every tile ``matmul_tiles`` can shrink it to."""
    out = [tiles]
    bm, bn = tiles.block_m, tiles.block_n
    while max(bm, bn) > 32:
        bm, bn = _common.shrink_step(bm, bn, accumulators, square)
        out.append(_common.Tiles(bm, bn, tiles.block_k,
                                 _common.shrink_warps(bm, bn, accumulators, dtype, tiles),
                                 tiles.num_stages))
    return out


def configurations(quick: bool = False):
    """``(kernel, dtype, constexprs, num_warps, num_stages)`` for every launch a GPU can see
    (the heaviest activation, GELU, on shrunk tiles; every activation on the base tile).
    ``quick``: the base tiles only, with identity and GELU."""
    for dtype in (torch.float32, torch.float64):
        precisions = ("ieee", "tf32", "tf32x3") if dtype == torch.float32 else ("ieee",)
        dots = (True,) if dtype == torch.float32 else (True, False)
        for precision in precisions:
            for dot in dots:
                common = dict(PRECISION=precision, USE_DOT=dot)

                def tiles_of(t):
                    return dict(BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k)

                stacked = _shrunk(_common.gpu_tiles(dtype, precision, 2, False, dot), 2, dtype,
                                  False)
                single = _shrunk(_common.gpu_tiles(dtype, precision, 1, False, dot), 1, dtype,
                                 False)
                square = _shrunk(_common.gpu_tiles(dtype, precision, 1, True, dot), 1, dtype,
                                 True)
                if quick:
                    stacked, single, square = stacked[:1], single[:1], square[:1]
                for i, t in enumerate(stacked):
                    acts = (IDENTITY, GELU) if quick else \
                        _common.ACTIVATION_CODES.values() if i == 0 else (GELU,)
                    for act in acts:
                        for has_rhs in (True, False):
                            yield (_stacked_matmul_kernel, dtype,
                                   dict(EPILOGUE=ACTIVATE, ACT=act, HAS_TOP=True,
                                        HAS_RHS=has_rhs, HAS_BIAS=False, **common,
                                        **tiles_of(t)), t.num_warps, t.num_stages)
                    yield (_stacked_matmul_kernel, dtype,
                           dict(EPILOGUE=INVERT, ACT=IDENTITY, HAS_TOP=True, HAS_RHS=True,
                                HAS_BIAS=True, **common, **tiles_of(t)),
                           t.num_warps, t.num_stages)
                    for epilogue, act, has_rhs in ((PUSH, GELU, True), (PUSH, GELU, False),
                                                   (STORE, IDENTITY, True)):
                        yield (_stacked_matmul_kernel, dtype,
                               dict(EPILOGUE=epilogue, ACT=act, HAS_TOP=False, HAS_RHS=has_rhs,
                                    HAS_BIAS=False, **common, **tiles_of(t)),
                               t.num_warps, t.num_stages)
                for t in single:
                    for accumulate in (False, True):
                        yield (_zt_a_kernel, dtype,
                               dict(ACCUMULATE=accumulate, WITH_DB=True, **common,
                                    **tiles_of(t)), t.num_warps, t.num_stages)
                for t in square:
                    yield (_gram_kernel, dtype, dict(ADD_ONE=True, **common, **tiles_of(t)),
                           t.num_warps, t.num_stages)
        block_n = 16
        while block_n <= MAX_SMALL_N[dtype]:
            block_r = max(16, min(32, 2048 // block_n))
            yield (_small_cholesky_solve_kernel, dtype, dict(BLOCK_N=block_n, BLOCK_R=block_r),
                   _warps(block_n, dtype), 1)
            block_n *= 2
    yield _common._fp64_dot_probe_kernel, torch.float64, {}, 4, 3


def main(argv=None) -> int:
    """``[arch] [--quick] [--out FILE]``: compile for sm<arch> (90 by default); exit 1 if any
    fails."""
    if _common.interpreted():
        print("unset TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2
    args = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in args
    out = args[args.index("--out") + 1] if "--out" in args[:-1] else None
    numbers = [a for a in args if a.isdigit() and a != out]
    arch = int(numbers[0]) if numbers else 90
    failures, results = 0, []
    for fn, dtype, constants, warps, stages in configurations(quick):
        result = compile_one(fn, dtype, constants, warps, stages, arch)
        results.append(dict(asdict(result), dtype=TYPE_NAMES[dtype], warps=warps, stages=stages))
        failures += not result.ok
        status = "ok  " if result.ok else "FAIL"
        detail = (f"regs {result.registers:3d} spill {result.spill_bytes:4d}" if result.ok
                  else result.error[:300])
        print(f"{status} {result.kernel:30s} {detail}  {result.config}")
    print(f"{failures} configuration(s) failed to compile for sm{arch}")
    if out:
        with open(out, "w") as f:
            json.dump(dict(arch=f"sm{arch}", triton=triton.__version__, quick=quick,
                           failures=failures, configurations=results), f, indent=1, default=str)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

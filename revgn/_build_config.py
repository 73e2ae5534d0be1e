"""Sources and flags of the C++/CUDA extension, shared by setup.py and the just-in-time loader.

Imports nothing from torch at module level so that setup.py can read it before torch exists.

The CPU part always builds. The CUDA part is added when torch is a CUDA build and a CUDA toolkit
(``nvcc``) is found, whether or not a GPU is present: never decided by
``torch.cuda.is_available()``, so build machines without a GPU still compile and check it.
"""
from __future__ import annotations

import glob
import json
import os
import sys

EXT_NAME = "revgn._C"
DEFAULT_CUDA_HOME = "/usr/local/cuda"
DEFAULT_ARCH_LIST = "9.0a"  # Hopper (H100/H200), the machines revgn is measured on


def prefer_cuda_home() -> None:
    """Point torch at a real toolkit before ``torch.utils.cpp_extension`` reads ``CUDA_HOME``
    (an ``nvcc`` wrapper on ``PATH`` can otherwise mislead its detection)."""
    if "CUDA_HOME" not in os.environ and os.path.exists(
            os.path.join(DEFAULT_CUDA_HOME, "bin", "nvcc")):
        os.environ["CUDA_HOME"] = DEFAULT_CUDA_HOME


def cuda_decision(torch_module, cpp_extension) -> tuple[bool, str]:
    if os.environ.get("REVGN_DISABLE_CUDA") == "1":
        return False, "REVGN_DISABLE_CUDA=1"
    if torch_module.version.cuda is None:
        return False, "torch is a CPU build"
    home = cpp_extension.CUDA_HOME
    if not home or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return False, "no CUDA toolkit (nvcc) found; set CUDA_HOME"
    return True, f"CUDA {torch_module.version.cuda}, toolkit at {home}"


def sources(root: str, with_cuda: bool) -> list[str]:
    """The schemas, ``cpu/*.cpp`` and, with CUDA, ``cuda/*.cpp`` and ``cuda/*.cu``."""
    csrc = os.path.join(root, "csrc")
    files = [os.path.join(csrc, "revgn_ops.cpp")] + sorted(glob.glob(os.path.join(csrc, "cpu",
                                                                                   "*.cpp")))
    if with_cuda:
        files += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cpp")))
        files += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    # The just-in-time build names each object after its file alone (<stem>.o, <stem>.cuda.o),
    # the ahead-of-time one after its folder and stem: cpu/gram.cpp beside cuda/gram.cpp would
    # overwrite one object with the other in the first, gram.cu beside gram.cpp in the second.
    stems = [os.path.splitext(os.path.relpath(f, csrc))[0] for f in files]
    objects = [os.path.basename(stem) + (".cuda" if f.endswith(".cu") else "")
               for stem, f in zip(stems, files)]
    clashes = sorted({o for o in objects if objects.count(o) > 1} |
                     {s for s in stems if stems.count(s) > 1})
    if clashes:
        raise RuntimeError(f"csrc/: sources whose objects would collide: {clashes}")
    return files


def cxx_flags() -> list[str]:
    # -fopenmp: at::parallel_for is inline OpenMP in ATen's headers.
    return ["-O3", "-fopenmp"]  # the C++ standard is torch's own choice


def nvcc_flags() -> list[str]:
    return ["-O3", "--expt-relaxed-constexpr"]


def include_dirs() -> list[str]:
    # cuBLAS/cuSPARSE headers of the pip-installed CUDA runtime (torch's headers include them)
    found = []
    for path in sys.path:
        candidate = os.path.join(path, "nvidia", "cu13", "include")
        if os.path.isdir(candidate):
            found.append(candidate)
            break
    return found


def set_default_arch_list(torch_module) -> None:
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch_module.cuda.is_available():
        # Without a device to ask, torch's default arch detection fails: build for Hopper.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST


def build_record(torch_module, with_cuda: bool, why: str, mode: str) -> dict:
    return {
        "built": True,
        "mode": mode,
        "cpu": True,
        "cuda": with_cuda,
        "cuda_reason": why,
        "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "torch": torch_module.__version__,
        "torch_cuda": torch_module.version.cuda,
    }


def make_extension(cpp_extension, root):
    """The ``revgn._C`` extension built ahead of time by setup.py."""
    import torch
    with_cuda, why = cuda_decision(torch, cpp_extension)
    if os.environ.get("REVGN_FORCE_CUDA") == "1" and not with_cuda:
        raise SystemExit(f"REVGN_FORCE_CUDA=1 but the CUDA part cannot be built: {why}")
    if with_cuda:
        set_default_arch_list(torch)
    record = build_record(torch, with_cuda, why, "aot")
    with open(os.path.join(root, "revgn", "_build_info.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"revgn: building the extension (CPU{' + CUDA' if with_cuda else ''}; {why})")
    kwargs = dict(
        name=EXT_NAME,
        sources=[os.path.relpath(s, root) for s in sources(root, with_cuda)],
        include_dirs=include_dirs(),
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        return cpp_extension.CUDAExtension(
            extra_compile_args={"cxx": cxx_flags() + ["-DREVGN_WITH_CUDA"],
                                "nvcc": nvcc_flags()}, **kwargs)
    return cpp_extension.CppExtension(extra_compile_args={"cxx": cxx_flags()}, **kwargs)

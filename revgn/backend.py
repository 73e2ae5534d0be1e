"""Backend selection: which implementation of the ops runs.

``backend="auto" | "reference" | "triton" | "cuda" | "cpp"``. ``auto`` picks the fastest
implementation available for the tensors' device; the environment variable ``REVGN_BACKEND``
replaces ``auto`` (so a whole run or test suite can be pointed at one backend without code
changes). An explicit backend that is not available raises instead of silently falling back.
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "reference", "triton", "cuda", "cpp")
ENV_VAR = "REVGN_BACKEND"


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    return name


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        from revgn._triton import load_kernels
        load_kernels()
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def extension_available(device_type: str) -> bool:
    """Whether the compiled extension has kernels for ``device_type`` ("cpu" or "cuda")."""
    from revgn import _extension
    return _extension.has_kernels(device_type)


def available(name: str, device: torch.device) -> bool:
    device = torch.device(device)
    if name == "reference":
        return True
    if name == "triton":
        return triton_available() and (device.type == "cuda" or
                                       (device.type == "cpu" and triton_interpreted()))
    if name == "cuda":
        return device.type == "cuda" and extension_available("cuda")
    if name == "cpp":
        return device.type == "cpu" and extension_available("cpu")
    return False


def resolve(name: str, device: torch.device) -> str:
    """Turn a requested backend into the concrete one that will run on ``device``."""
    check_backend_name(name)
    if name == "auto":
        forced = os.environ.get(ENV_VAR)
        if forced:
            name = check_backend_name(forced)
    if name == "auto":
        device = torch.device(device)
        order = ("cuda", "triton") if device.type == "cuda" else ("cpp",)
        for candidate in order:
            if available(candidate, device):
                return candidate
        return "reference"
    if not available(name, device):
        raise RuntimeError(
            f"backend {name!r} is not available for device {torch.device(device)}; "
            f"`revgn info` lists what is built (use backend='auto' to fall back)")
    return name


def summary() -> dict:
    """What is installed and what of it is usable on each device here (shown by `revgn info`).

    ``installed``: the Triton version (None: not installed), whether revgn's Triton kernels
    import, and the extension's build record. ``usable``: per device, the backends that can run
    there now (Triton on the CPU only under ``TRITON_INTERPRET=1``; None: no such device).
    ``auto``: what ``backend="auto"`` picks per device.
    """
    from revgn import _extension
    try:
        import triton
        triton_version = getattr(triton, "__version__", "unknown")
    except ImportError:
        triton_version = None
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    none = {"cuda": None} if len(devices) == 1 else {}  # no device: nothing to list
    return {
        "installed": {
            "triton": triton_version,
            "triton_kernels_load": triton_version is not None and triton_available(),
            "extension": _extension.build_info(),
        },
        "usable": {**{d: [name for name in BACKENDS[1:] if available(name, torch.device(d))]
                      for d in devices}, **none},
        "auto": {**{d: resolve("auto", torch.device(d)) for d in devices}, **none},
        "triton_interpreter": triton_interpreted(),
        "cuda_device": torch.cuda.is_available(),
    }

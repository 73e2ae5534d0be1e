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
        import revgn
        revgn.load_kernels()
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
    """What is built and usable here (shown by `revgn info`)."""
    from revgn import _extension
    cpu = torch.device("cpu")
    out = {
        "reference": True,
        "cpp": available("cpp", cpu),
        "triton": triton_available(),
        "triton_interpreter": triton_interpreted(),
        "cuda_device": torch.cuda.is_available(),
        "cuda": torch.cuda.is_available() and available("cuda", torch.device("cuda")),
        "auto_cpu": resolve("auto", cpu),
        "extension": _extension.build_info(),
    }
    if torch.cuda.is_available():
        out["auto_cuda"] = resolve("auto", torch.device("cuda"))
    return out

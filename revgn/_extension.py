"""Loading the compiled extension (``revgn._C``), ahead-of-time built or just in time."""
from __future__ import annotations


def has_kernels(device_type: str) -> bool:
    return False


def build_info() -> dict:
    return {"built": False, "reason": "not built"}


def load():
    raise RuntimeError("the revgn extension is not built")

"""The op table: every op of the GN sweep bound once to one backend and one device.

    ops = revgn.ops.bind("auto", device)      # resolved here, once
    K = ops.gram(A, bias=True)                 # then called with no backend argument

``bind`` resolves the backend (``revgn.backend.resolve``: ``auto`` picks the fastest one built
for the device, ``REVGN_BACKEND`` overrides it, an unavailable explicit backend raises) and picks
each op's implementation: the backend's own, or the reference where the backend has none. The
optimizers bind a table per device and pass it down; code below them takes the table as an
argument, so no op can run on a backend nobody chose.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from revgn import backend as _backend
from revgn.ops._dispatch import implementation
from revgn.ops.coupling import coupling_inverse_with_tangent_ref, coupling_tangent_ref
from revgn.ops.jt import gram_ref, jt_product_ref, jt_update_ref
from revgn.ops.solve import cholesky_factor_solve_ref

#: op name -> its reference implementation; one entry per op of every backend
REFERENCES: dict[str, Callable] = {
    "coupling_inverse_with_tangent": coupling_inverse_with_tangent_ref,
    "coupling_tangent": coupling_tangent_ref,
    "gram": gram_ref,
    "jt_product": jt_product_ref,
    "jt_update_": jt_update_ref,
    "cholesky_factor_solve": cholesky_factor_solve_ref,
}


@dataclass(frozen=True)
class OpTable:
    """The ops bound to ``backend`` (the resolved name) on ``device``; each field is the
    callable that runs, with the reference's signature (see ``REFERENCES``)."""
    backend: str
    device: torch.device
    coupling_inverse_with_tangent: Callable
    coupling_tangent: Callable
    gram: Callable
    jt_product: Callable
    jt_update_: Callable
    cholesky_factor_solve: Callable

    def implemented(self) -> dict[str, bool]:
        """Which ops run the backend's own implementation (False: the reference)."""
        return {name: getattr(self, name) is not ref for name, ref in REFERENCES.items()}


def bind(backend: str = "auto", device="cpu") -> OpTable:
    """The op table of ``backend`` on ``device`` (see the module docstring)."""
    device = torch.device(device)
    name = _backend.resolve(backend, device)
    return _bind_resolved(name, device)


@functools.lru_cache(maxsize=None)
def _bind_resolved(name: str, device: torch.device) -> OpTable:
    fns = {op: implementation(op, ref, name, device) for op, ref in REFERENCES.items()}
    return OpTable(backend=name, device=device, **fns)


def reference_ops() -> OpTable:
    """The table of references: what every backend is compared with, on any device."""
    return _bind_resolved("reference", torch.device("cpu"))

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
from revgn.ops import cholesky, coupling, gram, jt
from revgn.ops._dispatch import implementation

#: op name -> its reference implementation; one entry per op of every backend
REFERENCES: dict[str, Callable] = {
    "coupling_inverse_with_tangent": coupling.coupling_inverse_with_tangent_ref,
    "coupling_tangent": coupling.coupling_tangent_ref,
    "gram": gram.gram_ref,
    "jt_product": jt.jt_product_ref,
    "jt_update_": jt.jt_update_ref,
    "cholesky_factor_solve": cholesky.cholesky_factor_solve_ref,
}

#: op name -> its fake (shape-only) implementation, beside the reference in the op's module;
#: ``register_fakes`` gives it to every backend's op of that name
FAKES: dict[str, Callable] = {
    "coupling_inverse_with_tangent": coupling.coupling_inverse_with_tangent_fake,
    "coupling_tangent": coupling.coupling_tangent_fake,
    "gram": gram.gram_fake,
    "jt_product": jt.jt_product_fake,
    "jt_update_": jt.jt_update_fake,
    "cholesky_factor_solve": cholesky.cholesky_factor_solve_fake,
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


def register_fakes(namespace: str) -> list[str]:
    """Register ``FAKES`` for the ops defined in ``torch.ops.<namespace>`` (the compiled
    extension's ``revgn``, the Triton kernels' ``revgn_triton``): one fake per op, whatever
    backend implements it. Returns the op names registered. Call once per namespace."""
    ops = getattr(torch.ops, namespace)
    done = []
    for op, fake in FAKES.items():
        if hasattr(ops, op):
            torch.library.register_fake(f"{namespace}::{op}")(fake)
            done.append(op)
    return done

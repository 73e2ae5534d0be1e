"""Where each backend keeps its implementation of an op (``revgn.ops.bind`` asks here)."""
from __future__ import annotations

import torch

from revgn import backend as _backend


def implementation(op_name: str, reference, backend: str, device: torch.device):
    """Return the callable that implements ``op_name`` on ``backend`` for ``device``.

    Triton implementations live in ``revgn.kernels`` under the op's name; compiled ones are
    ``torch.ops.revgn.<op_name>`` where the extension registered a kernel for the device type.
    Both take the same arguments as the reference.
    """
    name = _backend.resolve(backend, device)
    if name == "reference":
        return reference
    if name == "triton":
        from revgn._triton import load_kernels
        fn = getattr(load_kernels(), op_name, None)
    else:
        from revgn import _extension
        _extension.load()  # raises with a clear message when the build failed
        # A compiled op may have a kernel for one device type only (a CPU kernel where the GPU
        # would run the reference's single cuBLAS call anyway).
        has = _extension.registered(torch.device(device).type, op_name)
        fn = getattr(torch.ops.revgn, op_name) if has else None
    if fn is None:
        # A backend may implement only some ops; the rest run on the reference.
        return reference
    return fn

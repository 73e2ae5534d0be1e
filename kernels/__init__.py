"""Triton kernels of revgn (installed as ``revgn.kernels``).

Each public function has the name and signature of the op it implements in ``revgn.ops`` and is
registered with ``torch.library`` (namespace ``revgn_triton``) with a fake implementation, so
``opcheck`` and ``torch.compile`` see through it. Under ``TRITON_INTERPRET=1`` they run on CPU
tensors.
"""
from .cholesky import cholesky_factor_solve
from .coupling import coupling_inverse_with_tangent, coupling_tangent
from .gram import gram
from .jt import jt_product, jt_update_

__all__ = ["coupling_inverse_with_tangent", "coupling_tangent", "gram", "jt_product",
           "jt_update_", "cholesky_factor_solve"]

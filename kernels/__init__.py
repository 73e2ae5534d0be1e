"""Triton kernels of revgn (installed as ``revgn.kernels``).

Each public function has the name and signature of the op it implements in ``revgn.ops`` and
lives in the file of that op's name there (the dispatcher calls
``getattr(revgn.load_kernels(), op_name)(*reference arguments)``). Each is a
``torch.library.custom_op`` in the namespace ``revgn_triton``; ``revgn.load_kernels`` registers
the op's fake implementation (``revgn.ops.FAKES``, one for every backend), so
``opcheck`` and ``torch.compile`` see through it. The kernels import ``revgn.activations`` at
most, never ``revgn.ops``. On a GPU they take CUDA tensors; under ``TRITON_INTERPRET=1`` (set
before this package is imported) they run on CPU tensors.

float32 and float64 only. float32 products are IEEE by default; ``REVGN_TRITON_TF32=1`` (or
``REVGN_TRITON_INPUT_PRECISION=tf32|tf32x3``) trades accuracy for tensor-core speed. See
docs/KERNELS_TRITON.md.
"""
from .cholesky import MAX_SMALL_N, cholesky_factor_solve
from .coupling import coupling_inverse_with_tangent, coupling_tangent
from .gram import gram
from .jt import jt_product, jt_update_

__all__ = ["coupling_inverse_with_tangent", "coupling_tangent", "gram", "jt_product",
           "jt_update_", "cholesky_factor_solve", "MAX_SMALL_N"]

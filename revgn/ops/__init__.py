"""The ops of the GN sweep, each beside its pure-PyTorch reference (``*_ref``).

Callers bind the ops once to a backend and device and pass the table down::

    ops = revgn.ops.bind("auto", device)   # "auto" | "reference" | "triton" | "cuda" | "cpp"
    ops.coupling_tangent(pre, du, C, W, "relu")

(``revgn.ops.table``; ``revgn.backend`` resolves the name). One module per op, named as the op's
Triton kernel (``kernels/<op>.py``) and compiled kernels (``csrc/{cpu,cuda}/<op>.*``) are:
``coupling``, ``gram``, ``jt`` and ``cholesky``, each with the reference ``<op>_ref`` and the
shape-only ``<op>_fake`` registered for every backend. ``gram_solve`` (``solve``) is built from
the ops and takes the table as ``ops=``.
"""
from revgn.ops.cholesky import cholesky_factor_solve_ref
from revgn.ops.coupling import coupling_inverse_with_tangent_ref, coupling_tangent_ref
from revgn.ops.gram import gram_ref
from revgn.ops.jt import jt_product_ref, jt_update_ref
from revgn.ops.solve import (FELL_BACK, NONFINITE, PROJECTOR_BAND, SOLVED, GramSolution,
                             eigh_solve, gram_solve, largest_eigenvalue)
from revgn.ops.table import FAKES, REFERENCES, OpTable, bind, reference_ops

__all__ = [
    "bind", "reference_ops", "OpTable", "REFERENCES",
    "coupling_inverse_with_tangent_ref", "coupling_tangent_ref", "gram_ref", "jt_product_ref",
    "jt_update_ref", "cholesky_factor_solve_ref",
    "gram_solve", "eigh_solve", "largest_eigenvalue", "GramSolution", "SOLVED", "FELL_BACK",
    "NONFINITE", "PROJECTOR_BAND", "FAKES",
]

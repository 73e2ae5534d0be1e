"""The ops of the GN sweep, each beside its pure-PyTorch reference (``*_ref``).

Every op takes ``backend="auto" | "reference" | "triton" | "cuda" | "cpp"``; see ``revgn.backend``.
"""
from revgn.ops.coupling import (coupling_inverse_with_tangent, coupling_inverse_with_tangent_ref,
                                coupling_tangent, coupling_tangent_ref)
from revgn.ops.jt import gram, gram_ref, jt_product, jt_product_ref, jt_update_, jt_update_ref
from revgn.ops.solve import (FELL_BACK, NONFINITE, SOLVED, GramSolution, cholesky_factor_solve,
                             cholesky_factor_solve_ref, eigh_solve, gram_solve)

__all__ = [
    "coupling_inverse_with_tangent", "coupling_inverse_with_tangent_ref", "coupling_tangent",
    "coupling_tangent_ref",
    "gram", "gram_ref", "jt_product", "jt_product_ref", "jt_update_", "jt_update_ref",
    "gram_solve", "cholesky_factor_solve", "cholesky_factor_solve_ref", "eigh_solve",
    "GramSolution", "SOLVED", "FELL_BACK", "NONFINITE",
]

"""The batch-sized system behind the EGN direction (DESIGN §4).

The direction is ``d = J^T u`` with

    u = (Q J J^T + mu I_bc)^-1 r,        mu = b * lambda.

``Q J J^T`` is not symmetric. With the exact factor ``Q = F F^T`` and the split ``r = F t + rest``
of ``revgn.egn.losses`` and ``w = rest / mu``, ``u`` comes from an SPD system instead:

    (F^T J J^T F + mu I) v = t - F^T J J^T w,        u = F v + w.

Check: ``(F F^T J J^T + mu I)(F v + w) = F [(F^T J J^T F + mu I) v + F^T J J^T w] + mu w
= F t + rest = r``. (For mse ``F = I``, ``rest = 0``: the plain ``(J J^T + mu I) u = r``.) The
matrix is ``J~ J~^T + mu I`` with ``J~ = F^T J``, solved by Cholesky in float64
(``revgn.ops.gram_solve``, method ``damped``).

``mu = 0`` (no damping) gives the Gauss-Newton direction of minimum norm,
``J~^+ t = J~^T (J~ J~^T)^+ t``: ``gram_solve``'s truncated pseudoinverse with a relative cut at
the rounding level of the Jacobian's dtype; ``rest`` (outside the range of ``Q``) is dropped.
"""
from __future__ import annotations

import torch

from revgn.egn.losses import OutputModel
from revgn.ops import NONFINITE, gram_solve


def row_coefficients(JJ: torch.Tensor, om: OutputModel, mu: float, ops):
    """``u`` (b, c) float64 with ``d = J^T u``, and ``gram_solve``'s status (1,), given
    ``JJ = J J^T`` (b, c, b, c); the solve runs on the op table ``ops``."""
    b, c = om.r.shape
    # rank decisions cannot be finer than the rounding of the Gram as it was computed
    rtol = 10 * torch.finfo(JJ.dtype).eps ** 0.5
    JJ = JJ.to(torch.float64)
    Fm = om.factor
    K = torch.einsum("icje,jed->icjd", torch.einsum("iac,iaje->icje", Fm, JJ), Fm)
    K = K.reshape(b * c, b * c)
    if mu > 0:
        w = om.rest / mu
        rhs = om.t - torch.einsum("iac,ia->ic", Fm, torch.einsum("iaje,je->ia", JJ, w))
    else:
        w, rhs = torch.zeros_like(om.rest), om.t
    if not (bool(torch.isfinite(K).all()) and bool(torch.isfinite(rhs).all())):
        # overflowed outputs or Jacobian: report, do not hand NaN to a factorization
        return torch.full_like(om.r, float("nan")), torch.full((1,), NONFINITE, dtype=torch.int32)
    if mu > 0:
        sol = gram_solve(K, rhs.reshape(b * c, 1), "damped", damping=mu, ops=ops)
    else:
        sol = gram_solve(K, rhs.reshape(b * c, 1), "cholesky", rtol=rtol, ops=ops)
    v = sol.Z.reshape(b, c)
    return torch.einsum("icd,id->ic", Fm, v) + w, sol.status

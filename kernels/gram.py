"""The Gram matrix of a coupling's activations (DESIGN §3.1): ``K = A A^T (+ 1 1^T)``.

``K`` is symmetric: the grid enumerates only the tile pairs ``(I, J)`` with ``I >= J`` (about half
the products of a plain matmul), and each program writes its tile to both ``(I, J)`` and, mirrored,
``(J, I)``. On a diagonal tile the upper half is written from the lower half's values, so ``K``
is exactly symmetric whatever order the dot product summed in.
"""
import torch
import triton
import triton.language as tl

from ._common import accumulate_product, check_operands, matmul_launch, on_device


@triton.jit
def _lower_tile_pair(pid):
    """``(I, J)`` with ``pid = I (I + 1) / 2 + J``, ``0 <= J <= I``: the lower triangle of the
    tile grid, row by row."""
    i = ((tl.sqrt(8.0 * pid + 1.0) - 1.0) * 0.5).to(tl.int32)
    # The float32 square root can land one off near a triangular number.
    i = tl.where(i * (i + 1) // 2 > pid, i - 1, i)
    i = tl.where((i + 1) * (i + 2) // 2 <= pid, i + 1, i)
    return i, pid - i * (i + 1) // 2


@triton.jit
def _gram_kernel(A, K, n, m, stride_an, stride_am, ADD_ONE: tl.constexpr,
                 PRECISION: tl.constexpr, USE_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``K[I, J] = A[I, :] A[J, :]^T (+ 1)`` for one tile pair ``I >= J``; stores ``K[I, J]``
    (lower part on the diagonal) and its transpose at ``K[J, I]`` (strictly upper part).
    A: (n, m) by strides; K: (n, n) contiguous; BLOCK_M == BLOCK_N."""
    tile_i, tile_j = _lower_tile_pair(tl.program_id(0))
    ri = tile_i * BLOCK_M + tl.arange(0, BLOCK_M)
    rj = tile_j * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=A.dtype.element_ty)
    for k0 in range(0, m, BLOCK_K):
        kk = k0 + rk
        a_i = tl.load(A + ri[:, None] * stride_an + kk[None, :] * stride_am,
                      mask=(ri[:, None] < n) & (kk[None, :] < m), other=0.0)
        a_j_t = tl.load(A + kk[:, None] * stride_am + rj[None, :] * stride_an,
                        mask=(kk[:, None] < m) & (rj[None, :] < n), other=0.0)
        acc = accumulate_product(acc, a_i, a_j_t, PRECISION, USE_DOT)
    if ADD_ONE:
        acc += 1.0
    inside = (ri[:, None] < n) & (rj[None, :] < n)
    tl.store(K + ri[:, None] * n + rj[None, :], acc,
             mask=inside & (ri[:, None] >= rj[None, :]))
    # The transposed tile is stored row-major (coalesced); the compiler does the transpose.
    inside_t = (rj[:, None] < n) & (ri[None, :] < n)
    tl.store(K + rj[:, None] * n + ri[None, :], tl.trans(acc),
             mask=inside_t & (rj[:, None] < ri[None, :]))


@torch.library.custom_op("revgn_triton::gram", mutates_args=())
def gram(A: torch.Tensor, bias: bool) -> torch.Tensor:
    """``K = A A^T (+ 1 1^T when bias)``, (n, n), of ``revgn.ops.gram``."""
    check_operands(A)
    if A.dim() != 2:
        raise ValueError(f"gram takes a matrix (n, M), got shape {tuple(A.shape)}")
    n, m = A.shape
    if n == 0:  # Triton refuses an empty grid; with M = 0 the kernel writes the 1 1^T alone
        return A.new_empty(0, 0)
    K = A.new_empty(n, n)
    launch = matmul_launch(n, n, A.dtype, A.device, square=True)
    tiles_per_side = triton.cdiv(n, launch["BLOCK_M"])
    grid = (tiles_per_side * (tiles_per_side + 1) // 2,)
    with on_device(A):
        _gram_kernel[grid](A, K, n, m, A.stride(0), A.stride(1), ADD_ONE=bias, **launch)
    return K

"""``torch.compile`` over the ops: the fake (meta) kernels let dynamo trace a whole coupling
pull-back into one graph, on every CPU backend, and the compiled function computes what the
eager one does. (A whole GN step is not compiled: its solves branch on ranks and residuals read
back to the host, which breaks graphs by design.)"""
import pytest
import torch

from revgn import backend as _backend
from revgn.ops import bind, gram_solve


def _cpu_backends():
    names = ["reference"] + [b for b in ("cpp", "triton")
                             if _backend.available(b, torch.device("cpu"))]
    return names


def _pull_back(ops, u, du, y, dy, C, W, b, P_next, C_next, W_next):
    """One coupling inverted with its tangent, the Gram of its activations, the push of its
    input tangent through the next coupling, and the update's Jacobian-transpose product."""
    x, dx, A, k = ops.coupling_inverse_with_tangent(u, du, y, dy, C, W, b, "gelu")
    K = ops.gram(A, True)
    k_next = ops.coupling_tangent(P_next, dx, C_next, W_next, "tanh")
    dW, db = ops.jt_product(A, dx)
    return x, dx, K, k_next, dW, db


@pytest.mark.parametrize("name", _cpu_backends())
def test_a_coupling_pull_back_compiles_into_one_graph(name):
    if name == "triton":
        pytest.skip("Triton kernels compile on a GPU; under the interpreter they run eagerly")
    ops = bind(name, "cpu")
    g = torch.Generator().manual_seed(0)
    n, h, M = 9, 5, 23

    def r(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g)
    args = (r(n, h), r(n, h), r(n, h), r(n, h), r(h, M) / M ** 0.5, r(h, M), r(h),
            r(n, M), r(h, M) / M ** 0.5, r(h, M))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: _pull_back(ops, *a), fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*args), _pull_back(ops, *args)):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", _cpu_backends())
def test_a_damped_gram_solve_compiles(name):
    """``gram_solve``'s damped route (a factorization, no rank decision) traces through
    ``cholesky_factor_solve``'s fake."""
    if name == "triton":
        pytest.skip("Triton kernels compile on a GPU; under the interpreter they run eagerly")
    ops = bind(name, "cpu")
    X = torch.randn(3, 6, 8, dtype=torch.float64)
    K, R = X @ X.mT, torch.randn(3, 6, 2, dtype=torch.float64)

    def solve(K, R):
        return gram_solve(K, R, "damped", damping=0.5, ops=ops).Z
    torch._dynamo.reset()
    compiled = torch.compile(solve, backend="aot_eager")
    assert torch.allclose(compiled(K, R), solve(K, R), rtol=1e-12, atol=1e-12)

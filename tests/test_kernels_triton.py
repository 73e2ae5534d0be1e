"""The Triton kernels (``revgn.kernels``) against the references, on fresh random inputs.

CPU tensors under ``TRITON_INTERPRET=1`` (interpreter tiles are 16 wide, so the shapes below
cover several tiles and their tails), or CUDA tensors on a GPU. Outputs are allocated poisoned
(NaN, or INT_MAX for int32) so an element a kernel forgets to write fails the test.
"""
import contextlib
import json
import os

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

import triton.language as tl  # noqa: E402

import revgn  # noqa: E402
from revgn import ops  # noqa: E402
from revgn.ops import (cholesky_factor_solve_ref, coupling_inverse_with_tangent_ref,  # noqa: E402
                       coupling_tangent_ref, gram_ref, jt_product_ref, jt_update_ref)
from revgn.cli.backend_check import TOL, coupling_inputs, rel, spd_batch  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
kernels = revgn.load_kernels()
from revgn.kernels import _common  # noqa: E402  (the package load_kernels just mapped)
from revgn.kernels.gram import _lower_tile_pair  # noqa: E402

DTYPES = [torch.float32, torch.float64]
ACTIVATIONS = list(revgn.activations.ACTIVATIONS)
# (n, h, M): n in {1, 5, 33}, h in {3, 17}, M in {7, 40}: one tile, tails, several tiles.
COUPLING_SHAPES = [(1, 3, 7), (5, 17, 40), (33, 3, 40), (33, 17, 7)]
# C present or not (no inverted bottleneck), b present or not
VARIANTS = [(True, True), (True, False), (False, True), (False, False)]


@triton.jit
def _decode_tile_pairs(OUT):
    pid = tl.program_id(0)
    i, j = _lower_tile_pair(pid)
    tl.store(OUT + 2 * pid, i)
    tl.store(OUT + 2 * pid + 1, j)


@contextlib.contextmanager
def poisoned_outputs():
    """Inside: every uninitialized allocation is filled with NaN (floats) or INT_MAX (ints)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        assert torch.empty(1).isnan().all(), "uninitialized memory is not poisoned"
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def assert_close(got, want, dtype, what=""):
    assert got.shape == want.shape and got.dtype == want.dtype, what
    assert torch.isfinite(got).all(), f"{what}: unwritten (poisoned) or non-finite elements"
    assert rel(got, want) < TOL[dtype], f"{what}: relative error {rel(got, want):.3g}"


# -- coupling ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", COUPLING_SHAPES, ids=str)
@pytest.mark.parametrize("bottleneck,bias", VARIANTS, ids=["C,b", "C", "b", "-"])
def test_coupling_inverse_with_tangent(dtype, activation, shape, bottleneck, bias):
    args = coupling_inputs(*shape, dtype, bottleneck, bias, device=DEVICE)
    with poisoned_outputs():
        got = kernels.coupling_inverse_with_tangent(*args, activation)
    want = coupling_inverse_with_tangent_ref(*args, activation)
    for name, g, w in zip(("x", "dx", "A", "k"), got, want):
        assert_close(g, w, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_coupling_takes_strided_operands(dtype):
    # Transposed views for every operand: the kernels read by strides or copy, never misread.
    n, h, M = 9, 5, 21
    g = dict(dtype=dtype, device=DEVICE)
    u, du, y, dy = (torch.randn(h, n, **g).t() for _ in range(4))
    C = torch.randn(M, h, **g).t() / M ** 0.5
    W = torch.randn(M, h, **g).t()
    b = torch.randn(2 * h, **g)[::2]
    args = (u, du, y, dy, C, W, b, "silu")
    for got, want in zip(kernels.coupling_inverse_with_tangent(*args),
                         coupling_inverse_with_tangent_ref(*args)):
        assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bottleneck", [True, False], ids=["C", "-"])
def test_coupling_tangent(dtype, activation, bottleneck):
    u, du, _, _, C, W, _ = coupling_inputs(19, 5, 23, dtype, bottleneck, device=DEVICE)
    pre = u @ C if C is not None else u
    with poisoned_outputs():
        got = kernels.coupling_tangent(pre, du, C, W, activation)
    assert_close(got, coupling_tangent_ref(pre, du, C, W, activation), dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_activation_extremes():
    # Saturated arguments: no inf or NaN from exp overflow, the limits of s and s'.
    p = torch.tensor([[-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4]], dtype=torch.float32,
                     device=DEVICE)
    u = p.t().contiguous()                                  # n = 7, h = 1, C = None
    W = torch.ones(1, 1, dtype=torch.float32, device=DEVICE)
    for activation in ACTIVATIONS:
        args = (u, torch.ones_like(u), torch.zeros_like(u), torch.zeros_like(u), None, W, None)
        for got, want in zip(kernels.coupling_inverse_with_tangent(*args, activation),
                             coupling_inverse_with_tangent_ref(*args, activation)):
            assert torch.isfinite(got).all(), activation
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=activation)


# -- Gram -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 5, 33, 50])
@pytest.mark.parametrize("M", [7, 40])
@pytest.mark.parametrize("bias", [True, False])
def test_gram_lower_tiles_mirrored(dtype, n, M, bias):
    A = torch.randn(n, M, dtype=dtype, device=DEVICE)
    with poisoned_outputs():
        K = kernels.gram(A, bias)
    assert torch.equal(K, K.t()), "mirrored tiles must make K exactly symmetric"
    assert_close(K, gram_ref(A, bias), dtype)


def test_gram_strided_input():
    A = torch.randn(40, 37, dtype=torch.float64, device=DEVICE).t()    # (37, 40), strides (1, 37)
    assert_close(kernels.gram(A, True), gram_ref(A, True), torch.float64)


def test_lower_tile_pairs_enumerate_the_triangle():
    # The Gram grid decodes its program id with a float square root: check every id of a
    # tile grid, exactly, with a kernel that does nothing else.
    tiles = 64 if INTERPRETED else 3000
    pairs = torch.tril_indices(tiles, tiles).t().contiguous().to(torch.int32)  # row by row
    got = torch.full(pairs.shape, -1, dtype=torch.int32, device=DEVICE)
    _decode_tile_pairs[(pairs.shape[0],)](got)
    assert torch.equal(got.cpu(), pairs)


# -- J^T products -----------------------------------------------------------------------------

JT_SHAPES = [(1, 3, 7), (5, 17, 40), (33, 3, 40), (40, 17, 7)]   # (n, h, M)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,h,M", JT_SHAPES)
def test_jt_product(dtype, n, h, M):
    g = dict(dtype=dtype, device=DEVICE)
    A, Z = torch.randn(n, M, **g), torch.randn(n, h, **g)
    with poisoned_outputs():
        dW, db = kernels.jt_product(A, Z)
    dW_ref, db_ref = jt_product_ref(A, Z)
    assert_close(dW, dW_ref, dtype)
    assert_close(db, db_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,h,M", JT_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_jt_update_fused(dtype, n, h, M, with_bias):
    g = dict(dtype=dtype, device=DEVICE)
    A, Z = torch.randn(n, M, **g), torch.randn(n, h, **g)
    W0, b0 = torch.randn(h, M, **g), (torch.randn(h, **g) if with_bias else None)
    W, b = W0.clone(), (b0.clone() if with_bias else None)
    W_ref, b_ref = W0.clone(), (b0.clone() if with_bias else None)
    alpha = -0.3  # not a float32 number: a float64 alpha must not be rounded to float32
    kernels.jt_update_(W, b, A, Z, alpha)
    jt_update_ref(W_ref, b_ref, A, Z, alpha)
    # Compare the increments: W's own magnitude would hide an error in the update.
    assert_close(W - W0, W_ref - W0, dtype)
    if with_bias:
        assert_close(b - b0, b_ref - b0, dtype)


def test_jt_update_strided_parameter():
    g = dict(dtype=torch.float64, device=DEVICE)
    A, Z = torch.randn(6, 20, **g), torch.randn(6, 4, **g)
    W = torch.randn(20, 4, **g).t()             # (4, 20), not contiguous
    W_ref = W.clone()
    kernels.jt_update_(W, None, A, Z, 0.7)
    jt_update_ref(W_ref, None, A, Z, 0.7)
    assert_close(W, W_ref, torch.float64)


def test_scalars_keep_float64_precision():
    # Triton passes Python floats as float32; the kernels rebuild them from two float32 parts.
    for value in (0.1, -0.3, 1 / 3, 1e-7, 123456.789):
        hi, lo = _common.split_scalar(value)
        assert float(torch.tensor(hi, dtype=torch.float32)) == hi
        assert float(torch.tensor(lo, dtype=torch.float32)) == lo
        assert abs((hi + lo) - value) <= 2.0 ** -46 * abs(value)


# -- batched small Cholesky -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,n,k", [(1, 1, 1), (4, 5, 3), (2, 33, 40), (2, 70, 2),
                                   (1, 130, 3)], ids=str)
@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_cholesky_factor_solve(dtype, B, n, k, damping):
    K, R = spd_batch(B, n, k, dtype, device=DEVICE)
    with poisoned_outputs():
        L, Z, info = kernels.cholesky_factor_solve(K, R, damping)
    L_ref, Z_ref, info_ref = cholesky_factor_solve_ref(K, R, damping)
    assert info.dtype == torch.int32 and info.tolist() == info_ref.tolist() == [0] * B
    assert torch.equal(L.triu(1), torch.zeros_like(L)), "upper triangle of L must be zero"
    # Against the float64 ground truth, the factor and solve carry about cond(K) * eps.
    shifted = K + damping * torch.eye(n, dtype=dtype, device=DEVICE)
    tol = 1e-3 if dtype == torch.float32 else 1e-10
    assert rel(L @ L.mT, shifted) < tol
    assert rel(L, L_ref) < tol and rel(Z, Z_ref) < tol
    assert rel(shifted @ Z, R) < tol


@pytest.mark.parametrize("pivot", [1, 4, 6])
def test_cholesky_reports_the_first_failing_pivot(pivot):
    K, R = spd_batch(3, 6, 2, torch.float64, device=DEVICE)
    K[1, pivot - 1, pivot - 1] = -50.0      # the leading minor of order `pivot` is not PD
    K[2, 2, 2] = float("nan")               # NaN counts as failing, like LAPACK
    _, _, info = kernels.cholesky_factor_solve(K, R, 0.0)
    _, _, info_ref = cholesky_factor_solve_ref(K, R, 0.0)
    assert info.tolist() == [0, pivot, 3]
    assert info[:2].tolist() == info_ref[:2].tolist()


def test_cholesky_batch_shapes():
    g = dict(dtype=torch.float64, device=DEVICE)
    X = torch.randn(2, 3, 4, 6, **g)
    K, R = X @ X.mT + torch.eye(4, **g), torch.randn(2, 3, 4, 2, **g)
    L, Z, info = kernels.cholesky_factor_solve(K, R, 0.0)
    assert L.shape == K.shape and Z.shape == R.shape and info.shape == (2, 3)
    assert rel(Z, torch.cholesky_solve(R, torch.linalg.cholesky(K))) < 1e-12
    L2, Z2, info2 = kernels.cholesky_factor_solve(K[0, 0], R[0, 0], 0.0)   # unbatched
    assert info2.shape == () and rel(Z2, Z[0, 0]) < 1e-13


# -- torch.library, dispatch, guards ----------------------------------------------------------

def _opcheck_cases():
    g = dict(dtype=torch.float64, device=DEVICE)
    full = coupling_inputs(4, 3, 7, torch.float64, device=DEVICE)
    bare = coupling_inputs(4, 3, 7, torch.float32, bottleneck=False, bias=False, device=DEVICE)
    return [
        ("coupling", kernels.coupling_inverse_with_tangent, (*full, "gelu")),
        ("coupling_no_bottleneck", kernels.coupling_inverse_with_tangent, (*bare, "tanh")),
        ("coupling_tangent", kernels.coupling_tangent,
         (full[0] @ full[4], full[1], full[4], full[5], "relu")),
        ("gram", kernels.gram, (torch.randn(5, 9, **g), True)),
        ("jt_product", kernels.jt_product, (torch.randn(5, 9, **g), torch.randn(5, 3, **g))),
        ("jt_update_", kernels.jt_update_, (torch.randn(3, 9, **g), torch.randn(3, **g),
                                            torch.randn(5, 9, **g), torch.randn(5, 3, **g), 0.5)),
        ("jt_update_no_bias", kernels.jt_update_, (torch.randn(3, 9, **g), None,
                                                   torch.randn(5, 9, **g),
                                                   torch.randn(5, 3, **g), 0.5)),
        ("cholesky_factor_solve", kernels.cholesky_factor_solve,
         (*spd_batch(2, 5, 3, torch.float64, device=DEVICE), 0.1)),
    ]


@pytest.mark.parametrize("case", _opcheck_cases(), ids=lambda c: c[0])
def test_opcheck(case):
    _, op, args = case
    torch.library.opcheck(op, args)   # schema, autograd registration, fake tensor, AOT dynamic


def test_the_op_table_routes_to_triton():
    table = ops.bind("triton", DEVICE)
    assert table.backend == "triton" and table.gram is kernels.gram
    A = torch.randn(9, 21, dtype=torch.float64, device=DEVICE)
    assert rel(table.gram(A, True), gram_ref(A, True)) < 1e-13
    args = coupling_inputs(6, 4, 10, torch.float64, device=DEVICE)
    for got, want in zip(table.coupling_inverse_with_tangent(*args, "relu"),
                         coupling_inverse_with_tangent_ref(*args, "relu")):
        assert rel(got, want) < 1e-13


@pytest.mark.parametrize("n,h,M", [(0, 3, 7), (4, 0, 7), (4, 3, 0)])
def test_empty_operands(n, h, M):
    """An empty batch, half width or bottleneck: no launch on an empty grid, and what the
    reference gives (``x = y - b`` and ``db = 1^T Z`` have entries when ``M = 0``)."""
    g = dict(dtype=torch.float64, device=DEVICE)
    args = coupling_inputs(n, h, M, torch.float64, device=DEVICE)
    for got, want in zip(kernels.coupling_inverse_with_tangent(*args, "gelu"),
                         coupling_inverse_with_tangent_ref(*args, "gelu")):
        assert got.shape == want.shape and torch.equal(got, want)
    u, du, _, _, C, W, _ = args
    assert torch.equal(kernels.coupling_tangent(u @ C, du, C, W, "tanh"),
                       coupling_tangent_ref(u @ C, du, C, W, "tanh"))
    A, Z = torch.randn(n, M, **g), torch.randn(n, h, **g)
    for got, want in ((kernels.gram(A, True), gram_ref(A, True)),
                      *zip(kernels.jt_product(A, Z), jt_product_ref(A, Z))):
        assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-12, atol=0)
    W, b = torch.randn(h, M, **g), torch.randn(h, **g)
    W_ref, b_ref = W.clone(), b.clone()
    kernels.jt_update_(W, b, A, Z, 0.5)
    jt_update_ref(W_ref, b_ref, A, Z, 0.5)
    assert torch.equal(W, W_ref) and torch.allclose(b, b_ref, rtol=1e-12, atol=0)


def test_rejects_mixed_dtypes_and_half():
    u, du, y, dy, C, W, b = coupling_inputs(3, 2, 5, torch.float64, device=DEVICE)
    with pytest.raises(TypeError):
        kernels.coupling_inverse_with_tangent(u, du, y, dy, C.float(), W, b, "relu")
    with pytest.raises(TypeError):
        kernels.gram(torch.randn(3, 4, device=DEVICE).half(), True)
    with pytest.raises(ValueError):
        kernels.coupling_inverse_with_tangent(u, du, y, dy, C, W.t(), b, "relu")


def test_precision_choice(monkeypatch):
    monkeypatch.delenv(_common.PRECISION_ENV, raising=False)
    monkeypatch.delenv(_common.TF32_ENV, raising=False)
    assert _common.dot_precision(torch.float32) == "ieee"
    monkeypatch.setenv(_common.TF32_ENV, "1")
    assert _common.dot_precision(torch.float32) == "tf32"
    assert _common.dot_precision(torch.float64) == "ieee"
    monkeypatch.setenv(_common.PRECISION_ENV, "tf32x3")
    assert _common.dot_precision(torch.float32) == "tf32x3"
    monkeypatch.setenv(_common.PRECISION_ENV, "fast")
    with pytest.raises(ValueError):
        _common.dot_precision(torch.float32)


def test_float64_products_without_tl_dot(monkeypatch):
    # The fallback for a Triton without float64 tl.dot (multiply-and-sum on CUDA cores),
    # forced here for every product kernel.
    monkeypatch.setenv(_common.FP64_DOT_ENV, "0")
    assert _common.use_dot(torch.float64, torch.device(DEVICE)) is False
    g = dict(dtype=torch.float64, device=DEVICE)
    args = coupling_inputs(21, 5, 33, torch.float64, device=DEVICE)
    for got, want in zip(kernels.coupling_inverse_with_tangent(*args, "gelu"),
                         coupling_inverse_with_tangent_ref(*args, "gelu")):
        assert_close(got, want, torch.float64)
    A, Z = torch.randn(21, 33, **g), torch.randn(21, 5, **g)
    assert_close(kernels.gram(A, True), gram_ref(A, True), torch.float64)
    for got, want in zip(kernels.jt_product(A, Z), jt_product_ref(A, Z)):
        assert_close(got, want, torch.float64)


def test_kernels_compile_for_sm90(tmp_path):
    """Triton's ahead-of-time compiler down to a cubin, no GPU needed: lowering errors and
    shared-memory overflows of every kernel at its base tiles, float32 (IEEE, TF32, TF32x3)
    and float64 (with and without tl.dot). Register spills are reported, not failed. The full
    sweep over shrunk tiles and activations: ``kernels/_compile_all.py``."""
    import importlib.util
    import subprocess
    import sys
    import warnings
    from pathlib import Path

    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this Triton has no NVIDIA backend")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists() and not os.environ.get("TRITON_PTXAS_PATH"):
        pytest.skip("no ptxas in this Triton")
    code = ("import revgn, sys; revgn.load_kernels(); from revgn.kernels import _compile_all; "
            f"sys.exit(_compile_all.main(['90', '--quick', '--out', {str(tmp_path / 'c.json')!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=900, cwd=Path(__file__).resolve().parents[1],
                         env=dict(os.environ, TRITON_INTERPRET="0"))
    assert run.returncode == 0, (run.stdout[-4000:], run.stderr[-4000:])
    stored = json.loads((tmp_path / "c.json").read_text())
    assert stored["arch"] == "sm90" and stored["quick"] and stored["failures"] == 0
    assert sum(line.startswith("ok") for line in run.stdout.splitlines()) == len(
        stored["configurations"])
    spilling = [line for line in run.stdout.splitlines()
                if line.startswith("ok") and " spill    0 " not in line]
    if spilling:
        warnings.warn("register spills on sm90:\n" + "\n".join(spilling))


def test_exact_gn_on_triton_equals_reference():
    from tests.helpers import labels, make_model
    model = make_model(10, 3, depth=2, M=24, activation="relu",
                       first_activation="identity").to(DEVICE)
    x, y = torch.randn(6, 10, dtype=torch.float64, device=DEVICE), labels(6, 3).to(DEVICE)
    ref, _ = revgn.ExactGN(model, lr=0.5, backend="reference").direction(x, y)
    got, _ = revgn.ExactGN(model, lr=0.5, backend="triton").direction(x, y)
    for a, b in zip(got, ref):
        assert rel(a, b) < 1e-10


# -- GPU only: Hopper-sized tiles, float64 dot, TF32 ------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="GPU tile sizes; too slow under the interpreter")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,h,M", [(300, 196, 1000), (1024, 392, 2000)])
def test_large_shapes_on_gpu(dtype, n, h, M):
    args = coupling_inputs(n, h, M, dtype, device=DEVICE)
    with poisoned_outputs():
        got = kernels.coupling_inverse_with_tangent(*args, "relu")
        K = kernels.gram(got[2], True)
        dW, db = kernels.jt_product(got[2], got[1])
    for g, w in zip(got, coupling_inverse_with_tangent_ref(*args, "relu")):
        assert_close(g, w, dtype)
    assert torch.equal(K, K.t())
    assert_close(K, gram_ref(got[2], True), dtype)
    dW_ref, db_ref = jt_product_ref(got[2], got[1])
    assert_close(dW, dW_ref, dtype)
    assert_close(db, db_ref, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="the interpreter ignores input_precision")
def test_tf32_is_opt_in_and_close(monkeypatch):
    A = torch.randn(512, 4096, device=DEVICE)
    exact = gram_ref(A.double(), False)
    monkeypatch.delenv(_common.PRECISION_ENV, raising=False)
    monkeypatch.setenv(_common.TF32_ENV, "0")
    assert rel(kernels.gram(A, False).double(), exact) < 1e-5
    monkeypatch.setenv(_common.TF32_ENV, "1")
    assert rel(kernels.gram(A, False).double(), exact) < 5e-3

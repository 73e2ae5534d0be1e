"""The routes that make the real workload fast, against the ones they replace.

- a linear coupling solved in the span of its input (``revgn.linear_coupling``) against the
  generic Gram route on ``A = u C``;
- the GEMM-only truncated solve (``projector``) against ``eigh``, ties at the threshold included;
- a step that skips the Cholesky of a coupling truncated last step against a fresh one;
- on the paper's MNIST workload, the float32 step against the all-float64 reference step.
"""
import copy
import warnings

import pytest
import torch

import revgn
from revgn.ops import bind, reference_ops
from revgn.ops.solve import PROJECTOR_BAND, eigh_solve, projector_solve, spectral_projector
from revgn.solvers import SolverConfig, solve_coupling, solve_linear_coupling
from tests.helpers import labels, make_model, rel_err


def _update(sol, A):
    dW, db = sol.parameter_update(A, reference_ops())
    return dW if db is None else torch.cat([dW, db[:, None]], dim=1)


def _linear_inputs(n, h, M, deficient, generator):
    u = torch.randn(n, h, dtype=torch.float64, generator=generator)
    if deficient:  # constant columns, as MNIST's border pixels: [u, 1] loses rank
        u[:, : h // 3] = 0.25
    C = torch.randn(h, M, dtype=torch.float64, generator=generator) / M ** 0.5
    T = torch.randn(n, h, dtype=torch.float64, generator=generator)
    return u, C, T


@pytest.mark.parametrize("n,h,M", [(7, 12, 40), (12, 12, 40), (29, 12, 40), (50, 9, 61),
                                   (33, 16, 33)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("deficient", [False, True])
@pytest.mark.parametrize("solver,rtol,atol", [("cholesky", 0.0, 0.0), ("cholesky", 1e-2, 1e-5),
                                              ("eigh", 1e-2, 0.0), ("projector", 1e-2, 0.0)])
def test_linear_route_matches_the_generic_route(n, h, M, bias, deficient, solver, rtol, atol):
    g = torch.Generator().manual_seed(n * 1000 + h)
    u, C, T = _linear_inputs(n, h, M, deficient, g)
    max_rank = h + (1 if bias else 0)
    cfg = SolverConfig(solver, rtol=rtol, atol=atol)
    fast = solve_linear_coupling(u, C, T, bias, cfg, max_rank)
    A = u @ C
    ref = solve_coupling(A, T, bias, SolverConfig(solver, rtol=rtol, atol=atol), max_rank)
    assert fast.method.startswith("linear") or n > M + bias
    assert fast.rank == ref.rank and fast.exact == ref.exact
    assert rel_err(_update(fast, A), _update(ref, A)) < 1e-10
    assert rel_err(fast.realized, ref.realized) < 1e-10
    assert abs(fast.residual - ref.residual) < 1e-10


def test_linear_route_is_what_exact_gn_runs_on_the_first_block():
    model = make_model(12, 3, 2, 40, activation="relu", first_activation="identity")
    x, y = torch.randn(30, 12, dtype=torch.float64), labels(30, 3)
    result = revgn.ExactGN(model, rtol=1e-2).step(x, y)
    methods = {(r.block, r.coupling): r.method for r in result.blocks}
    assert methods[(0, "F")].startswith("linear") and methods[(0, "G")].startswith("linear")
    assert not methods[(1, "F")].startswith("linear")


def _planted(n, eigenvalues, generator):
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=generator))
    return (Q * eigenvalues) @ Q.t(), Q


@pytest.mark.parametrize("n", [5, 31, 64, 97])
@pytest.mark.parametrize("rtol,atol", [(1e-1, 0.0), (1e-2, 0.0), (3e-3, 0.0), (1e-2, 0.3)])
def test_projector_solve_matches_eigh_away_from_the_threshold(n, rtol, atol):
    g = torch.Generator().manual_seed(n)
    eigenvalues = torch.logspace(0, -9, n, dtype=torch.float64)
    tau = max(rtol * rtol, atol * atol)
    # nothing within 1e-3 (relative) of the threshold
    eigenvalues = torch.where((eigenvalues / tau - 1).abs() < 1e-3, eigenvalues * 1.01, eigenvalues)
    eigenvalues[0] = 1.0
    K, _ = _planted(n, eigenvalues, g)
    R = torch.randn(2, n, 3, dtype=torch.float64, generator=g)
    Kb = torch.stack([K, 2.0 * K])
    Z, rank = projector_solve(Kb, R, rtol, atol)
    for i in range(2):
        want, want_rank = eigh_solve(Kb[i], R[i], rtol, atol)
        assert int(rank[i]) == int(want_rank)
        assert rel_err(Z[i], want) < 1e-10


def test_projector_keeps_a_tie_at_the_threshold_in_part_and_nothing_else_changes():
    """An eigenvalue within the band of the threshold (``PROJECTOR_BAND ||K - tau I||_F``) is
    kept with a factor in [0, 1]; 100 bands away it is decided as eigh decides it."""
    g = torch.Generator().manual_seed(3)
    n, rtol = 40, 1e-2
    tau = rtol * rtol
    eigenvalues = torch.logspace(0, -8, n, dtype=torch.float64)
    eigenvalues[0] = 1.0
    scale = float(torch.linalg.vector_norm(eigenvalues - tau))  # ||K - tau I||_F
    band = PROJECTOR_BAND * scale
    eigenvalues[10] = tau + 0.1 * band   # inside the band
    eigenvalues[11] = tau + 100 * band   # above it
    eigenvalues[12] = tau - 100 * band   # below it
    K, Q = _planted(n, eigenvalues, g)
    R = torch.randn(n, 2, dtype=torch.float64, generator=g)
    Z, rank = projector_solve(K[None], R[None], rtol, 0.0)
    coeff = Q.t() @ Z[0]                 # the solution in the eigenbasis
    target = (Q.t() @ R) / eigenvalues[:, None]
    keep = eigenvalues > tau + band
    drop = (eigenvalues < tau - band)
    assert bool(keep[11]) and bool(drop[12]) and not keep[10] and not drop[10]
    assert rel_err(coeff[keep], target[keep]) < 1e-8
    assert float(coeff[drop].abs().max()) < 1e-8 * float(target[keep].abs().max())
    ratio = coeff[10] / target[10]
    assert bool(((ratio > -1e-6) & (ratio < 1 + 1e-6)).all())
    assert int(rank[0]) in (int(keep.sum()), int(keep.sum()) + 1)


def test_spectral_projector_is_a_projector():
    g = torch.Generator().manual_seed(0)
    K, Q = _planted(50, torch.logspace(0, -6, 50, dtype=torch.float64), g)
    P = spectral_projector(K[None], torch.full((1, 1, 1), 1e-3, dtype=torch.float64))[0]
    assert rel_err(P @ P, P) < 1e-12 and rel_err(P, P.t()) < 1e-14
    assert round(float(torch.trace(P))) == int((torch.logspace(0, -6, 50) > 1e-3).sum())


def test_projector_solver_in_exact_gn_matches_eigh():
    model = make_model(12, 3, 2, 40, activation="relu", first_activation="identity")
    x, y = torch.randn(35, 12, dtype=torch.float64), labels(35, 3)
    want, _ = revgn.ExactGN(copy.deepcopy(model), solver="eigh", rtol=1e-2).direction(x, y)
    got, result = revgn.ExactGN(model, solver="projector", rtol=1e-2).direction(x, y)
    assert all("projector" in r.method and "->" not in r.method for r in result.blocks)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-9


def test_a_coupling_truncated_last_step_skips_the_cholesky_and_solves_the_same():
    model = make_model(12, 3, 2, 40, activation="relu", first_activation="relu")
    x, y = torch.randn(35, 12, dtype=torch.float64), labels(35, 3)
    opt = revgn.ExactGN(model, rtol=1e-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        first, r1 = opt.direction(x, y)
        second, r2 = opt.direction(x, y)
    assert all(r.rank < r.rows for r in r1.blocks)
    def routes(result):  # the top block's F names its factored target after the route
        return {r.method.replace(" (rank-3 target)", "") for r in result.blocks}
    assert routes(r1) == {"cholesky->eigh"}
    assert routes(r2) == {"cholesky->eigh (truncated last step)"}
    for a, b in zip(first, second):
        assert rel_err(a, b) < 1e-12


@pytest.fixture(scope="module")
def paper_mnist():
    from revgn.cli.bench import _mnist_batch, paper_mnist_case
    from revgn.data import default_mnist_dir
    folder = default_mnist_dir()
    if folder is None or not any(folder.glob("train-images-idx3-ubyte*")):
        pytest.skip("no MNIST training images here (shared/data/mnist or REVGN_MNIST_DIR)")
    case = paper_mnist_case(data_dir=str(folder))
    return case, _mnist_batch(case)


def test_paper_mnist_step_agrees_with_the_float64_reference(paper_mnist):
    """The paper's workload (1024 real images, M = 8000, rtol 1e-2): the float32 step on the
    default backend, in its steady state (second step: the Cholesky skipped), against the
    all-float64 reference step. The ranks must match; here no eigenvalue sits near the
    threshold, and the updates agree to 1e-3."""
    case, (x, y) = paper_mnist
    torch.manual_seed(0)
    model = revgn.RevMLP(784, 10, depth=2, bottleneck=8000)
    options = case.gn_options()
    model64 = copy.deepcopy(model).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fast_opt = revgn.ExactGN(model, **options)
        fast_opt.direction(x, y)
        fast, fast_result = fast_opt.direction(x, y)
        ref, ref_result = revgn.ExactGN(model64, **options, backend="reference").direction(
            x.double(), y)
    assert [r.rank for r in fast_result.blocks] == [r.rank for r in ref_result.blocks]
    assert any(r.method.startswith("linear") for r in fast_result.blocks)
    assert any("truncated last step" in r.method for r in fast_result.blocks)
    for a, b in zip(fast, ref):
        assert rel_err(a.double(), b) < 1e-3


@pytest.mark.parametrize("solver,rtol", [("cholesky", 0.0), ("cholesky", 1e-1), ("eigh", 1e-1),
                                         ("damped", 0.0), ("projector", 1e-1)])
@pytest.mark.parametrize("n,M,k,h", [(9, 30, 3, 7), (24, 61, 5, 11)])
def test_a_factored_target_solves_as_the_whole_one(solver, rtol, n, M, k, h):
    """``T = e R`` (the top block's F target): solving for ``e`` alone gives the update, the
    realized change and its factor of the solve on the whole ``T``."""
    g = torch.Generator().manual_seed(n + k)
    A = torch.relu(torch.randn(n, M, dtype=torch.float64, generator=g))
    e = torch.randn(n, k, dtype=torch.float64, generator=g)
    R = torch.randn(k, h, dtype=torch.float64, generator=g)
    cfg = dict(rtol=rtol, pinv_damping=1e-3 if solver == "damped" else 0.0)
    whole = solve_coupling(A, e @ R, True, SolverConfig(solver, **cfg))
    factored = solve_coupling(A, e @ R, True, SolverConfig(solver, **cfg), T_factors=(e, R))
    assert factored.rank == whole.rank and factored.exact == whole.exact
    assert rel_err(_update(factored, A), _update(whole, A)) < 1e-9
    assert rel_err(factored.realized, whole.realized) < 1e-9
    if factored.realized_left is not None:
        assert rel_err(factored.realized_left @ R, factored.realized) < 1e-12


def _fast_backends():
    from revgn import backend
    names = [b for b in ("cpp", "triton") if backend.available(b, torch.device("cpu"))]
    return names or [pytest.param("none", marks=pytest.mark.skip(reason="no fast CPU backend"))]


@pytest.mark.parametrize("name", _fast_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_coupling_tangent_of_a_thin_tangent(name, dtype, activation):
    """``coupling_tangent(P, e, R C, W)``: a thin ``du`` (n x k) through ``C`` of k rows, as the
    top block pushes its factored target; every backend against the reference."""
    from revgn.ops import coupling_tangent_ref
    g = torch.Generator().manual_seed(7)
    n, k, h, M = 37, 5, 19, 70
    pre = torch.randn(n, M, generator=g).to(dtype)
    e = torch.randn(n, k, generator=g).to(dtype)
    RC = torch.randn(k, M, generator=g).to(dtype)
    W = torch.randn(h, M, generator=g).to(dtype)
    got = bind(name, "cpu").coupling_tangent(pre, e, RC, W, activation)
    want = coupling_tangent_ref(pre, e, RC, W, activation)
    assert got.shape == (n, h)
    assert rel_err(got, want) < (1e-5 if dtype == torch.float32 else 1e-12)


def test_a_short_batch_does_not_send_the_next_full_one_past_its_cholesky():
    model = make_model(12, 3, 2, 40, activation="relu", first_activation="relu")
    opt = revgn.ExactGN(model, rtol=1e-3)
    x, y = torch.randn(12, 12, dtype=torch.float64), labels(12, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for n in (12, 6, 12):
            _, result = opt.direction(x[:n], y[:n])
    assert all(r.rank == r.rows for r in result.blocks)
    assert not any("truncated last step" in r.method for r in result.blocks)


def test_projector_on_a_zero_gram_is_zero_like_eigh():
    K, R = torch.zeros(1, 4, 4, dtype=torch.float64), torch.randn(1, 4, 2, dtype=torch.float64)
    Z, rank = projector_solve(K, R, 1e-2, 0.0)
    assert torch.equal(Z, torch.zeros_like(Z)) and int(rank[0]) == 0


def test_the_cpp_tangent_works_after_a_call_under_inference_mode():
    from revgn import backend
    if not backend.available("cpp", torch.device("cpu")):
        pytest.skip("the extension is not built here")
    ops = bind("cpp", "cpu")
    g = torch.Generator().manual_seed(1)
    pre, du = torch.randn(5, 9, generator=g), torch.randn(5, 3, generator=g)
    C, W = torch.randn(3, 9, generator=g), torch.randn(3, 9, generator=g)
    with torch.inference_mode():
        ops.coupling_tangent(pre, du, C.clone(), W, "relu")
    got = ops.coupling_tangent(pre, du, C, W, "relu")
    from revgn.ops import coupling_tangent_ref
    assert rel_err(got, coupling_tangent_ref(pre, du, C, W, "relu")) < 1e-6


def test_a_failed_step_leaves_every_parameter_as_it_was(monkeypatch):
    """Any error after some blocks were updated (not only a non-finite update) undoes them."""
    import revgn.sweep as sweep
    model = make_model(12, 3, 3, 40, activation="relu", first_activation="identity")
    x, y = torch.randn(20, 12, dtype=torch.float64), labels(20, 3)
    before = [p.detach().clone() for p in model.parameters()]
    real = sweep.block_gn_step

    def fails_at_block_0(index, *args, **kwargs):
        if index == 0:
            raise RuntimeError("planted")
        return real(index, *args, **kwargs)
    monkeypatch.setattr(sweep, "block_gn_step", fails_at_block_0)
    with pytest.raises(RuntimeError, match="planted"):
        revgn.ExactGN(model, lr=0.5).step(x, y)
    for p, q in zip(model.parameters(), before):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_cpp_gram_of_half_precision_inputs(dtype):
    """The blocked Gram covers float32 and float64; other dtypes keep the plain product (EGN
    on a bfloat16 model reaches it)."""
    from revgn import backend
    if not backend.available("cpp", torch.device("cpu")):
        pytest.skip("the extension is not built here")
    A = torch.randn(300, 7).to(dtype)
    got = bind("cpp", "cpu").gram(A, True)
    assert got.dtype == dtype and rel_err(got.float(), (A.float() @ A.float().t() + 1)) < 2e-2

"""The pseudoinverse solvers agree with the SVD of A~ where their assumptions hold."""
import pytest
import torch

from revgn.ops import gram_solve, reference_ops
from revgn.ops.solve import FELL_BACK, SOLVED
from revgn.solvers import SolverConfig, solve_coupling, with_ones
from tests.helpers import rel_err


def _dense_update(sol, A):
    dW, db = sol.parameter_update(A, reference_ops())
    return dW if db is None else torch.cat([dW, db[:, None]], dim=1)


def _random_A(n, M, rank=None, dtype=torch.float64):
    if rank is None:
        return torch.randn(n, M, dtype=dtype)
    return torch.randn(n, rank, dtype=dtype) @ torch.randn(rank, M, dtype=dtype)


@pytest.mark.parametrize("solver", ["cholesky", "eigh", "qr", "rsvd"])
@pytest.mark.parametrize("n,M,h,bias", [(5, 17, 3, True), (13, 40, 7, False), (33, 33, 4, True)])
def test_full_rank_solvers_match_svd(solver, n, M, h, bias):
    A, T = _random_A(n, M), torch.randn(n, h, dtype=torch.float64)
    ref = solve_coupling(A, T, bias, SolverConfig("svd"))
    sol = solve_coupling(A, T, bias, SolverConfig(solver, generator=torch.Generator().manual_seed(0)))
    assert sol.exact and sol.rank == n
    assert rel_err(_dense_update(sol, A), _dense_update(ref, A)) < 1e-9
    assert rel_err(sol.realized, T) < 1e-9


@pytest.mark.parametrize("solver", ["eigh", "qr", "svd", "cholesky"])
def test_truncation_equals_svd_truncation(solver):
    n, M, h = 12, 30, 5
    # singular values spread over decades so that rtol=1e-2 cuts some of them
    U, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(M + 1, n, dtype=torch.float64))
    S = torch.logspace(0, -4, n, dtype=torch.float64)
    At = U @ torch.diag(S) @ V.t()
    A, T = At[:, :-1], torch.randn(n, h, dtype=torch.float64)
    # A~ = [A, column]: solve with the last column as a generic column (bias=False on At)
    rtol = 1e-2
    expected = torch.linalg.pinv(At, rtol=rtol) @ T
    sol = solve_coupling(At, T, False, SolverConfig(solver, rtol=rtol))
    keep = int((S > rtol * S[0]).sum())
    assert sol.rank == keep < n
    assert not sol.exact
    assert rel_err(_dense_update(sol, At).t(), expected) < 1e-8


def _conditioned_A(n, M, cond):
    U, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(M, n, dtype=torch.float64))
    return U @ torch.diag(torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n,
                                         dtype=torch.float64)) @ V.t()


@pytest.mark.parametrize("solver", ["cholesky", "eigh"])
@pytest.mark.parametrize("n,M,h,bias", [(12, 15, 3, True), (37, 64, 5, False)])
def test_ill_conditioned_float64_gram_solve_is_refined_to_svd_accuracy(solver, n, M, h, bias):
    A, T = _conditioned_A(n, M, 1e6), torch.randn(n, h, dtype=torch.float64)
    At = with_ones(A, bias)
    # without refinement, D = A~^T K^-1 T misses T by about eps * cond(A~)^2
    Z = gram_solve(At @ At.t(), T, "cholesky", ops=reference_ops()).Z
    assert rel_err(At @ (At.t() @ Z), T) > 1e-8
    sol = solve_coupling(A, T, bias, SolverConfig(solver))
    assert sol.exact and sol.method.endswith("+refined")
    assert rel_err(At @ _dense_update(sol, A).t(), T) < 1e-9
    # the report's A~ D and the test's are the same product, up to its rounding (D is as large
    # as |T| cond(A~)^2 / s_max, so the rounding is far above eps |T|)
    D = _dense_update(sol, A).t()
    rounding = 10 * At.shape[1] * torch.finfo(torch.float64).eps * float(
        At.norm() * D.norm() / T.norm())
    assert rel_err(sol.realized, At @ D) < rounding
    ref = solve_coupling(A, T, bias, SolverConfig("svd"))
    assert rel_err(_dense_update(sol, A), _dense_update(ref, A)) < 1e-6


def test_float32_and_well_conditioned_solves_are_not_refined():
    A, T = torch.randn(12, 40, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64)
    assert solve_coupling(A, T, True, SolverConfig("cholesky")).method == "cholesky"
    A32 = _conditioned_A(12, 40, 1e2).float()
    assert solve_coupling(A32, T.float(), True, SolverConfig("cholesky")).method == "cholesky"


@pytest.mark.parametrize("rtol,route", [(0.0, "cholesky->qr"), (1e-2, "cholesky->eigh")])
def test_cholesky_falls_back_to_pseudoinverse_on_rank_deficiency(rtol, route):
    # below the Gram's floor the truncation is redone by QR; at or above it eigh's stands
    n, M, h = 20, 40, 3
    A, T = _random_A(n, M, rank=6), torch.randn(n, h, dtype=torch.float64)
    sol = solve_coupling(A, T, True, SolverConfig("cholesky", rtol=rtol))
    assert sol.method == route and sol.rank == 7 and not sol.exact
    expected = torch.linalg.pinv(with_ones(A, True), rtol=rtol or None) @ T
    assert rel_err(_dense_update(sol, A).t(), expected) < 1e-8


@pytest.mark.parametrize("solver", ["cholesky", "eigh"])
def test_float32_singular_values_under_the_gram_floor_go_to_qr(solver):
    # cond(A~) = 1e4: beyond what the float32 Gram resolves (1 / gram_rtol_floor = 286), well
    # within what QR of A~ resolves; with the default rtol=0 the step must stay exact
    n, M, h = 17, 40, 3
    A64 = _conditioned_A(n, M, 1e4)
    T64 = torch.randn(n, h, dtype=torch.float64)
    sol = solve_coupling(A64.float(), T64.float(), False, SolverConfig(solver))
    assert sol.method == f"{solver}->qr" and sol.rank == n and sol.exact
    assert rel_err(A64 @ _dense_update(sol, A64.float()).double().t(), T64) < 1e-3
    # an explicit rtol at or above the floor keeps the Gram's truncation
    coarse = solve_coupling(A64.float(), T64.float(), False, SolverConfig(solver, rtol=1e-2))
    assert not coarse.method.endswith("->qr") and coarse.rank < n


def test_the_qr_route_follows_the_threshold_that_cut():
    n, M, h = 20, 40, 3
    T = torch.randn(n, h, dtype=torch.float64)
    # rank 6 whose smallest singular values (1e-9 s_max) lie under the float64 Gram floor: both
    # Gram solvers hand the coupling to QR, which keeps all 6, unless the rank is known in
    # advance (a linear block), which keeps the Gram's cut
    U, _ = torch.linalg.qr(torch.randn(n, 6, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(M, 6, dtype=torch.float64))
    A = U @ torch.diag(torch.logspace(0, -9, 6, dtype=torch.float64)) @ V.t()
    for solver in ("cholesky", "eigh"):
        sol = solve_coupling(A, T, False, SolverConfig(solver))
        assert sol.method == f"{solver}->qr" and sol.rank == 6 and not sol.exact
        sol = solve_coupling(A, T, False, SolverConfig(solver), max_rank=6)
        assert not sol.method.endswith("->qr") and sol.rank == 4
    # a cut set by atol is the caller's: no QR
    A = torch.randn(n, M, dtype=torch.float64)
    s = torch.linalg.svdvals(with_ones(A, True))
    sol = solve_coupling(A, T, True, SolverConfig("cholesky", atol=float(s[-3] * s[-2]) ** 0.5))
    assert sol.method == "cholesky->eigh" and sol.rank == n - 2


def test_known_rank_skips_cholesky():
    A, T = _random_A(10, 30, rank=4), torch.randn(10, 2, dtype=torch.float64)
    sol = solve_coupling(A, T, True, SolverConfig("cholesky"), max_rank=5)
    assert sol.method == "cholesky->eigh (rank known)" and sol.rank == 5


@pytest.mark.parametrize("relative", [True, False])
def test_damped_equals_closed_form(relative):
    n, M, h, lam = 9, 25, 4, 0.05
    A, T = _random_A(n, M), torch.randn(n, h, dtype=torch.float64)
    At = with_ones(A, True)
    K = At @ At.t()
    abs_lam = lam * torch.linalg.svdvals(At)[0] ** 2 if relative else lam
    expected = At.t() @ torch.linalg.solve(K + abs_lam * torch.eye(n, dtype=K.dtype), T)
    sol = solve_coupling(A, T, True, SolverConfig("damped", pinv_damping=lam,
                                                  pinv_damping_relative=relative))
    assert not sol.exact
    assert rel_err(_dense_update(sol, A).t(), expected) < 1e-9


def test_transpose_is_a_tilde_transpose_t():
    A, T = _random_A(7, 11), torch.randn(7, 3, dtype=torch.float64)
    sol = solve_coupling(A, T, True, SolverConfig("transpose"))
    assert rel_err(_dense_update(sol, A).t(), with_ones(A, True).t() @ T) < 1e-14


def test_tall_case_is_least_squares():
    A, T = _random_A(30, 8), torch.randn(30, 3, dtype=torch.float64)
    sol = solve_coupling(A, T, True, SolverConfig("cholesky"))
    At = with_ones(A, True)
    expected = torch.linalg.lstsq(At, T).solution
    assert sol.method == "tall-eigh" and not sol.exact and sol.rank == 9
    assert rel_err(_dense_update(sol, A).t(), expected) < 1e-8


def test_rsvd_low_rank_equals_truncated_svd():
    n, M = 15, 50
    A, T = _random_A(n, M, rank=4), torch.randn(n, 2, dtype=torch.float64)
    cfg = SolverConfig("rsvd", rsvd_rank=5, generator=torch.Generator().manual_seed(3))
    sol = solve_coupling(A, T, True, cfg)
    expected = torch.linalg.pinv(with_ones(A, True), rtol=1e-10) @ T
    assert sol.rank == 5
    assert rel_err(_dense_update(sol, A).t(), expected) < 1e-8


def test_gram_solve_batched_status_per_system():
    n = 6
    good = torch.randn(n, n + 3, dtype=torch.float64)
    bad = torch.randn(n, 2, dtype=torch.float64)
    K = torch.stack([good @ good.t(), bad @ bad.t()])
    R = torch.randn(2, n, 2, dtype=torch.float64)
    sol = gram_solve(K, R, "cholesky", rtol=1e-7, ops=reference_ops())
    assert sol.status.tolist() == [SOLVED, FELL_BACK]
    assert sol.rank.tolist() == [n, 2]
    assert rel_err(sol.Z[0], torch.linalg.solve(K[0], R[0])) < 1e-10
    assert rel_err(sol.Z[1], torch.linalg.pinv(K[1], rtol=1e-10, hermitian=True) @ R[1]) < 1e-8

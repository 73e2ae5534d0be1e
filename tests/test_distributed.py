"""Tensor-parallel ExactGN (``revgn.distributed``) on 2 gloo processes equals one process.

One spawn of 2 processes on 127.0.0.1 runs every case (starting processes costs more than the
cases); the tests read its report. The children unpickle ``_two_rank_checks`` by module name:
pytest's default import mode puts tests/ on ``sys.path``, which spawn hands down.
"""
import pytest
import torch
import torch.distributed as dist

from revgn.distributed import DistributedExactGN, shard_bounds, shard_model
from revgn.distributed_check import ParityCase, parity_cases, run_local
from revgn.distributed_comm import tensor_parallel_elements
from revgn.exact_gn import NonFiniteStepError

TOL = {"float64": 1e-10, "float32": 1e-5}

# M = 37 splits 19 + 18; n = 10 > h + 1 = 7, so the linear first block is rank deficient and
# its inexact F exercises the cross-term all-reduce.
CASES = {
    f"{loss}-{dtype}": ParityCase(loss=loss, dtype=dtype)
    for loss in ("cross_entropy", "mse") for dtype in ("float64", "float32")}
# a middle block (full inversion of F and G), and the other options
CASES["depth3-options"] = ParityCase(
    depth=3, lr=0.1, options=dict(curvature="damped", damping=0.1, solver="eigh", rtol=1e-2,
                                  step_scaling="per_block", weight_decay=1e-2))
# no inverted bottleneck: the h = 6 columns of W split 3 + 3; n <= h + 1
CASES["no-bottleneck-damped"] = ParityCase(
    loss="mse", bottleneck=False, n=6, options=dict(solver="damped", pinv_damping=1e-3))


def _rank_error(fn):
    try:
        fn()
    except (ValueError, NonFiniteStepError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _two_rank_checks(cases):
    out = dict(parity=parity_cases(cases))
    case = ParityCase()
    x, y = next(case.batches())
    # the seed differs by rank: both ranks must refuse to shard
    out["mismatch"] = _rank_error(lambda: shard_model(ParityCase(seed=dist.get_rank()).model()))
    sharded = shard_model(case.model())
    out["tall"] = _rank_error(lambda: DistributedExactGN(sharded).step(
        torch.randn(case.M + 2, case.d, dtype=torch.float64), torch.zeros(case.M + 2,
                                                                          dtype=torch.long)))
    out["fine_rtol"] = _rank_error(lambda: DistributedExactGN(sharded, rtol=1e-9))
    with torch.no_grad():
        sharded.blocks[0].F.W[0, 0] = float("inf")
    before = sharded.blocks[1].G.W.clone()
    skipped = DistributedExactGN(sharded, on_nonfinite="skip").step(x, y)
    out["skip"] = (skipped.applied, bool(torch.equal(before, sharded.blocks[1].G.W)))
    out["raise"] = _rank_error(lambda: DistributedExactGN(sharded).step(x, y))
    return out if dist.get_rank() == 0 else None


@pytest.fixture(scope="module")
def two_ranks():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = run_local(2, _two_rank_checks, list(CASES.values()), timeout_s=60)
    out["parity"] = dict(zip(CASES, out["parity"]))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_two_gloo_ranks_match_one_process(two_ranks, name):
    r = two_ranks["parity"][name]
    tol = TOL[r["case"]["dtype"]]
    assert r["W"] < tol and r["theta"] < tol, r
    assert r["losses"] < tol, r
    assert r["reports"], "a coupling's rank or exactness differs from one process"
    # the redundant solves kept the replicated b's bit-identical
    assert r["replica_spread"] == 0.0


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.dtype == "float32"])
def test_float32_gap_is_float32_rounding(two_ranks, name):
    # against float64 from the same start, the sharded run is as close as one process is
    f64 = two_ranks["parity"][name]["float64"]
    assert f64["distributed"] < 1e-5 and f64["single"] < 1e-5, f64


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_forward_equals_full_forward(two_ranks, name):
    r = two_ranks["parity"][name]
    assert r["forward"] < TOL[r["case"]["dtype"]]


@pytest.mark.parametrize("name", list(CASES))
def test_all_reduced_volume_matches_the_derivation(two_ranks, name):
    r = two_ranks["parity"][name]
    assert r["reduced_per_step"] == r["predicted_per_step"]


def test_ranks_refuse_bad_setups_together(two_ranks):
    assert "different models" in two_ranks["mismatch"]
    assert "exceeds M + 1" in two_ranks["tall"]
    assert "finer than the Gram" in two_ranks["fine_rtol"]
    assert two_ranks["skip"] == (False, True)
    assert two_ranks["raise"].startswith("NonFiniteStepError")


@pytest.mark.parametrize("width,world", [(37, 2), (37, 5), (8, 8), (8000, 3)])
def test_shard_bounds_are_contiguous_and_balanced(width, world):
    bounds = [shard_bounds(width, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == width
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
    assert bounds == [(int(t[0]), int(t[-1]) + 1) for t in
                      torch.tensor_split(torch.arange(width), world)]


def test_volume_per_coupling_against_the_plain_count():
    # every coupling: forward (n, h), inversion (2n, h), Gram (n, n) would be 2L (3nh + n^2);
    # the top block's reuse of the forward (-2nh), the bottom F's skipped inversion (-2nh) and
    # the triangle of the Gram (n(n+1)/2 instead of n^2) are what the implementation saves
    n, h, L = 10, 6, 3
    plain = 2 * L * (3 * n * h + n * n)
    got = tensor_parallel_elements(n, h, L)["total"]
    assert got == plain - 4 * n * h - 2 * L * (n * n - n * (n + 1) // 2)

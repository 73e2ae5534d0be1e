"""Tensor-parallel ExactGN (``revgn.distributed``) on 1, 2 and 3 gloo processes equals one
process.

One spawn per group size on 127.0.0.1 runs every case (starting processes costs more than the
cases); the tests read its report. The children unpickle ``_rank_checks`` by module name:
pytest's default import mode puts tests/ on ``sys.path``, which spawn hands down.
"""
import dataclasses

import pytest
import torch
import torch.distributed as dist

from revgn.distributed import DistributedExactGN, shard_bounds, shard_model
from revgn.distributed_comm import tensor_parallel_elements
from revgn.distributed_parity import ParityCase, parity_cases, run_local
from revgn.exact_gn import NonFiniteStepError

TOL = {"float64": 1e-10, "float32": 1e-5}
# direction() after the steps is a fresh solve at parameters that already differ by the steps'
# rounding: in float32 each of the two runs is about 1e-5 from float64 (asserted below)
DIRECTION_TOL = {"float64": 1e-10, "float32": 1e-4}
WORLDS = (1, 2, 3)

# M = 37 splits 19 + 18 and 13 + 12 + 12; n = 10 > h + 1 = 7, so the linear first block is rank
# deficient. Its couplings are folded (solved in the span of [u, 1]); k = 3 < h = 6, so the top
# block's F target is kept factored.
CASES = {
    f"{loss}-{dtype}": ParityCase(loss=loss, dtype=dtype)
    for loss in ("cross_entropy", "mse") for dtype in ("float64", "float32")}
# a middle block (full inversion of F and G), and the other options
CASES["depth3-options"] = ParityCase(
    depth=3, lr=0.1, options=dict(curvature="damped", damping=0.1, solver="eigh", rtol=1e-2,
                                  step_scaling="per_block", weight_decay=1e-2))
# no inverted bottleneck: the h = 6 columns of W split 3 + 3 (2 + 2 + 2); n <= h + 1
CASES["no-bottleneck-damped"] = ParityCase(
    loss="mse", bottleneck=False, n=6, options=dict(solver="damped", pinv_damping=1e-3))
# every block ReLU, rtol = 1e-2 truncates the top F (factored target, factored cross-term) and a
# middle F (the cross-term pushed through G's shards)
CASES["truncated-relu"] = ParityCase(
    depth=3, n=20, init_std=1.0, first_activation="relu", options=dict(rtol=1e-2))
# the linear first block with a solver that needs A: the folded coupling solves on A = u C_r
CASES["linear-damped"] = ParityCase(options=dict(solver="damped", pinv_damping=1e-3))
# float32 inversion drift above drift_tol: the first step is undone and redone anchored every
# block; the batches come through step(closure)
CASES["drift-rerun-closure"] = ParityCase(
    dtype="float32", depth=3, closure=True, options=dict(drift_tol=1e-9))
CASES["anchored"] = ParityCase(depth=3, options=dict(anchor_every=1))


def _rank_error(fn):
    try:
        fn()
    except (ValueError, NonFiniteStepError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _refusals():
    """What every rank of a group of two or more must refuse or skip together."""
    out = {}
    case = ParityCase()
    x, y = next(case.batches())
    # the seed differs by rank: every rank must refuse to shard
    out["mismatch"] = _rank_error(lambda: shard_model(ParityCase(seed=dist.get_rank()).model()))
    sharded = shard_model(case.model())
    out["tall"] = _rank_error(lambda: DistributedExactGN(sharded).step(
        torch.randn(case.M + 2, case.d, dtype=torch.float64), torch.zeros(case.M + 2,
                                                                          dtype=torch.long)))
    out["fine_rtol"] = _rank_error(lambda: DistributedExactGN(sharded, rtol=1e-9))
    # a non-finite W on rank 0 only: the outputs are non-finite on every rank
    with torch.no_grad():
        sharded.blocks[0].F.W[0, 0] = float("inf")
    before = sharded.blocks[1].G.W.clone()
    skipped = DistributedExactGN(sharded, on_nonfinite="skip").step(x, y)
    out["skip"] = (skipped.applied, bool(torch.equal(before, sharded.blocks[1].G.W)))
    out["raise"] = _rank_error(lambda: DistributedExactGN(sharded).step(x, y))
    # block 0's explicit update (after the top block's was applied) overflows on rank 1's
    # slice only: every rank must undo the top block and raise
    sharded = shard_model(case.model())
    opt = DistributedExactGN(sharded)
    finite, calls = sharded.all_finite, []

    def overflow_on_rank_1(*tensors):
        calls.append(1)
        if len(calls) > 1 and dist.get_rank() == 1:
            tensors = (torch.full((1,), float("inf")),)
        return finite(*tensors)
    sharded.all_finite = overflow_on_rank_1
    before = [p.clone() for p in sharded.parameters()]
    out["overflow"] = (_rank_error(lambda: opt.step(x, y)), len(calls),
                       max(float((a - b).abs().max()) for a, b in zip(before,
                                                                      sharded.parameters())))
    return out


def _rebinds() -> tuple:
    """The op table of a model that moved: bound for another device, bound again at the step."""
    case = ParityCase()
    opt = DistributedExactGN(shard_model(case.model()), **case.optimizer_kwargs())
    opt.solver_config.ops = dataclasses.replace(opt.ops, device=torch.device("meta"))
    stale = opt.solver_config.ops.device
    result = opt.step(*next(case.batches()))
    return str(stale), str(opt.solver_config.ops.device), result.applied


def _rank_checks(cases):
    out = dict(parity=parity_cases(cases), rebind=_rebinds())
    if dist.get_world_size() > 1:
        out.update(_refusals())
    return out if dist.get_rank() == 0 else None


@pytest.fixture(scope="module", params=WORLDS, ids=[f"{w}-ranks" for w in WORLDS])
def ranks(request):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = run_local(request.param, _rank_checks, list(CASES.values()), timeout_s=120)
    out["parity"] = dict(zip(CASES, out["parity"]))
    out["world"] = request.param
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_step_matches_one_process(ranks, name):
    r = ranks["parity"][name]
    assert r["world"] == ranks["world"]
    tol = TOL[r["case"]["dtype"]]
    assert r["W"] < tol and r["theta"] < tol, r
    assert r["losses"] < tol, r
    assert r["direction"] < DIRECTION_TOL[r["case"]["dtype"]], r
    assert r["reports"], "a coupling's rank, exactness or route, or a step's anchoring differs"
    # the redundant solves kept the replicated b's bit-identical
    assert r["replica_spread"] == 0.0


def test_the_shared_routes_run_on_the_shards(ranks):
    """The cases reach what used to exist in one process only."""
    methods = {name: " ".join(r["methods"]) for name, r in ranks["parity"].items()}
    assert "linear" in methods["cross_entropy-float64"]             # folded linear couplings
    assert "rank-3 target" in methods["cross_entropy-float64"]      # factored top-block target
    assert "linear" not in methods["linear-damped"]                 # folded, solved on A = u C_r
    # the top F truncated: its factored solve and the cross-term of its realized change
    assert "->eigh (rank-3 target)" in methods["truncated-relu"]
    assert ranks["parity"]["drift-rerun-closure"]["reanchored"] == [True, False, False]


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.dtype == "float32"])
def test_float32_gap_is_float32_rounding(ranks, name):
    # against float64 from the same start, the sharded run is as close as one process is
    f64 = ranks["parity"][name]["float64"]
    assert f64["distributed"] < 1e-5 and f64["single"] < 1e-5, f64
    assert f64["direction_distributed"] < 5e-5 and f64["direction_single"] < 5e-5, f64


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_forward_equals_full_forward(ranks, name):
    r = ranks["parity"][name]
    assert r["forward"] < TOL[r["case"]["dtype"]]


@pytest.mark.parametrize("name", list(CASES))
def test_all_reduced_volume_matches_the_derivation(ranks, name):
    r = ranks["parity"][name]
    assert r["reduced_per_step"] == r["predicted_per_step"]


def test_the_op_table_follows_the_model(ranks):
    assert ranks["rebind"] == ("meta", "cpu", True)


def test_ranks_refuse_bad_setups_together(ranks):
    if ranks["world"] == 1:
        pytest.skip("one rank has nobody to disagree with")
    assert "different models" in ranks["mismatch"]
    assert "exceeds M + 1" in ranks["tall"]
    assert "finer than the Gram" in ranks["fine_rtol"]
    assert ranks["skip"] == (False, True)
    assert ranks["raise"].startswith("NonFiniteStepError")
    error, calls, moved = ranks["overflow"]
    assert error.startswith("NonFiniteStepError") and calls == 2
    assert moved < 1e-12  # the top block's update was undone


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


def test_a_folded_block_costs_its_folds_only():
    # folding the first block replaces its forward (2nh), its share of the sweep (G's (2n, h)
    # as the bottom block) and its Gram triangles by the (h, h) fold of each coupling; the
    # verdicts on the two explicit updates are one element each
    n, h, L = 10, 6, 3
    whole = tensor_parallel_elements(n, h, L)
    folded = tensor_parallel_elements(n, h, L, folded_blocks=(0,))
    assert whole["total"] - folded["total"] == 2 * n * h + 2 * n * h + n * (n + 1) - 2 * h * h - 2
    first = tensor_parallel_elements(n, h, L, folded_blocks=(0,), first_step=True)
    assert first["total"] - folded["total"] == h * (h + 1)  # C C^T, once per coupling


def test_parity_out_needs_check(capsys):
    from revgn.distributed_parity import main as parity_main
    with pytest.raises(SystemExit) as exit_info:
        parity_main(["--out", "parity.json"])
    assert exit_info.value.code == 2
    assert "--out writes the comparison of --check" in capsys.readouterr().err

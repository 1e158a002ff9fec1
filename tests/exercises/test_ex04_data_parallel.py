"""Graded: exercise 4, pipeline + data parallelism from MPI communicators (exercises/ex04_data_parallel.py).

    .venv/bin/python -m pytest tests/exercises/test_ex04_data_parallel.py              # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex04_data_parallel.py --impl solutions

grid_coords is tested here; the rest on 4 real MPI ranks (rank side: rank_checks_parallel.py) as grids
of 2 x 2, 1 x 4 and 4 x 1: who is in each of your communicators, in which order; whether your all-reduce
gives the mean over the replicas (computed here, independently), in a few large messages; and whether
data-parallel replicas end with the gradients of the whole batch on one device.
"""
import pytest
import torch

from pipeline_ref import models
from pipeline_ref.front import partition
from pipeline_ref.preflight import build_model
from tests.exercises import rank_checks_parallel as checks

WORLD = 4


@pytest.fixture
def ex(impl):
    return impl("ex04_data_parallel")


def expected_members(pp: int, dp: int, rank: int) -> dict:
    """The world ranks of this rank's pipeline (its row) and data (its column) communicators, in order."""
    stage, replica = rank % pp, rank // pp
    return {"pipeline": {"size": pp, "rank": stage, "members": [replica * pp + s for s in range(pp)]},
            "data": {"size": dp, "rank": replica, "members": [q * pp + stage for q in range(dp)]}}


def assert_communicators(per_rank, pp: int, dp: int) -> None:
    for rank in range(WORLD):
        got, expected = per_rank[rank][(pp, dp)], expected_members(pp, dp, rank)
        for which in ("pipeline", "data"):
            assert got[which] == expected[which], (
                f"{pp} x {dp} grid, world rank {rank}: its {which} communicator has {got[which]['size']} ranks "
                f"(world ranks {got[which]['members']}, in their order there) and this rank is number "
                f"{got[which]['rank']}; expected world ranks {expected[which]['members']}, this rank number "
                f"{expected[which]['rank']}")


@pytest.mark.points(2)
def test_grid_coords_layout(ex):
    """rank = replica * pp + stage: the ranks of one pipeline are neighbours."""
    assert ex.grid_coords(5, 4, 2) == (1, 1), f"rank 5 of a 4 x 2 grid: got {ex.grid_coords(5, 4, 2)}, not (1, 1)"
    for pp, dp in ((1, 1), (2, 2), (4, 2), (2, 4), (1, 4), (4, 1), (3, 5)):
        for rank in range(pp * dp):
            got = ex.grid_coords(rank, pp, dp)
            expected = (rank % pp, rank // pp)
            assert tuple(got) == expected, f"grid_coords({rank}, pp={pp}, dp={dp}) = {got}, expected {expected}"


@pytest.mark.points(1)
def test_grid_coords_refuses_ranks_outside(ex):
    for rank, pp, dp in ((4, 2, 2), (-1, 2, 2), (8, 4, 2)):
        with pytest.raises(ValueError):
            ex.grid_coords(rank, pp, dp)


@pytest.mark.mpi
@pytest.mark.points(3)
def test_communicators_of_a_2x2_grid(on_ranks):
    assert_communicators(on_ranks("ex04.communicators"), 2, 2)


@pytest.mark.mpi
@pytest.mark.points(2)
def test_communicators_of_1x4_and_4x1_grids(on_ranks):
    """Pure data parallel (one stage, 4 replicas) and pure pipeline (4 stages, one replica)."""
    per_rank = on_ranks("ex04.communicators")
    assert_communicators(per_rank, 1, 4)
    assert_communicators(per_rank, 4, 1)


@pytest.mark.mpi
@pytest.mark.points(1)
def test_make_communicators_refuses_wrong_world_size(on_ranks):
    for rank, result in enumerate(on_ranks("ex04.refuses")):
        for (pp, dp), outcome in result.items():
            assert outcome == "ValueError", (
                f"make_communicators on 4 ranks with pp={pp}, dp={dp} ({pp * dp} ranks needed: too "
                f"{'few' if pp * dp > WORLD else 'many'} ranks there) must raise ValueError on every rank, but on "
                f"rank {rank} it {outcome}")


def expected_mean(pp: int, dp: int, rank: int, dtype: torch.dtype) -> list[torch.Tensor]:
    stage = rank % pp
    replicas = [checks.gradient_case(stage, q, dtype) for q in range(dp)]
    return [torch.stack([params[i].grad for params in replicas]).mean(0) for i in range(len(replicas[0]))]


@pytest.mark.mpi
@pytest.mark.points(3)
def test_allreduce_averages_over_replicas(on_ranks):
    """Every rank ends with the mean of its stage's gradients over the replicas (and parameters untouched)."""
    per_rank = on_ranks("ex04.allreduce")
    for pp, dp in checks.GRIDS:
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
            for rank in range(WORLD):
                result = per_rank[rank][(pp, dp, str(dtype))]
                where = f"{pp} x {dp} grid, {dtype}, rank {rank}"
                own = checks.gradient_case(rank % pp, rank // pp, dtype)
                assert result["values_unchanged"], f"{where}: the parameters' values changed (only .grad should)"
                for i, (got, mean) in enumerate(zip(result["grads"], expected_mean(pp, dp, rank, dtype))):
                    shape = tuple(mean.shape)
                    assert got is not None, f"{where}: parameter {i} {shape} has no .grad any more"
                    assert got.dtype == dtype and tuple(got.shape) == shape, (
                        f"{where}: parameter {i}'s .grad is {got.dtype} {tuple(got.shape)}, not {dtype} {shape}")
                    if dp > 1 and torch.equal(got, own[i].grad):
                        pytest.fail(f"{where}: parameter {i}'s .grad is still this replica's own gradient: nothing "
                                    f"was written back (the parameters come as a generator, like "
                                    f"model.parameters(): list() them before going over them twice)", pytrace=False)
                    if dp > 1 and torch.allclose(got, mean * dp, rtol=tol, atol=tol):
                        pytest.fail(f"{where}: parameter {i}'s .grad is the sum over the {dp} replicas, not "
                                    f"their mean (divide by data_comm.Get_size())", pytrace=False)
                    torch.testing.assert_close(got, mean, rtol=tol, atol=tol, msg=lambda m: (
                        f"{where}: parameter {i} {shape}, .grad is not the mean over the {dp} replicas: {m}"))


@pytest.mark.mpi
@pytest.mark.points(2)
def test_allreduce_keeps_each_dtype_when_they_mix(on_ranks):
    """float32 and float64 gradients in one call (either first): each the mean in its own dtype and precision."""
    per_rank = on_ranks("ex04.allreduce")
    for pp, dp in checks.GRIDS:
        for first in checks.MIXED:
            for rank in range(WORLD):
                got = per_rank[rank][(pp, dp, f"mixed, {first} first")]["grads"]
                replicas = [checks.mixed_case(rank % pp, q, first) for q in range(dp)]
                where = f"{pp} x {dp} grid, rank {rank}, float32 and float64 gradients in one call ({first} first)"
                for i, g in enumerate(got):
                    dtype = replicas[0][i].grad.dtype
                    mean = torch.stack([params[i].grad.double() for params in replicas]).mean(0).to(dtype)
                    assert g is not None and g.dtype == dtype, (
                        f"{where}: parameter {i}'s .grad is {None if g is None else g.dtype}, not {dtype}")
                    tol = 1e-12 if dtype == torch.float64 else 1e-6
                    torch.testing.assert_close(g, mean, rtol=tol, atol=tol, msg=lambda m: (
                        f"{where}: parameter {i} ({dtype}) is not the mean at its own precision (a buffer of "
                        f"another dtype rounds it; keep one buffer per dtype): {m}"))


@pytest.mark.mpi
@pytest.mark.points(2)
def test_allreduce_is_bucketed(on_ranks):
    """Five gradients, one dtype: one or two buffer all-reduces (Allreduce), not one per parameter, nothing pickled."""
    per_rank = on_ranks("ex04.allreduce")
    for pp, dp in checks.GRIDS:
        if dp == 1:
            continue
        for dtype in (torch.float64, torch.float32):
            for rank in range(WORLD):
                result = per_rank[rank][(pp, dp, str(dtype))]
                where = f"{pp} x {dp} grid, {dtype}, rank {rank}"
                assert result["pickled_calls"] == 0, (
                    f"{where}: {result['pickled_calls']} lowercase (pickling) reductions; use Allreduce on a "
                    f"buffer (flat.numpy())")
                assert 1 <= result["buffer_calls"] <= 2, (
                    f"{where}: {result['buffer_calls']} Allreduce calls for 5 small gradients of one dtype; "
                    f"pack them into one flat buffer and reduce it once")


@pytest.mark.mpi
@pytest.mark.points(3)
def test_data_parallel_step_equals_one_device(on_ranks):
    """Replicas on their slices of the batch, averaged over your data communicators: the whole batch's gradients."""
    per_rank = on_ranks("ex04.step")
    layers, loss_fn, (inputs, targets) = build_model(checks.DP_MODEL)
    _, grads = models.reference_step(layers, loss_fn, inputs, targets)
    for pp, dp in checks.DP_STEP_GRIDS:
        for rank in range(WORLD):
            stage = rank % pp
            got = per_rank[rank][(pp, dp)]
            owned = partition.uniform(len(layers), pp)[stage]
            expected = {name: g for name, g in grads.items() if int(name.split(".")[0]) in owned}
            where = f"{pp} x {dp} grid, rank {rank} (stage {stage}, replica {rank // pp})"
            assert set(got) == set(expected), f"{where}: gradients of {sorted(got)}, expected {sorted(expected)}"
            for name, grad in expected.items():
                torch.testing.assert_close(got[name], grad, rtol=1e-10, atol=1e-12,
                                           msg=lambda m: f"{where}, {name}: not the one-device gradient: {m}")


@pytest.mark.mpi
@pytest.mark.points(4)
def test_tied_step_equals_one_device(on_ranks):
    """4.4 on a GPT whose head's weight is its token embedding, as 2 x 2 (tied across the whole pipeline), 4 x 1
    (across stages 0 and 3 of 4) and 1 x 4 (on one stage): every rank's gradients are the whole batch's on one
    device; a tied sum over the wrong ranks, or a part counted twice, gives another number."""
    per_rank = on_ranks("ex04.tied_step")
    layers, loss_fn, (inputs, targets) = build_model(checks.TIED_MODEL)
    _, grads = models.reference_step(layers, loss_fn, inputs, targets)
    for pp, dp in checks.TIED_GRIDS:
        for rank in range(WORLD):
            stage, replica = rank % pp, rank // pp
            got, tied = per_rank[rank][(pp, dp)]["grads"], dict(per_rank[rank][(pp, dp)]["tied"])
            where = f"{pp} x {dp} grid, rank {rank} (stage {stage}, replica {replica}; tied {tied or 'nothing'})"
            for name, grad in got.items():
                assert grad is not None, f"{where}: {name} has no .grad any more"
                expected = grads[name]
                if name in tied and stage in tied[name]:
                    holders = tied[name]
                    if torch.allclose(grad, expected * dp, rtol=1e-9, atol=1e-12) and dp > 1:
                        pytest.fail(f"{where}: the tied {name} is {dp} times the one-device gradient: its replicas "
                                    f"were summed, not averaged (a tied sum over ranks of other replicas?)",
                                    pytrace=False)
                    assert not torch.allclose(grad, expected * 2, rtol=1e-9, atol=1e-12), (
                        f"{where}: the tied {name} is twice the one-device gradient: a part counted twice")
                    message = (f"{where}: the tied {name} (held by stages {holders}) is not the one-device "
                               f"gradient: its copies' parts must be summed over exactly the stages holding it, "
                               f"within one replica, after (or before) the replicas' mean")
                else:
                    message = f"{where}: {name} is not the one-device gradient (the mean over the replicas)"
                torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12, msg=lambda m, message=message:
                                           f"{message}: {m}")

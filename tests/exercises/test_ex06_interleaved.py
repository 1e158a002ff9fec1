"""Graded: exercise 6, interleaved 1F1B as data (exercises/ex06_interleaved.py).

    .venv/bin/python -m pytest tests/exercises/test_ex06_interleaved.py                # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex06_interleaved.py --impl solutions

Your schedule goes through pipeline_ref's validator; its simulator, where interleaved 1F1B with v chunks
(a chunk's forward 1/v, backward 2/v) must reach v m / (v m + p - 1) utilization while rank r holds no
more than its warm-up plus one activation; and pipeline_ref's executor on 2 and 3 real MPI ranks, whose
gradients must equal one device's.
"""
import pytest

from pipeline_ref import schedules, simulate
from tests.exercises import rank_checks_pipeline
from tests.exercises import rank_checks_parallel as checks

# (stages, microbatches, chunks): microbatches a multiple of the stages, as interleaving needs.
INTERLEAVED_GRID = [(p, k * p, v) for p in (1, 2, 3, 4) for k in (1, 2, 3) for v in (1, 2, 3, 4)]


@pytest.fixture
def ex(impl):
    return impl("ex06_interleaved")


def table(schedule) -> str:
    return schedules.describe(schedule) if schedule and all(schedule) else repr(schedule)


@pytest.mark.points(3)
def test_interleaved_is_valid_with_v_chunks(ex):
    """Valid; every rank runs the forward and the backward of every microbatch through each of its v chunks."""
    for p, m, v in INTERLEAVED_GRID:
        sched = ex.interleaved(p, m, v)
        where = f"interleaved({p}, {m}, chunks={v})"
        assert isinstance(sched, list) and len(sched) == p, f"{where}: expected one list of actions per rank"
        schedules.validate(sched, m)
        assert schedules.num_chunks(sched) == v, f"{where} uses {schedules.num_chunks(sched)} chunks:\n{table(sched)}"
        for rank, actions in enumerate(sched):
            ops = sorted({a.op for a in actions})
            assert ops == ["B", "F"], f"{where}, rank {rank}: ops {ops}; interleaved 1F1B runs F and B only"
            assert len(actions) == 2 * m * v, f"{where}, rank {rank}: {len(actions)} actions, not 2 m v = {2 * m * v}"
    sched = ex.interleaved(2, 4)
    assert schedules.num_chunks(sched) == 2, "interleaved(2, 4) should use chunks=2 by default"


@pytest.mark.points(3)
def test_interleaved_simulated_utilization(ex):
    """A chunk's forward 1/v and backward 2/v (the stage's work cut in v): utilization v m / (v m + p - 1)."""
    for p, m, v in INTERLEAVED_GRID:
        trace = simulate.simulate(ex.interleaved(p, m, v), forward=1.0 / v, backward=2.0 / v)
        theory = v * m / (v * m + p - 1)
        assert trace.utilization == pytest.approx(theory), (
            f"interleaved({p}, {m}, chunks={v}) simulated: utilization {trace.utilization:.4f}, theory "
            f"v m / (v m + p - 1) = {theory:.4f}\n{table(ex.interleaved(p, m, v))}")


def interleaved_warmup(p: int, rank: int, v: int) -> int:
    return p - rank - 1 if v == 1 else (p - rank - 1) * 2 + (v - 1) * p


@pytest.mark.points(2)
def test_interleaved_stashes_its_warmup_plus_one(ex):
    """Rank r holds at most its warm-up forwards plus one chunk-microbatch at once (1F1B's memory), not all m v."""
    for p, m, v in INTERLEAVED_GRID:
        sched = ex.interleaved(p, m, v)
        trace = simulate.simulate(sched, forward=1.0 / v, backward=2.0 / v)
        bound = [min(m * v, interleaved_warmup(p, r, v) + 1) for r in range(p)]
        assert all(got <= most for got, most in zip(trace.peak_stashed, bound)), (
            f"interleaved({p}, {m}, chunks={v}): the ranks stash {trace.peak_stashed} (microbatch, chunk) "
            f"activations at once; interleaved 1F1B holds at most {bound} (warm-up + 1)\n{table(sched)}")


@pytest.mark.points(1)
def test_interleaved_refuses_what_it_cannot_schedule(ex):
    with pytest.raises(ValueError):
        ex.interleaved(2, 3, 2)           # microbatches not a multiple of the stages
    with pytest.raises(ValueError):
        ex.interleaved(4, 6, 2)
    for bad in (0, -1, True, 2.0):      # no chunk; True and 2.0 are not integers
        with pytest.raises(ValueError):
            ex.interleaved(2, 4, bad)
            pytest.fail(f"interleaved(2, 4, chunks={bad!r}) returned; raise ValueError: chunks must be a positive int")


@pytest.mark.mpi
@pytest.mark.points(3)
def test_interleaved_on_real_ranks_equals_one_device(on_ranks, impl_name, assert_equals_one_device):
    """interleaved(p, m) (its default 2 chunks) through pipeline_ref's executor on 2 and 3 ranks, float64."""
    runs = rank_checks_pipeline.schedule_runs(impl_name, f"{checks.EX06}:interleaved", checks.INTERLEAVED_CASES)
    for cfg, result in zip(runs, on_ranks("ex06.interleaved")[0]):
        assert_equals_one_device(cfg, result)

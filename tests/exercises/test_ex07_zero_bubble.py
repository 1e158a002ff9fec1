"""Graded: exercise 7, the zero-bubble schedule ZB-H1 as data (exercises/ex07_zero_bubble.py).

    .venv/bin/python -m pytest tests/exercises/test_ex07_zero_bubble.py                # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex07_zero_bubble.py --impl solutions

Your schedule goes through pipeline_ref's validator; its simulator, where ZB-H1 (F = I = W = 1) must idle
each rank only p - 1, a third of 1F1B's 3 (p - 1), holding at most p microbatches per stage; and
pipeline_ref's executor on 2 and 3 real MPI ranks (I and W computed apart), whose gradients must equal
one device's.
"""
import pytest

from pipeline_ref import schedules, simulate
from tests.exercises import rank_checks_pipeline
from tests.exercises import rank_checks_parallel as checks

ZB_GRID = [(p, m) for p in (1, 2, 3, 4, 5) for m in (1, 2, 3, 4, 5, 6, 8)]


@pytest.fixture
def ex(impl):
    return impl("ex07_zero_bubble")


def table(schedule) -> str:
    return schedules.describe(schedule) if schedule and all(schedule) else repr(schedule)


@pytest.mark.points(2)
def test_zb_h1_is_valid_and_splits_the_backward(ex):
    """Valid; every stage runs F, I and W (never B) once per microbatch, each kind in microbatch order."""
    for p, m in ZB_GRID:
        sched = ex.zb_h1(p, m)
        where = f"zb_h1({p}, {m})"
        assert isinstance(sched, list) and len(sched) == p, f"{where}: expected one list of actions per stage"
        schedules.validate(sched, m)
        for s, actions in enumerate(sched):
            for op in "FIW":
                assert [a.microbatch for a in actions if a.op == op] == list(range(m)), (
                    f"{where}, stage {s}: the {op}s are not microbatches 0..{m - 1} in order\n{table(sched)}")
            assert all(a.op in "FIW" and a.chunk == 0 for a in actions), f"{where}, stage {s}: {actions}"


@pytest.mark.points(3)
def test_zb_h1_simulated_bubble_and_memory(ex):
    """F = I = W = 1: each rank idles p - 1 (1F1B: 3 (p - 1)) once m >= p, never longer than 1F1B, stashes <= p."""
    for p, m in ZB_GRID:
        sched = ex.zb_h1(p, m)
        trace = simulate.simulate(sched, forward=1.0, input_grad=1.0, weight_grad=1.0)
        where = f"zb_h1({p}, {m}) simulated with F = I = W = 1"
        idle = [trace.makespan - trace.busy(r) for r in range(p)]
        if m >= p:
            assert idle == pytest.approx([p - 1] * p), (
                f"{where}: the ranks idle {idle}, not p - 1 = {p - 1} each (1F1B idles 3 (p - 1) = {3 * (p - 1)})"
                f"\n{table(sched)}")
        else:
            assert trace.makespan <= 3 * (m + p - 1) + 1e-9, (
                f"{where}: makespan {trace.makespan}, longer than 1F1B's 3 (m + p - 1) = {3 * (m + p - 1)}")
        assert max(trace.peak_stashed) <= min(p, m), (
            f"{where}: stages stash {trace.peak_stashed} microbatches at once; ZB-H1 holds at most p (and m)"
            f"\n{table(sched)}")


@pytest.mark.mpi
@pytest.mark.points(3)
def test_zb_h1_on_real_ranks_equals_one_device(on_ranks, impl_name, assert_equals_one_device):
    """zb_h1 through pipeline_ref's executor (I and W computed apart) on 2 and 3 ranks, float64; stash <= p."""
    runs = rank_checks_pipeline.schedule_runs(impl_name, f"{checks.EX07}:zb_h1", checks.ZB_H1_CASES)
    for cfg, result in zip(runs, on_ranks("ex07.zb_h1")[0]):
        assert_equals_one_device(cfg, result)
        stashed = result.trace.peak_stashed
        assert max(stashed) <= cfg.pp, (f"{cfg.pp} stages, {cfg.microbatches} microbatches: measured activations "
                                        f"stashed per stage {stashed}, more than p = {cfg.pp}")

"""Graded: exercise 3, the 1F1B schedule as data (exercises/ex03_1f1b.py).

    .venv/bin/python -m pytest tests/exercises/test_ex03_1f1b.py                   # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex03_1f1b.py --impl solutions

Your schedule goes through pipeline_ref's validator, its simulator (GPipe's utilization, but stage s
stashes at most min(p - s, m) microbatches), and its executor on 2 and 3 real MPI ranks (gradients must
equal one device's, and the measured stash must match).
"""
import pytest

from pipeline_ref import schedules, simulate
from tests.exercises import rank_checks

GRID = [(p, m) for p in (1, 2, 3, 4, 5) for m in (1, 2, 3, 4, 5, 8)]


@pytest.fixture
def ex(impl):
    return impl("ex03_1f1b")


def peak_stash(actions) -> int:
    """Most microbatches that ran their forward and not yet their backward, walking one stage's list."""
    held = peak = 0
    for a in actions:
        held += 1 if a.op == "F" else -1
        peak = max(peak, held)
    return peak


@pytest.mark.points(2)
def test_warmup_forwards(ex):
    assert [ex.warmup_forwards(3, s, 5) for s in range(3)] == [2, 1, 0]
    assert [ex.warmup_forwards(4, s, 8) for s in range(4)] == [3, 2, 1, 0]
    assert [ex.warmup_forwards(4, s, 2) for s in range(4)] == [2, 2, 1, 0], "never more than the microbatches"
    assert ex.warmup_forwards(1, 0, 3) == 0


@pytest.mark.points(2)
def test_1f1b_example_table(ex):
    """The docstring's example, 3 stages and 5 microbatches, action for action."""
    expected = ["F0 F1 F2 B0 F3 B1 F4 B2 B3 B4",
                "F0 F1 B0 F2 B1 F3 B2 F4 B3 B4",
                "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4"]
    got = [" ".join(map(str, actions)) for actions in ex.one_f_one_b(3, 5)]
    assert got == expected, ("one_f_one_b(3, 5) gave\n" + "\n".join(got) + "\nexpected\n" + "\n".join(expected))


@pytest.mark.points(3)
def test_1f1b_valid_and_phases(ex):
    """Valid for every size, microbatches in order, one forward / one backward after the first backward."""
    for p, m in GRID:
        sched = ex.one_f_one_b(p, m)
        schedules.validate(sched, m)
        assert len(sched) == p, f"one_f_one_b({p}, {m}) has {len(sched)} stage lists"
        for s, actions in enumerate(sched):
            where = f"one_f_one_b({p}, {m}), stage {s}: {' '.join(map(str, actions))}"
            for op in "FB":
                assert [a.microbatch for a in actions if a.op == op] == list(range(m)), f"{where}: {op} out of order"
            first_b = next(i for i, a in enumerate(actions) if a.op == "B")
            assert first_b == min(p - s, m), f"{where}: {first_b} forwards before the first backward"
            after = "".join(a.op for a in actions[first_b:])
            assert "FF" not in after, f"{where}: two forwards in a row after the warmup"
            assert peak_stash(actions) == min(p - s, m), f"{where}: holds {peak_stash(actions)} microbatches at once"


@pytest.mark.points(3)
def test_1f1b_simulated_bubble_and_memory(ex):
    """Simulated with F = 1, B = 2: GPipe's utilization m / (m + p - 1), with far fewer activations stashed."""
    for p, m in GRID:
        trace = simulate.simulate(ex.one_f_one_b(p, m), forward=1.0, backward=2.0)
        where = f"one_f_one_b({p}, {m}) simulated"
        theory, stash = simulate.theory_utilization("1f1b", p, m), simulate.theory_peak_stashed("1f1b", p, m)
        assert trace.utilization == pytest.approx(theory), (
            f"{where}: utilization {trace.utilization:.4f}, not {theory:.4f}")
        assert trace.makespan == pytest.approx(3.0 * (m + p - 1)), f"{where}: makespan {trace.makespan}, not 3(m+p-1)"
        assert trace.peak_stashed == stash, f"{where}: stashes {trace.peak_stashed} microbatches per stage, not {stash}"


@pytest.mark.mpi
@pytest.mark.points(4)
def test_1f1b_on_real_ranks_equals_one_device(on_ranks, impl_name, assert_equals_one_device):
    """Your schedule through pipeline_ref's executor on 2 and 3 ranks (synchronous sends), float64."""
    runs = rank_checks.schedule_runs(impl_name, "ex03_1f1b:one_f_one_b", rank_checks.ONE_F_ONE_B_CASES)
    for cfg, result in zip(runs, on_ranks("ex03.executor")[0]):
        assert_equals_one_device(cfg, result)
        expected = simulate.theory_peak_stashed("1f1b", cfg.pp, cfg.microbatches)
        assert result.trace.peak_stashed == expected, (
            f"{cfg.pp} stages, {cfg.microbatches} microbatches: measured activations stashed per stage "
            f"{result.trace.peak_stashed}, 1F1B holds {expected}")

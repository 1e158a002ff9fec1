"""DualPipeV: the order torch's ScheduleDualPipeV runs, valid, and simulated as its closed form says.

(Equal to one device on the ranks: tests/test_beyond_1f1b.py's matrix runs it with the other schedules past 1F1B.)
"""
import random
import sys
from pathlib import Path

import pytest

from pipeline_ref import schedules, simulate
from pipeline_ref.dualpipe import dualpipev, idle_time


def test_the_same_order_as_torch_distributed_pipelining():
    """torch's ScheduleDualPipeV, built on a fake process group, runs the same actions in the same order
    (each OVERLAP_F_B pair as its forward, then its backward)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lessons"))
    from lesson_code import torch_orders
    for p in (1, 2, 3, 4):
        for m in (2 * p, 2 * p + 1, 3 * p + 2):
            assert torch_orders.torch_schedule("dualpipev", p, m, chunks=2) == schedules.build("dualpipev", p, m), (p, m)


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
def test_valid_in_a_v_with_whole_and_split_backwards(p):
    for m in (2 * p, 2 * p + 1, 4 * p):
        schedule = schedules.build("dualpipev", p, m)
        assert schedule.layout == "v" and schedule.num_chunks == 2
        schedules.validate(schedule)
        ops = {a.op for actions in schedule for a in actions}
        assert ops == {"F", "B", "I", "W"}          # whole backwards in the pairs, split ones in the cool-down
    with pytest.raises(schedules.ScheduleError, match=rf"dualpipev needs at least 2 x num_stages microbatches \({2 * p - 1} < {2 * p}\)"):
        schedules.build("dualpipev", p, 2 * p - 1)


def test_simulated_idle_time_is_the_closed_form():
    """Every rank idles (p - 1)(F + I - W) for W <= I <= F <= I + W, whatever m >= 2p; outside that the form is refused."""
    rng = random.Random(0)
    checked = 0
    while checked < 40:
        f, i, w = (rng.choice([0.25, 0.5, 0.75, 1.0, 1.5, 2.0]) for _ in range(3))
        if not w <= i <= f <= i + w:
            with pytest.raises(ValueError, match="closed form holds for W <= I <= F <= I \\+ W"):
                idle_time(3, 6, f, i, w)
            continue
        p = rng.randint(1, 6)
        m = 2 * p + rng.randint(0, 5)
        trace = simulate.simulate(schedules.build("dualpipev", p, m), forward=f, backward=i + w,
                                  input_grad=i, weight_grad=w)
        work = 2 * m * (f + i + w)
        assert [trace.busy(r) for r in range(p)] == pytest.approx([work] * p)
        assert trace.makespan - work == pytest.approx(idle_time(p, m, f, i, w), abs=1e-9), (p, m, f, i, w)
        checked += 1
    with pytest.raises(ValueError, match=r"needs num_microbatches >= 2 num_stages \(5 < 6\)"):
        idle_time(3, 5, 1.0, 1.0, 1.0)


@pytest.mark.parametrize("p", [2, 3, 4, 6])
def test_played_in_sequence_its_bubble_is_zbv_s(p):
    """A whole stage's F = I = W = 1 in two chunks of 1/2: the same utilization as ZB-V, 6m / (6m + p - 1)."""
    for m in (2 * p, 3 * p):
        trace = simulate.simulate(schedules.build("dualpipev", p, m), forward=0.5, backward=1.0,
                                  input_grad=0.5, weight_grad=0.5)
        assert trace.utilization == pytest.approx(6 * m / (6 * m + p - 1), abs=1e-12)
        assert trace.utilization == pytest.approx(simulate.theory_utilization("zbv", p, m), abs=1e-12)
        assert trace.peak_stashed == [2 * p + 1] * p          # half-stage chunks: one more than ZB-V's 2p


@pytest.mark.parametrize("p, m", [(2, 4), (2, 7), (3, 6), (3, 9), (4, 8), (4, 13)])
def test_theory_closed_form_equals_the_simulator(p, m):
    from pipeline_ref import schedules, simulate, theory
    trace = simulate.simulate(schedules.build("dualpipev", p, m), forward=1, input_grad=1, weight_grad=1)
    assert theory.utilization("dualpipev", p, m) == pytest.approx(trace.utilization, rel=1e-12)
    assert theory.peak_stashed("dualpipev", p, m) == trace.peak_stashed


def test_theory_refuses_where_the_closed_form_does_not_hold():
    from pipeline_ref import theory
    with pytest.raises(ValueError, match="needs num_microbatches >= 2 num_stages"):
        theory.utilization("dualpipev", 3, 5)
    with pytest.raises(ValueError, match="holds for F = I = W"):
        theory.utilization("dualpipev", 2, 4, forward=1, input_grad=2, weight_grad=1)

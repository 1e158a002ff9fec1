"""zb-auto, the Zero Bubble paper's heuristic under a memory limit: valid, never over its limit, and refused
clearly.

Its reproduction of the paper's ZB-1p / ZB-2p bubble rates is in tests/test_zero_bubble_paper.py.
"""
import random

import pytest

from pipeline_ref import schedules, simulate
from pipeline_ref.schedules import auto_schedule
from pipeline_ref.schedules.geometry import ScheduleError
from tests.zero_bubble_measures import held


def test_never_over_its_memory_limit_on_random_cases():
    rng = random.Random(30)
    played = 0
    for _ in range(150):
        p, m = rng.randint(1, 8), rng.randint(1, 40)
        limit = rng.randint(1, 3 * p)
        costs = {"forward": rng.uniform(0.5, 2.0), "input_grad": rng.uniform(0.5, 2.0),
                 "weight_grad": rng.uniform(0.2, 2.0), "latency": rng.choice([0.0, rng.uniform(0.0, 0.5)])}
        share = rng.choice([1.0, 1.0, rng.uniform(0.0, 1.0)])
        schedule = schedules.build("zb-auto", p, m, max_in_flight=limit, weight_memory=share, **costs)
        schedules.validate(schedule)
        assert {a.op for actions in schedule for a in actions} <= {"F", "I", "W"}
        assert held(schedule, share) <= limit + 1e-9, (p, m, limit, share)
        trace = simulate.simulate(schedule, forward=costs["forward"], input_grad=costs["input_grad"],
                                  weight_grad=costs["weight_grad"], latency=costs["latency"])
        if share == 1.0:                      # a microbatch held from its F to its W: what the trace counts
            assert max(trace.peak_stashed) <= limit
        played += 1
    assert played == 150


def test_more_memory_never_makes_it_slower_than_zb_h1_s_limit():
    """Its longest stage (the paper's cost): with 2p (ZB-2p) no longer than with p (ZB-1p), and with p no
    longer than ZB-H1's, the hand-made schedule of the same memory."""
    for p, m in ((4, 8), (4, 16), (6, 18), (8, 24)):
        one = auto_schedule.play(p, m, p, 1.0, 1.0, 1.0)[1]
        two = auto_schedule.play(p, m, 2 * p, 1.0, 1.0, 1.0)[1]
        h1 = simulate.simulate(schedules.build("zb-h1", p, m), forward=1.0, input_grad=1.0, weight_grad=1.0)
        longest_h1 = max(h1.idle_inside(r) + h1.busy(r) for r in range(p))
        assert two <= one + 1e-9 and one <= longest_h1 + 1e-9
        assert two < longest_h1                         # the extra memory buys a shorter stage


def test_build_defaults_to_two_p_and_refuses_bad_limits():
    default = schedules.build("zb-auto", 3, 9)
    assert default == schedules.build("zb-auto", 3, 9, max_in_flight=6)
    with pytest.raises(ScheduleError, match=r"max_in_flight must be at least 1 microbatch, got 0"):
        schedules.build("zb-auto", 3, 9, max_in_flight=0)
    with pytest.raises(ScheduleError, match=r"weight_memory must be in \[0, 1\]"):
        schedules.build("zb-auto", 3, 9, weight_memory=1.5)
    with pytest.raises(ScheduleError, match=r"forward: give one non-negative cost, or one per stage \(3\)"):
        schedules.build("zb-auto", 3, 9, forward=[1.0, 2.0])

"""Graded: exercise 5, balancing the stages (exercises/ex05_balancing.py).

    .venv/bin/python -m pytest tests/exercises/test_ex05_balancing.py                 # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex05_balancing.py --impl solutions

Pure Python, no MPI. 5.1-5.2: your split must be a split (contiguous, in order, none empty), and its slowest
stage must cost exactly what the best split found by brute force costs, on seeded random layer costs
and on the cases where filling the stages greedily goes wrong.

5.3-5.5: your step of GPipe against pipeline_ref's simulator on seeded random costs (unequal stages, messages
that take time); your stage costs and causes on traces the simulator makes, each with one cause planted
(many stages for few microbatches, one stage three times slower, slow messages, a pause of the whole machine in
the middle of the step), the parts computed here from what was planted.
"""
import itertools
import math
import random

import pytest

from pipeline_ref import schedules, simulate
from pipeline_ref.sim.trace import Event, Trace

# (costs, stages, the best slowest stage): greedy splits miss each of these, whether they fill a stage up to
# total / stages or just past it, from the first layer or from the last.
TRAPS = [([1, 2, 3, 4, 5, 6], 3, 9), ([9, 6, 6, 8, 5], 3, 13), ([4, 5, 5, 8, 9, 7, 1], 4, 13),
         ([6, 8, 8, 2, 1, 5, 7], 4, 12), ([1, 4, 1, 7, 3, 1, 3, 8], 3, 11), ([7, 9, 4, 9, 8, 4, 9, 1], 4, 16)]


@pytest.fixture
def ex(impl):
    return impl("ex05_balancing")


def stage_costs(costs, ranges) -> list[float]:
    return [math.fsum(costs[r.start:r.stop]) for r in ranges]


def brute_force(costs, num_stages: int) -> float:
    """The cheapest slowest stage over every way of cutting len(costs) layers into num_stages runs."""
    n = len(costs)
    return min(max(stage_costs(costs, [range(a, b) for a, b in zip((0, *cuts), (*cuts, n))]))
               for cuts in itertools.combinations(range(1, n), num_stages - 1))


def random_cases(count: int = 300):
    """Seeded: integer costs (many ties), float costs, and a few layers far costlier than the rest."""
    rng = random.Random(2024)
    for case in range(count):
        n = rng.randint(1, 10)
        kind = case % 3
        if kind == 0:
            costs = [rng.randint(0, 9) for _ in range(n)]
        elif kind == 1:
            costs = [rng.uniform(0.1, 5.0) for _ in range(n)]
        else:
            costs = [rng.choice([1.0, 1.0, 1.0, 20.0]) * rng.uniform(0.5, 1.5) for _ in range(n)]
        yield costs, rng.randint(1, n)


def assert_split(ranges, num_layers: int, num_stages: int, where: str) -> None:
    assert isinstance(ranges, list), f"{where}: returned a {type(ranges).__name__}, not a list of ranges"
    assert len(ranges) == num_stages, f"{where}: {len(ranges)} stages, not {num_stages}: {ranges}"
    start = 0
    for stage, r in enumerate(ranges):
        assert isinstance(r, range) and r.step == 1, f"{where}: stage {stage} is {r!r}, not a range of step 1"
        assert r.start == start and len(r) > 0, (
            f"{where}: stage {stage} is {r!r}; it should start at layer {start} and hold at least one layer "
            f"(contiguous, in order, none empty): {ranges}")
        start = r.stop
    assert start == num_layers, f"{where}: the stages cover layers 0..{start - 1}, not all {num_layers}: {ranges}"


@pytest.mark.points(2)
def test_bottleneck(ex):
    for costs, ranges, expected in [([1, 2, 3, 4, 5, 6], [range(0, 3), range(3, 4), range(4, 6)], 11),
                                    ([1, 2, 3, 4, 5, 6], [range(0, 3), range(3, 5), range(5, 6)], 9),
                                    ([7.5], [range(0, 1)], 7.5), ([0.1] * 10, [range(0, 3), range(3, 10)], 0.7),
                                    ([4, 0, 0, 1], [range(0, 1), range(1, 2), range(2, 4)], 4)]:
        got = ex.bottleneck(costs, ranges)
        assert got == pytest.approx(expected), (
            f"bottleneck({costs}, {ranges}) = {got!r}; the stages cost {stage_costs(costs, ranges)}, so the "
            f"slowest costs {expected}")


@pytest.mark.points(2)
def test_balanced_partition_is_a_split(ex):
    """One non-empty range per stage, contiguous and in order, covering every layer (zero costs too)."""
    for costs, num_stages in [([1, 2, 3], 1), ([1, 2, 3], 3), ([0, 0, 0, 0], 2), ([5, 0, 0, 0, 0], 3),
                              ([1.5] * 7, 4), ([0, 0, 9], 3)]:
        assert_split(ex.balanced_partition(costs, num_stages), len(costs), num_stages,
                     f"balanced_partition({costs}, {num_stages})")


@pytest.mark.points(3)
def test_balanced_partition_beats_greedy(ex):
    """The cases where filling stages greedily up to total / stages leaves a slower stage than necessary."""
    for costs, num_stages, best in TRAPS:
        where = f"balanced_partition({costs}, {num_stages})"
        ranges = ex.balanced_partition(costs, num_stages)
        assert_split(ranges, len(costs), num_stages, where)
        got = max(stage_costs(costs, ranges))
        assert got == pytest.approx(best), (f"{where} = {ranges}: stage costs {stage_costs(costs, ranges)}, "
                                            f"slowest {got:g}; the best split's slowest stage costs {best}")


@pytest.mark.points(4)
def test_balanced_partition_is_optimal(ex):
    """On 300 seeded random cases (up to 10 layers), as good as the best of every possible split."""
    for costs, num_stages in random_cases():
        where = f"balanced_partition({[round(c, 3) for c in costs]}, {num_stages})"
        ranges = ex.balanced_partition(costs, num_stages)
        assert_split(ranges, len(costs), num_stages, where)
        got, best = max(stage_costs(costs, ranges)), brute_force(costs, num_stages)
        assert got == pytest.approx(best, rel=1e-9, abs=1e-12), (
            f"{where} = {ranges}: slowest stage {got:.6g}, but the best split's costs {best:.6g}")


@pytest.mark.points(1)
def test_balanced_partition_refuses_impossible_splits(ex):
    with pytest.raises(ValueError) as refused:
        ex.balanced_partition([1.0, 2.0, 3.0], 4)
    assert "3" in str(refused.value) and "4" in str(refused.value), (
        f"the message should say the number of layers (3) and of stages (4): {refused.value}")
    for bad in (0, -1, True, 2.0):      # True == 1 and 2.0 == 2 would make a split: neither is an int count
        with pytest.raises(ValueError):
            ex.balanced_partition([1.0, 2.0], bad)
            pytest.fail(f"balanced_partition([1.0, 2.0], {bad!r}) returned; raise ValueError: {bad!r} is not an "
                        f"integer number of stages")


# =========================================================================== 5.3-5.5: a measured step explained

CAUSES = ("bubble", "imbalance", "messages", "contention")


def paused(trace: Trace, at: float, seconds: float) -> Trace:
    """``trace`` as if every rank had stopped for ``seconds`` at time ``at`` (another job took the cores): what
    starts later starts later, an op running then ends later; medians and message gaps stay as they were."""
    def shift(t: float) -> float:
        return t + seconds if t >= at else t
    events = [Event(e.rank, e.op, e.microbatch, e.chunk, shift(e.start), shift(e.end)) for e in trace.events]
    return Trace(trace.num_ranks, events, meta=trace.meta)


def planted(forward, backward, latency: float, m: int, pause: float = 0.0) -> Trace:
    p = len(forward)
    trace = simulate.simulate(schedules.build("gpipe", p, m), forward=forward, backward=backward, latency=latency)
    return paused(trace, trace.makespan / 2, pause) if pause else trace


# (what was planted, stages' F, B, latency, microbatches, pause) -> the parts, from what was planted:
# bubble (p - 1)(F + B) at the mean costs; imbalance (m - 1)(max - mean) of F and B; 2 (p - 1) hops of latency.
PLANTED = [("bubble", [1.0] * 4, [2.0] * 4, 0.0, 2, 0.0),
           ("imbalance", [1.0, 3.0], [2.0, 6.0], 0.0, 8, 0.0),
           ("messages", [1.0] * 3, [2.0] * 3, 3.0, 4, 0.0),
           ("contention", [1.0] * 2, [2.0] * 2, 0.0, 4, 10.0),
           ("imbalance", [2.0, 1.0, 1.0], [4.0, 2.0, 2.0], 0.5, 12, 1.0),
           ("messages", [1.0, 1.5], [2.0, 2.5], 4.0, 3, 0.5)]


def planted_parts(forward, backward, latency, m, pause) -> dict:
    p = len(forward)
    mean_f, mean_b = sum(forward) / p, sum(backward) / p
    return {"bubble": (p - 1) * (mean_f + mean_b),
            "imbalance": (m - 1) * (max(forward) - mean_f + max(backward) - mean_b),
            "messages": 2 * (p - 1) * latency, "contention": pause}


@pytest.mark.points(2)
def test_stage_costs_read_off_a_trace(ex):
    """Per rank the median F and B, and the least producer-to-use gap, on planted traces (a pause too)."""
    for _, forward, backward, latency, m, pause in PLANTED:
        trace = planted(forward, backward, latency, m, pause)
        where = f"stage_costs of a GPipe trace with F = {forward}, B = {backward}, latency {latency}, m = {m}"
        got = ex.stage_costs(trace)
        assert isinstance(got, dict) and set(got) >= {"forward", "backward", "latency"}, f"{where}: returned {got!r}"
        assert list(got["forward"]) == pytest.approx(forward) and list(got["backward"]) == pytest.approx(backward), (
            f"{where}: forward {got['forward']}, backward {got['backward']}")
        assert got["latency"] == pytest.approx(latency, abs=1e-9), (
            f"{where}{f' and a pause of {pause}' if pause else ''}: latency {got['latency']}, not {latency}")


@pytest.mark.points(3)
def test_gpipe_step_equals_the_simulator(ex):
    """Your step against pipeline_ref's simulator: 200 seeded random cases, 1-5 stages, unequal costs."""
    rng = random.Random(5)
    for _ in range(200):
        p, m = rng.randint(1, 5), rng.randint(1, 9)
        forward = [round(rng.uniform(0.2, 3.0), 3) for _ in range(p)]
        backward = [round(rng.uniform(0.2, 5.0), 3) for _ in range(p)]
        latency = rng.choice([0.0, 0.1, 1.5])
        expected = simulate.simulate(schedules.build("gpipe", p, m), forward=forward, backward=backward,
                                     latency=latency).makespan
        got = ex.gpipe_step(forward, backward, latency, m)
        assert got == pytest.approx(expected, rel=1e-9), (
            f"gpipe_step({forward}, {backward}, {latency}, {m}) = {got}; the simulator plays that GPipe step in "
            f"{expected:g}")


@pytest.mark.points(3)
def test_explain_gap_names_the_planted_cause(ex):
    """On each planted trace: the four parts as planted (adding up to the gap) and the planted cause named."""
    for cause, forward, backward, latency, m, pause in PLANTED:
        trace = planted(forward, backward, latency, m, pause)
        where = (f"explain_gap of GPipe with F = {forward}, B = {backward}, latency {latency}, m = {m}"
                 f"{f', a pause of {pause}' if pause else ''} (planted: {cause})")
        got = ex.explain_gap(trace, m)
        assert isinstance(got, tuple) and len(got) == 2, f"{where}: returned {got!r}, not (cause, parts)"
        named, parts = got
        expected = planted_parts(forward, backward, latency, m, pause)
        assert isinstance(parts, dict) and set(parts) == set(CAUSES), f"{where}: parts {parts!r}"
        for name in CAUSES:
            assert parts[name] == pytest.approx(expected[name], abs=1e-9), (
                f"{where}: {name} {parts[name]:g}, but {expected[name]:g} was planted ({parts})")
        assert named == cause, f"{where}: named {named!r}, the largest part is {cause!r} ({parts})"

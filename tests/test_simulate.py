"""Tests of pipeline_ref.sim.simulate: the simulator against closed-form theory and hand-derived timings."""
import pytest

from pipeline_ref import schedules, simulate
from pipeline_ref.schedules import Action, ScheduleError

NAMES = ("naive", "gpipe", "1f1b")


def acts(text):
    return [Action(w[0], int(w[1:].split(".")[0]), int(w.split(".")[1]) if "." in w else 0) for w in text.split()]


def timeline(trace, rank):
    return [(e.name, e.start, e.end) for e in sorted(trace.events, key=lambda e: e.start) if e.rank == rank]


# --------------------------------------------------------------------------- theory by hand

def test_theory_values_by_hand():
    assert simulate.theory_utilization("naive", 4, 8) == pytest.approx(1 / 4)
    assert simulate.theory_utilization("gpipe", 4, 8) == pytest.approx(8 / 11)
    assert simulate.theory_utilization("1f1b", 2, 3) == pytest.approx(3 / 4)
    assert simulate.theory_utilization("1f1b", 1, 5) == pytest.approx(1.0)
    assert simulate.theory_bubble("gpipe", 4, 8) == pytest.approx(3 / 11)
    assert simulate.theory_bubble("naive", 3, 5) == pytest.approx(2 / 3)
    assert simulate.theory_peak_stashed("naive", 3, 5) == [1, 1, 1]
    assert simulate.theory_peak_stashed("gpipe", 3, 5) == [5, 5, 5]
    assert simulate.theory_peak_stashed("1f1b", 4, 8) == [4, 3, 2, 1]
    assert simulate.theory_peak_stashed("1f1b", 4, 2) == [2, 2, 2, 1]


@pytest.mark.parametrize("function", [simulate.theory_utilization, simulate.theory_bubble,
                                      simulate.theory_peak_stashed])
def test_theory_rejects_unknown_schedules_and_bad_counts(function):
    with pytest.raises(ValueError) as info:
        function("pipedream", 4, 8)
    assert all(name in str(info.value) for name in NAMES)
    with pytest.raises(ValueError, match="num_stages"):
        function("gpipe", 0, 8)
    with pytest.raises(ValueError, match="num_microbatches"):
        function("gpipe", 4, -1)


# --------------------------------------------------------------------------- simulator against theory

@pytest.mark.parametrize("name", NAMES)
def test_simulated_utilization_and_stash_equal_theory(name):
    for num_stages in range(1, 6):
        for num_microbatches in range(1, 13):
            trace = simulate.simulate(schedules.build(name, num_stages, num_microbatches), forward=1.0, backward=2.0)
            expected = simulate.theory_utilization(name, num_stages, num_microbatches)
            assert abs(trace.utilization - expected) < 1e-12, (name, num_stages, num_microbatches)
            assert trace.peak_stashed == simulate.theory_peak_stashed(name, num_stages, num_microbatches)


@pytest.mark.parametrize("name, num_stages, num_microbatches, makespan", [
    ("naive", 3, 2, 2 * 3 * 3),            # every microbatch crosses all stages alone: m p (F + B)
    ("gpipe", 4, 8, (8 + 4 - 1) * 3),      # (m + p - 1)(F + B)
    ("1f1b", 2, 3, (3 + 2 - 1) * 3),
    ("1f1b", 1, 4, 4 * 3),
])
def test_makespan_by_hand(name, num_stages, num_microbatches, makespan):
    trace = simulate.simulate(schedules.build(name, num_stages, num_microbatches))
    assert trace.makespan == makespan


def test_1f1b_two_stages_timeline_by_hand():
    trace = simulate.simulate(schedules.build("1f1b", 2, 2), forward=1.0, backward=2.0)
    assert timeline(trace, 0) == [("F0", 0, 1), ("F1", 1, 2), ("B0", 4, 6), ("B1", 7, 9)]
    assert timeline(trace, 1) == [("F0", 1, 2), ("B0", 2, 4), ("F1", 4, 5), ("B1", 5, 7)]
    waits = sorted((w.rank, w.start, w.end) for w in trace.waits)
    assert waits == [(0, 2, 4), (0, 6, 7), (1, 0, 1)]
    assert any("gradient 0 from rank 1" in w.what for w in trace.waits if w.rank == 0)
    assert trace.waited(0) == 3 and trace.waited(1) == 1


def test_every_action_once_in_order_and_dependencies_respected():
    comm = 0.25
    for name in NAMES:
        sched = schedules.build(name, 4, 6)
        trace = simulate.simulate(sched, forward=[1, 2, 1, 3], backward=[2, 1, 4, 2], latency=comm)
        ends = {}
        for rank, actions in enumerate(sched):
            mine = [e for e in trace.events if e.rank == rank]
            assert [Action(e.op, e.microbatch, e.chunk) for e in mine] == list(actions)
            assert all(a.end <= b.start for a, b in zip(mine, mine[1:]))    # one thing at a time
            ends.update({(rank, e.op, e.microbatch): e.end for e in mine})
        for e in trace.events:
            dep = sched.pipeline.dependency(Action(e.op, e.microbatch, e.chunk), e.rank)
            if dep is not None:
                assert e.start >= ends[(dep[0], dep[1].op, dep[1].microbatch)] + comm - 1e-12


# --------------------------------------------------------------------------- communication latency

@pytest.mark.parametrize("name", NAMES)
def test_comm_latency_lowers_utilization(name):
    sched = schedules.build(name, 4, 8)
    free = simulate.simulate(sched).utilization
    assert simulate.simulate(sched, latency=0.1).utilization < free
    assert simulate.simulate(sched, latency=1.0).utilization < simulate.simulate(sched, latency=0.1).utilization


def test_gpipe_makespan_with_comm_by_hand():
    # Fill and drain each cross p - 1 links once: (m + p - 1)(F + B) + 2 (p - 1) c.
    num_stages, num_microbatches, comm = 3, 4, 0.5
    trace = simulate.simulate(schedules.build("gpipe", num_stages, num_microbatches), latency=comm)
    assert trace.makespan == pytest.approx((4 + 3 - 1) * 3 + 2 * 2 * 0.5)


def test_comm_is_not_charged_within_a_rank():
    # one rank holding two chunks: chunk 1 follows chunk 0 on the same rank, no message
    trace = simulate.simulate([acts("F0 F0.1 B0.1 B0")], forward=1.0, backward=2.0, latency=5.0)
    assert trace.makespan == 6.0
    assert simulate.simulate(schedules.build("1f1b", 1, 3), latency=5.0).makespan == 9.0


# --------------------------------------------------------------------------- per-rank costs

def test_a_slow_stage_sets_the_pace_in_gpipe():
    # Stage 2 of 4 takes twice as long. Identical jobs through a flow shop: the last of m leaves
    # after sum(stage costs) + (m - 1) * max(stage cost). Forwards: 1+1+2+1 + 3*2 = 11; the
    # backwards start on the last rank at 11 and take 2+2+4+2 + 3*4 = 22 more: 33 (balanced: 21).
    forward, backward = [1, 1, 2, 1], [2, 2, 4, 2]
    trace = simulate.simulate(schedules.build("gpipe", 4, 4), forward=forward, backward=backward)
    assert trace.makespan == 33.0
    assert max(e.end for e in trace.events if e.op == "F" and e.rank == 3) == 11.0
    assert simulate.simulate(schedules.build("gpipe", 4, 4)).makespan == 21.0


def test_per_rank_costs_in_naive():
    # one microbatch at a time: each costs the sum over stages of F + B
    trace = simulate.simulate(schedules.build("naive", 2, 3), forward=[1, 3], backward=[2, 1])
    assert trace.makespan == 3 * (1 + 3 + 2 + 1)
    assert trace.busy(0) == 3 * 3 and trace.busy(1) == 3 * 4


def test_cost_list_of_wrong_length_or_negative():
    with pytest.raises(ValueError, match="forward"):
        simulate.simulate(schedules.build("gpipe", 3, 2), forward=[1, 1])
    with pytest.raises(ValueError, match="backward"):
        simulate.simulate(schedules.build("gpipe", 2, 2), backward=[2, -1])
    with pytest.raises(ValueError, match="latency"):
        simulate.simulate(schedules.build("gpipe", 2, 2), latency=-0.1)


# --------------------------------------------------------------------------- split backward (I / W)

def test_split_backward_costs():
    sched = [acts("F0 I0 W0"), acts("F0 I0 W0")]
    # rank 1: F 1-2, I 2-2.5, W 2.5-4; rank 0 takes the gradient at 2.5: I 2.5-3, W 3-4.5
    trace = simulate.simulate(sched, forward=1.0, input_grad=0.5, weight_grad=1.5)
    assert timeline(trace, 1) == [("F0", 1, 2), ("I0", 2, 2.5), ("W0", 2.5, 4)]
    assert timeline(trace, 0) == [("F0", 0, 1), ("I0", 2.5, 3), ("W0", 3, 4.5)]
    assert trace.peak_stashed == [1, 1]
    # default: I and W cost half a backward each
    default = simulate.simulate(sched, forward=1.0, backward=3.0)
    assert timeline(default, 1)[1:] == [("I0", 2, 3.5), ("W0", 3.5, 5)]


# --------------------------------------------------------------------------- errors and metadata

def test_deadlocking_schedule_raises():
    with pytest.raises(ScheduleError, match="deadlock"):
        simulate.simulate([acts("F0 B0 F1 B1"), acts("F1 B1 F0 B0")])


def test_malformed_schedule_raises():
    with pytest.raises(ScheduleError, match="runs twice"):
        simulate.simulate([acts("F0 F0 B0")])


def test_meta():
    trace = simulate.simulate(schedules.build("1f1b", 3, 5), forward=[1, 2, 3], backward=2.0, latency=0.5)
    assert trace.meta.source == "simulated"
    assert trace.meta.num_microbatches == 5 and trace.meta.num_stages == 3 and trace.meta.layout == "interleaved"
    assert trace.meta.schedule is None and trace.meta.overlapped_pairs is None
    costs = trace.meta.costs
    assert costs["forward"] == [1, 2, 3] and costs["backward"] == [2, 2, 2] and costs["latency"] == 0.5
    assert costs["input_grad"] == [1, 1, 1] and costs["weight_grad"] == [1, 1, 1]
    assert trace.num_ranks == 3
    assert trace.meta.time_unit == "cost units"
    assert simulate.simulate(schedules.build("naive", 1, 1), time_unit="s").meta.time_unit == "s"

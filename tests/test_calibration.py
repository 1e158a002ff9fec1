"""Calibration of the simulator from a trace (simulate.costs_from_trace, message_latencies, prediction_error).

Pure: synthetic traces built by hand or by the simulator itself; no MPI, milliseconds.
    .venv/bin/python -m pytest -q tests/test_calibration.py
"""
import pytest

from pipeline_ref import schedules, simulate
from pipeline_ref.sim.trace import Event, Trace, Wait


@pytest.mark.parametrize("name", ["naive", "gpipe", "1f1b"])
def test_costs_of_a_simulated_trace_are_the_costs_it_was_played_with(name):
    schedule = schedules.build(name, 3, 5)
    trace = simulate.simulate(schedule, forward=[1.0, 2.0, 1.5], backward=[3.0, 4.0, 2.5], latency=0.5)
    costs = simulate.costs_from_trace(trace)
    assert costs == {"forward": [1.0, 2.0, 1.5], "backward": [3.0, 4.0, 2.5], "latency": 0.5}
    replay = simulate.simulate(schedule, **costs)       # the calibrated prediction reproduces the run
    assert simulate.prediction_error(trace, replay) == {"makespan_error": 0.0, "utilization_difference": 0.0}


def test_split_backward_costs_come_back_too():
    schedule = schedules.build("zb-h1", 3, 6)
    trace = simulate.simulate(schedule, forward=1.0, backward=2.0, latency=0.25, input_grad=[1.0, 1.2, 1.1],
                              weight_grad=0.7)
    costs = simulate.costs_from_trace(trace)
    assert costs["input_grad"] == pytest.approx([1.0, 1.2, 1.1])
    assert costs["weight_grad"] == pytest.approx([0.7] * 3) and costs["latency"] == pytest.approx(0.25)
    replay = simulate.simulate(schedule, **costs)
    assert simulate.prediction_error(trace, replay)["makespan_error"] == pytest.approx(0.0)


def test_costs_are_per_rank_medians_robust_to_one_slow_action():
    events = [Event(0, "F", i, 0, 10.0 * i, 10.0 * i + d) for i, d in enumerate([1.0, 1.2, 9.0])]
    events += [Event(0, "B", i, 0, 40.0 + 10 * i, 40.0 + 10 * i + d) for i, d in enumerate([2.0, 2.2, 2.1])]
    events += [Event(1, "F", 0, 0, 1.0, 4.0)]                 # rank 1: one forward, no backward
    costs = simulate.costs_from_trace(Trace(num_ranks=2, events=events))
    assert costs["forward"] == [pytest.approx(1.2), 3.0]
    assert costs["backward"] == [pytest.approx(2.1), 0.0]     # a rank without B gets 0
    assert costs["latency"] == 0.0                               # no waits: no latency measured


def test_free_messages_mean_zero_latency():
    trace = simulate.simulate(schedules.build("gpipe", 2, 4), forward=1.0, backward=2.0)
    assert simulate.message_latencies(trace) and set(simulate.message_latencies(trace)) == {0.0}
    assert simulate.costs_from_trace(trace)["latency"] == 0.0


def _two_rank_trace(wait_start: float) -> Trace:
    # Rank 0's F0 ends at 1.0; rank 1 waits for it from wait_start until 1.25, then runs F0.
    events = [Event(0, "F", 0, 0, 0.0, 1.0), Event(1, "F", 0, 0, 1.25, 2.0),
              Event(1, "B", 0, 0, 2.0, 3.0), Event(0, "B", 0, 0, 3.1, 4.0)]
    waits = [Wait(1, "recv activation 0 from rank 0", wait_start, 1.25),
             Wait(0, "recv gradient 0 from rank 1", 1.0, 3.1)]
    return Trace(num_ranks=2, events=events, waits=waits)


def test_latency_is_wait_end_minus_producer_end_when_the_receiver_was_already_waiting():
    latencies = simulate.message_latencies(_two_rank_trace(wait_start=0.0))
    assert latencies == [pytest.approx(0.25), pytest.approx(0.1)]
    assert simulate.costs_from_trace(_two_rank_trace(0.0))["latency"] == pytest.approx(0.175)   # median of two


def test_a_wait_that_began_after_the_message_was_sent_says_nothing_about_latency():
    # Rank 1 only asked at 1.2, after F0 ended at 1.0: the message may have been there already.
    assert simulate.message_latencies(_two_rank_trace(wait_start=1.2)) == [pytest.approx(0.1)]


def test_waits_that_are_not_receives_are_ignored_and_clock_skew_never_gives_negative_latency():
    trace = _two_rank_trace(0.0)
    trace.waits.append(Wait(0, "all-reduce gradients", 4.0, 4.5))
    trace.waits[1] = Wait(0, "recv gradient 0 from rank 1", 1.0, 2.99)   # "arrived" before B0 ended: skew
    assert simulate.message_latencies(trace) == [pytest.approx(0.25), 0.0]


def test_prediction_error_is_relative_makespan_and_absolute_utilization():
    measured = Trace(num_ranks=1, events=[Event(0, "F", 0, 0, 0.0, 1.0), Event(0, "B", 0, 0, 2.0, 4.0)])
    simulated = Trace(num_ranks=1, events=[Event(0, "F", 0, 0, 0.0, 1.0), Event(0, "B", 0, 0, 1.0, 3.0)])
    error = simulate.prediction_error(measured, simulated)
    assert error["makespan_error"] == pytest.approx(-0.25)          # predicted 3 against measured 4
    assert error["utilization_difference"] == pytest.approx(1.0 - 0.75)
    assert simulate.prediction_error(Trace(num_ranks=1), simulated)["makespan_error"] == 0.0   # empty: no division


def test_calibrated_prediction_of_a_jittered_run_is_close():
    # A "measured" run: the simulated one with every action 0-4% longer and shifted, as real runs are.
    schedule = schedules.build("1f1b", 2, 8)
    ideal = simulate.simulate(schedule, forward=[1.0, 1.0], backward=[2.0, 2.2], latency=0.05)
    shift, events = 0.0, []
    for k, e in enumerate(sorted(ideal.events, key=lambda e: (e.start, e.rank))):
        stretch = 1.0 + 0.04 * ((k * 7) % 5) / 4
        start = e.start + shift
        events.append(Event(e.rank, e.op, e.microbatch, e.chunk, start, start + e.duration * stretch))
        shift += 0.01
    measured = Trace(num_ranks=2, events=events, waits=ideal.waits)
    predicted = simulate.simulate(schedule, **simulate.costs_from_trace(measured))
    error = simulate.prediction_error(measured, predicted)
    assert abs(error["makespan_error"]) < 0.05
    assert abs(error["utilization_difference"]) < 0.05

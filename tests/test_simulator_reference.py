"""The fast simulator (compiled schedule, event-driven play, events built on first use) against a plain
replay.

The reference below is the simulator as it was before issue 30, written out in a few lines: sweep the ranks
in order, each as far as its messages allow, until none moves; an action starts at max(rank free, producer's
end + latency). Every built-in schedule, small and medium, with and without latency, with equal, per-rank,
per-chunk and per-action costs: the same events in the same order, the same waits, makespan and stash.
"""
import random

import pytest

from pipeline_ref import schedules, simulate
from pipeline_ref.schedules.geometry import Action, Schedule, result_of
from pipeline_ref.sim.trace import Event, Wait

OPS = {"F": "forward", "B": "backward", "I": "input_grad", "W": "weight_grad"}


def reference(schedule: Schedule, cost, latency):
    """(events, waits, peak stash) of ``schedule``; cost(op, rank, chunk, microbatch), latency(source, dest)
    give the times."""
    pipe = Schedule.of(schedule).pipeline
    ended, free, position = {}, [0.0] * len(schedule), [0] * len(schedule)
    events, waits = [], []
    progress = True
    while progress:
        progress = False
        for rank, actions in enumerate(schedule):
            while position[rank] < len(actions):
                action = actions[position[rank]]
                dependency = pipe.dependency(action, rank)
                ready = free[rank]
                if dependency is not None:
                    source, needed = dependency
                    key = (pipe.virtual_stage(source, needed.chunk), needed.microbatch, needed.op)
                    if key not in ended:
                        break
                    arrival = ended[key] + (latency(source, rank) if source != rank else 0.0)
                    if arrival > ready:
                        what = "activation" if action.op == "F" else "gradient"
                        what = f"recv {what} {action.microbatch} from rank {source}"
                        waits.append(Wait(rank, what, ready, arrival))
                        ready = arrival
                end = ready + cost(action.op, rank, action.chunk, action.microbatch)
                events.append(Event(rank, action.op, action.microbatch, action.chunk, ready, end))
                ended[(pipe.virtual_stage(rank, action.chunk), action.microbatch, result_of(action.op))] = end
                free[rank] = end
                position[rank] += 1
                progress = True
    peaks = []
    for actions in schedule:
        held = peak = 0
        for a in actions:
            held += 1 if a.op == "F" else -1 if a.op in "BW" else 0
            peak = max(peak, held)
        peaks.append(peak)
    return events, waits, peaks


ONE_CHUNK = (("naive", {}), ("gpipe", {}), ("1f1b", {}), ("zb-h1", {}), ("zb-h2", {}), ("zbv", {}),
             ("pipedream", {"steps": 2}), ("zb-auto", {"max_in_flight": 3}))
CASES = ([(name, p, m, options) for name, options in ONE_CHUNK
          for p, m in ((1, 1), (2, 3), (3, 5), (4, 8), (8, 24))]
         + [("interleaved", p, m, {"chunks": v}) for p, m, v in ((2, 4, 2), (3, 6, 3), (4, 8, 2), (8, 16, 2))]
         + [("dualpipev", p, m, {}) for p, m in ((1, 2), (2, 5), (4, 8), (8, 20))])


def _costs(kind: str, p: int, rng: random.Random):
    """(keyword arguments for simulate, the same costs as reference's cost function)."""
    if kind == "equal":
        equal = {"F": 1.0, "B": 2.0, "I": 1.0, "W": 1.0}
        return {"forward": 1.0, "backward": 2.0}, lambda op, r, c, i: equal[op]
    if kind == "per rank":
        table = {op: [round(rng.uniform(0.2, 2.0), 3) for _ in range(p)] for op in OPS}
        return ({OPS[op]: table[op] for op in OPS}, lambda op, r, c, i: table[op][r])
    if kind == "per chunk":
        table = {op: [[rng.uniform(0.2, 2.0) for _ in range(3)] for _ in range(p)] for op in OPS}
        return ({OPS[op]: table[op] for op in OPS}, lambda op, r, c, i: table[op][r][c])
    # per action: a callable, uneven across microbatches
    def per_action(op):
        return lambda r, c, i: 0.5 + ((7 * r + 3 * c + 5 * i + len(op)) % 11) / 7
    return ({OPS[op]: per_action(op) for op in OPS}, lambda op, r, c, i: per_action(op)(r, c, i))


@pytest.mark.parametrize("name, p, m, options", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("kind", ["equal", "per rank", "per chunk", "per action"])
@pytest.mark.parametrize("latency", ["none", "number", "pairs"])
def test_same_trace_as_a_plain_replay(name, p, m, options, kind, latency):
    rng = random.Random(f"{name}{p}{m}{kind}{latency}")
    schedule = schedules.build(name, p, m, **options)
    keywords, cost = _costs(kind, p, rng)
    table = [[rng.uniform(0.0, 0.5) for _ in range(p)] for _ in range(p)]
    latency_of = {"none": lambda s, d: 0.0, "number": lambda s, d: 0.25,
                  "pairs": lambda s, d: table[s][d]}[latency]
    given = {"none": 0.0, "number": 0.25, "pairs": table}[latency]
    trace = simulate.simulate(schedule, latency=given, **keywords)
    events, waits, peaks = reference(schedule, cost, latency_of)
    # read before any Event object is built
    makespan, utilization, stash = trace.makespan, trace.utilization, trace.peak_stashed
    assert trace.events == events
    assert trace.waits == waits
    assert makespan == max(e.end for e in events) - min(e.start for e in events)
    assert utilization == pytest.approx(sum(e.duration for e in events) / (p * makespan), rel=1e-12)
    assert stash == peaks == trace.stash_counts()


def test_a_deferred_trace_survives_copy_pickle_and_json():
    import copy
    import json
    import pickle
    from tests import trace_json
    trace = simulate.simulate(schedules.build("zbv", 3, 6), forward=1.0, backward=2.0, latency=0.1)
    for other in (copy.deepcopy(trace), pickle.loads(pickle.dumps(trace)),
                  trace_json.from_dict(json.loads(json.dumps(trace_json.to_dict(trace))))):
        assert other == trace and other.makespan == trace.makespan and other.utilization == trace.utilization


def test_costs_that_cannot_be_played_are_refused_with_their_name():
    schedule = schedules.build("zbv", 2, 4)
    with pytest.raises(ValueError, match=r"forward: rank 0 has 1 chunk costs for 2 chunks"):
        simulate.simulate(schedule, forward=[[1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match=r"backward: no cost for \(rank 0, chunk 0, microbatch 0\)"):
        simulate.simulate(schedules.build("gpipe", 2, 2), backward={})
    with pytest.raises(ValueError, match=r"input_grad: costs must be non-negative, got -1.0"):
        simulate.simulate(schedule, input_grad=lambda r, c, i: -1.0)
    with pytest.raises(ValueError, match=r"latency: expected a number, a callable \(source, destination\) "
                                         r"or a 2 x 2 table, got shape \(3,\)"):
        simulate.simulate(schedule, latency=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"message latency must be non-negative"):
        simulate.simulate(schedule, latency=lambda s, d: -0.5)


def test_a_link_model_makes_only_the_crossing_slow():
    """Two nodes of two ranks: NVLink-like inside, network-like across. Only rank 1 -> 2 pays the slow
    link."""
    def link(source, destination):
        return 0.01 if source // 2 == destination // 2 else 1.0
    fast = simulate.simulate(schedules.build("gpipe", 4, 1), latency=0.01)
    slow = simulate.simulate(schedules.build("gpipe", 4, 1), latency=link)
    assert slow.makespan - fast.makespan == pytest.approx(2 * (1.0 - 0.01))   # once down, once back up
    forward = {e.rank: e for e in slow.events if e.op == "F"}
    assert [forward[r + 1].start - forward[r].end for r in range(3)] == pytest.approx([0.01, 1.0, 0.01])


def test_an_action_given_twice_or_out_of_order_is_still_refused_by_the_slow_path():
    with pytest.raises(schedules.ScheduleError, match=r"rank 0, action B0: runs before its forward F0"):
        simulate.simulate([[Action("B", 0), Action("F", 0)]])
    with pytest.raises(schedules.ScheduleError, match=r"rank 1: never completes the backward of 0"):
        schedules.validate([[Action("F", 0), Action("B", 0)], [Action("F", 0), Action("I", 0)]])

"""The band a measured step can be explained in: the schedule played with the run's own costs (sim layer).

    from pipeline_ref.sim import band
    band.band(schedule, [trace_round_1, trace_round_2, ...])    # Band(low, high, predicted), seconds
    band.run_costs(trace)                                        # the costs one measured trace gives

A measured step is the schedule (which action waits for which) plus the costs of the actions. Feed the
simulator each round's own measured costs and the step it plays is what the schedule explains; the rounds'
lowest and highest costs (each rank and op apart) give the band's ends. A measured step outside the band
took time the schedule and those costs do not explain (``measure.py`` flags it). No processes here.
"""
from __future__ import annotations

from statistics import median
from typing import NamedTuple

from pipeline_ref.sim import simulate
from pipeline_ref.sim.trace import Trace


class Band(NamedTuple):
    """The step (s) the schedule explains with the run's own costs: lowest, highest and median costs' play."""
    low: float
    high: float
    predicted: float


def run_costs(trace: Trace) -> dict:
    """One measured trace's costs in ``simulate``'s keywords.

    Per rank and op, the mean duration (the mean keeps the rank's busy time whole) plus the mean time the
    rank spent between its actions (the executor's own work); the median message latency. Like the measured
    step (``Trace.makespan``: first action to last), it leaves out a data-parallel all-reduce after the last
    action.
    """
    gap = [_gap_per_action(trace, r) for r in range(trace.num_ranks)]
    costs = {}
    for op, key in (("F", "forward"), ("B", "backward"), ("I", "input_grad"), ("W", "weight_grad")):
        if op in "FB" or any(e.op == op for e in trace.events):
            durations = [[e.duration for e in trace.events if e.rank == r and e.op == op]
                         for r in range(trace.num_ranks)]
            costs[key] = [sum(d) / len(d) + gap[r] if d else 0.0 for r, d in enumerate(durations)]
    costs["latency"] = simulate.costs_from_trace(trace)["latency"]
    return costs


def _gap_per_action(trace: Trace, rank: int) -> float:
    """Mean time between ``rank``'s actions spent neither computing nor waiting for a message."""
    events = [e for e in trace.events if e.rank == rank]
    if len(events) < 2:
        return 0.0
    first, last = min(e.start for e in events), max(e.end for e in events)
    waited = sum(w.end - w.start for w in trace.waits
                 if w.rank == rank and w.start >= first - 1e-9 and w.end <= last + 1e-9)
    return max(0.0, (last - first) - sum(e.duration for e in events) - waited) / (len(events) - 1)


def band(schedule, traces: list[Trace]) -> Band:
    """The simulator played with the rounds' lowest, median and highest costs (each rank and op apart)."""
    costs = [run_costs(t) for t in traces]

    def play(pick) -> float:
        combined = {key: ([pick(c[key][r] for c in costs) for r in range(len(costs[0][key]))]
                          if isinstance(costs[0][key], list) else pick(c[key] for c in costs))
                    for key in costs[0]}
        return simulate.simulate(schedule, **combined, time_unit="s").makespan

    return Band(play(min), play(max), play(lambda values: median(list(values))))

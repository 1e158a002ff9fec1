"""Play a schedule without processes, and calibrate that play on a measured run.

The simulator gives every action a cost and runs each rank's list in order. It
replays the ranks in dependency order (``replay.py``): an action starts when its rank is free
and the message it needs (``geometry.Pipeline.dependency``) has arrived, i.e. the producing
action has ended plus ``latency`` if it ran on another rank. The result is a
:class:`~pipeline_ref.sim.trace.Trace`, the same shape the executor measures, so plots and numbers compare one
to one.

    >>> from pipeline_ref import schedules, simulate
    >>> trace = simulate.simulate(schedules.build("gpipe", 4, 8), forward=1.0, backward=2.0)
    >>> trace.makespan, round(trace.utilization, 4), simulate.theory_utilization("gpipe", 4, 8)
    (33.0, 0.7273, 0.7272727272727273)

(The closed forms are in ``theory.py``; ``simulate.theory_utilization`` is ``theory.utilization``.)

Costs are in any unit you like. Calibration: ``costs_from_trace(measured)`` reads
each rank's median forward/backward time and the median message latency off a
real run, so the simulator predicts that run, and ``prediction_error`` says how
close the prediction came:

    costs = simulate.costs_from_trace(measured)          # {"forward": [...], "backward": [...], "latency": s}
    predicted = simulate.simulate(schedule, **costs, time_unit="s")
    simulate.prediction_error(measured, predicted)   # {"makespan_error": ..., "utilization_difference": ...}
"""
from __future__ import annotations

from bisect import bisect_left
from math import fsum
from statistics import median
from typing import NamedTuple

import numpy as np

from pipeline_ref.sim import action_costs, play
from pipeline_ref.sim.action_costs import Cost, Latency
from pipeline_ref.schedules.geometry import Action, Pipeline, Schedule, ScheduleError, result_of
from pipeline_ref.schedules.replay import Plan, compile_schedule, deadlock_message, stuck_ranks, sweep
from pipeline_ref.sim.theory import bubble as theory_bubble, peak_stashed as theory_peak_stashed  # noqa: F401
# the names the lessons use
from pipeline_ref.sim.theory import utilization as theory_utilization  # noqa: F401
from pipeline_ref.sim.trace import Deferred, Event, Trace, TraceMeta, Wait


def simulate(schedule: Schedule, forward: Cost = 1.0, backward: Cost = 2.0, latency: Latency = 0.0, *,
             input_grad: Cost | None = None, weight_grad: Cost | None = None,
             forward_backward: Cost | None = None, time_unit: str = "cost units") -> Trace:
    """Trace of ``schedule`` played with the given per-op costs.

    forward, backward: cost of F and B: one number, one per rank (each a number or one per chunk), or per
    action, a callable (rank, chunk, microbatch) or a mapping with those keys (``action_costs.py``).
    latency: time from an action's end to the arrival of its message on another rank: a number, a callable
    (source, destination) or a table latency[source][destination].
    input_grad, weight_grad: cost of the zero-bubble halves I and W (default backward / 2 each).
    forward_backward: cost of an overlapped F&B pair (DualPipe): when given, a forward immediately followed
    on its rank by a whole backward B of another chunk runs as one action that starts once both inputs
    have arrived, takes this cost (asked with the forward's rank, chunk, microbatch), and hands both
    results on at its end; the trace splits its time between the two events in proportion F : B.
    time_unit: what the costs are in, for axis labels ("s" when they are measured seconds).
    Raises ScheduleError for a schedule that would deadlock or is malformed.
    """
    plan = compile_schedule(schedule)
    num_stages = len(plan.schedule)
    matrix = action_costs.latency_matrix(latency, num_stages)
    costs = [action_costs.of_actions("forward", forward, plan, 0),
             action_costs.of_actions("backward", backward, plan, 1),
             (action_costs.of_actions("input_grad", input_grad, plan, 2) if input_grad is not None
              else action_costs.of_actions("backward", backward, plan, 2, halve=True)),
             (action_costs.of_actions("weight_grad", weight_grad, plan, 3) if weight_grad is not None
              else action_costs.of_actions("backward", backward, plan, 3, halve=True))]
    per_action = [(f + b + i + w) for f, b, i, w in zip(*costs)]
    pairs = _pairs(plan, costs, forward_backward) if forward_backward is not None else {}
    rows = play.rows_of(plan, per_action, action_costs.of_messages(matrix, plan),
                        {key: cost for key, (cost, _) in pairs.items()})
    position, starts, waits = play.play(plan, rows, pairs)
    stuck = stuck_ranks(plan, position)
    if stuck:
        raise ScheduleError(deadlock_message(plan.schedule, stuck))
    for (rank, index), (whole, _) in pairs.items():
        per_action[rank][index + 1] = whole        # the pair's B carries the pair's cost
    raw_starts = {rank: list(starts[rank]) for rank, _ in pairs}    # to place the waits (before the split)
    starts = [np.array(start, np.float64) for start in starts]
    ends = [start + cost for start, cost in zip(starts, per_action)]   # the loop's own sums, bit for bit
    for (rank, index), (_, share) in pairs.items():    # the pair's time, split F : B between its two events
        starts[rank][index] = starts[rank][index + 1]
        ends[rank][index] = starts[rank][index + 1] = starts[rank][index] + share
    played = [rank for rank, start in enumerate(starts) if len(start)]
    span = float(max(ends[r][-1] for r in played) - min(starts[r][0] for r in played)) if played else 0.0
    busy = fsum(np.concatenate([end - start for start, end in zip(starts, ends)]).tolist())
    trace = Trace(num_ranks=num_stages)
    trace.defer(Deferred(lambda: _objects(plan, [start.tolist() for start in starts],
                                          [end.tolist() for end in ends], waits, raw_starts), span, busy))
    trace.peak_stashed = [max(0, int(np.cumsum(holds).max())) if len(holds) else 0 for holds in plan.holds]
    trace.meta = TraceMeta(source="simulated", num_stages=num_stages, time_unit=time_unit,
                           layout=plan.schedule.layout, num_microbatches=plan.num_microbatches,
                           costs={**_cost_tables(num_stages, forward, backward, input_grad, weight_grad),
                                  "latency": (float(latency) if isinstance(latency, (int, float))
                                              else matrix.tolist())},
                           overlapped_pairs=len(pairs) if pairs else None)
    return trace


def _cost_tables(num_stages: int, forward, backward, input_grad, weight_grad) -> dict:
    """The costs for the trace's meta: one entry per rank (a number or one per chunk), or "per action"."""
    tables = {name: action_costs.per_rank(name, cost, num_stages)
              for name, cost in (("forward", forward), ("backward", backward))}
    for name, cost in (("input_grad", input_grad), ("weight_grad", weight_grad)):
        if cost is not None:
            tables[name] = action_costs.per_rank(name, cost, num_stages)
        elif tables["backward"] is not None:       # half a backward each
            tables[name] = [[c / 2 for c in b] if isinstance(b, list) else b / 2 for b in tables["backward"]]
        else:
            tables[name] = None
    return {name: table if table is not None else "per action" for name, table in tables.items()}


def _pairs(plan: Plan, costs: list, forward_backward) -> dict:
    """Each F followed on its rank by a B of another chunk: {(rank, F's index): (the pair's cost, F's share)}.

    The share is the part of the pair's time the trace gives the forward: in proportion F : B.
    """
    pair_costs = action_costs.of_actions("forward_backward", forward_backward, plan, 0)
    pairs = {}
    for rank, (ops, _, chunks) in enumerate(plan.columns):
        for index in np.flatnonzero((ops[:-1] == 0) & (ops[1:] == 1) & (chunks[:-1] != chunks[1:])).tolist():
            whole = float(pair_costs[rank][index])
            forward, backward = float(costs[0][rank][index]), float(costs[1][rank][index + 1])
            share = forward / (forward + backward) if forward + backward > 0 else 0.5
            pairs[rank, index] = (whole, whole * share)
    return pairs


def _objects(plan: Plan, starts: list, ends: list, waits: list,
             raw_starts: dict) -> tuple[list[Event], list[Wait]]:
    """The Event and Wait objects of a play, in the order ``replay.sweep`` visits the actions."""
    schedule, sources = plan.schedule, plan.sources
    waited = {(rank, bisect_left(raw_starts.get(rank, starts[rank]), until)): (since, until)
              for rank, mine in enumerate(waits) for since, until in mine}
    events, blocked = [], []

    def visit(rank: int, index: int) -> None:
        op, microbatch, chunk = schedule[rank][index]
        if (rank, index) in waited:
            what = "activation" if op == "F" else "gradient"
            blocked.append(Wait(rank, f"recv {what} {microbatch} from rank {sources[rank][index]}",
                                *waited[rank, index]))
        events.append(Event(rank, op, microbatch, chunk, starts[rank][index], ends[rank][index]))
    sweep(plan, visit)
    return events, blocked


# --------------------------------------------------------------------------- calibration

class Receipt(NamedTuple):
    """A receive a rank waited on: the wait, the action it preceded, and when the message's producer ended."""
    wait: Wait
    action: Action
    source: int
    produced: float


def receipts(trace: Trace) -> list[Receipt]:
    """Every wait of ``trace`` that precedes an action receiving a message from another rank, with its
    producer.

    The geometry comes from the trace (its ranks, chunks and meta.layout); waits that are not receives
    (an all-reduce) are skipped.
    """
    chunks = 1 + max((e.chunk for e in trace.events), default=0)
    pipe = Pipeline(trace.num_ranks, chunks, trace.meta.layout or "interleaved")
    ended = {(e.rank, e.chunk, e.microbatch, result_of(e.op)): e.end for e in trace.events}
    by_rank = {r: sorted((e for e in trace.events if e.rank == r), key=lambda e: e.start)
               for r in range(trace.num_ranks)}
    found = []
    for w in trace.waits:
        if not w.what.startswith("recv"):
            continue
        after = next((e for e in by_rank.get(w.rank, []) if e.start >= w.end - 1e-9), None)
        action = after and Action(after.op, after.microbatch, after.chunk)
        dependency = action and pipe.dependency(action, w.rank)
        if dependency is None:
            continue
        source, needed = dependency
        produced = ended.get((source, needed.chunk, needed.microbatch, needed.op))
        if produced is not None:
            found.append(Receipt(w, action, source, produced))
    return found


def message_latencies(trace: Trace) -> list[float]:
    """Latency of every message a rank was already blocked on when it was sent, from a trace's waits.

    The latency is the wait's end minus the end of the producing action, provided the receiver was
    waiting before the producer finished (otherwise the message may have arrived long before it was
    asked for, and the wait says nothing about the wire).
    """
    return [max(0.0, r.wait.end - r.produced)     # ranks' clocks agree only to a few µs
            for r in receipts(trace) if r.wait.start <= r.produced]


def costs_from_trace(trace: Trace) -> dict:
    """Per-rank median forward and backward time, and the median message latency, of a (measured) trace.

    Returns ``{"forward": [...], "backward": [...], "latency": float}``: exactly the keywords
    :func:`simulate` takes, so ``simulate(schedule, **costs_from_trace(measured))`` is the
    prediction calibrated on a real run. A trace of a split-backward schedule (zero bubble)
    also gives ``input_grad`` and ``weight_grad``. A rank without an op gets 0.0 for it,
    and a trace without a blocked receive gets latency 0.0.
    """
    costs = {}
    for op, key in (("F", "forward"), ("B", "backward"), ("I", "input_grad"), ("W", "weight_grad")):
        if op in "FB" or any(e.op == op for e in trace.events):
            durations = [[e.duration for e in trace.events if e.rank == rank and e.op == op]
                         for rank in range(trace.num_ranks)]
            costs[key] = [median(d) if d else 0.0 for d in durations]
    latencies = message_latencies(trace)
    costs["latency"] = median(latencies) if latencies else 0.0
    return costs


def prediction_error(measured: Trace, simulated: Trace) -> dict:
    """How far a prediction is from a measurement.

    ``makespan_error``: (simulated - measured) / measured makespan (relative; + means the
    prediction is slower); ``utilization_difference``: simulated - measured utilization
    (absolute, in utilization units).
    """
    span = measured.makespan
    return {"makespan_error": (simulated.makespan - span) / span if span > 0 else 0.0,
            "utilization_difference": simulated.utilization - measured.utilization}

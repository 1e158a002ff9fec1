"""Play a schedule without processes, and calibrate that play on a measured run.

The simulator gives every action a cost and runs each rank's list in order. It
replays the ranks in dependency order (``replay.py``): an action starts when its rank is free
and the message it needs (``geometry.Pipeline.dependency``) has arrived, i.e. the producing
action has ended plus ``latency`` if it ran on another rank. The result is a :class:`~pipeline_ref.trace.Trace`, the same shape the
executor measures, so plots and numbers compare one to one.

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
    simulate.prediction_error(measured, predicted)       # {"makespan_error": ..., "utilization_difference": ...}
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from .geometry import Action, Pipeline, Schedule, ScheduleError, result_of
from .replay import check_structure, deadlock_message, replay
from .theory import bubble as theory_bubble, peak_stashed as theory_peak_stashed  # noqa: F401
from .theory import utilization as theory_utilization  # noqa: F401  (the names the lessons use)
from .trace import Event, Trace, Wait

Cost = float | Sequence[float]  # one cost for every rank, or one per rank


def _per_rank(name: str, cost: Cost, num_stages: int) -> list[float]:
    costs = [float(cost)] * num_stages if isinstance(cost, (int, float)) else [float(c) for c in cost]
    if len(costs) != num_stages:
        raise ValueError(f"{name}: {len(costs)} costs given for {num_stages} ranks (give one, or one per rank)")
    if any(c < 0 for c in costs):
        raise ValueError(f"{name}: costs must be non-negative, got {costs}")
    return costs


def simulate(schedule: Schedule, forward: Cost = 1.0, backward: Cost = 2.0, latency: float = 0.0, *,
             input_grad: Cost | None = None, weight_grad: Cost | None = None,
             time_unit: str = "cost units") -> Trace:
    """Trace of ``schedule`` played with the given per-op costs.

    forward, backward: cost of F and B, one number or a list with one per rank.
    latency: time from an action's end to the arrival of its message on another rank.
    input_grad, weight_grad: cost of the zero-bubble halves I and W (default backward / 2 each).
    time_unit: what the costs are in, for axis labels ("s" when they are measured seconds).
    Raises ScheduleError for a schedule that would deadlock or is malformed.
    """
    schedule = check_structure(schedule)
    num_stages = len(schedule)
    if latency < 0:
        raise ValueError(f"message latency must be non-negative, got {latency}")
    cost = {"F": _per_rank("forward", forward, num_stages), "B": _per_rank("backward", backward, num_stages)}
    cost["I"] = (_per_rank("input_grad", input_grad, num_stages) if input_grad is not None
                 else [b / 2 for b in cost["B"]])
    cost["W"] = (_per_rank("weight_grad", weight_grad, num_stages) if weight_grad is not None
                 else [b / 2 for b in cost["B"]])

    ended: dict[tuple[int, int, int, str], float] = {}  # (rank, chunk, microbatch, result) -> end time
    free = [0.0] * num_stages
    events: list[Event] = []
    waits: list[Wait] = []

    def play(rank, action, dependency):
        # Replay visits an action after the one it depends on, and each rank's actions in order, so the
        # start time (rank free, message arrived) is known here.
        ready = free[rank]
        if dependency is not None:
            source, needed = dependency
            arrival = ended[(source, needed.chunk, needed.microbatch, needed.op)] + (latency if source != rank else 0.0)
            if arrival > ready:
                what = "activation" if action.op == "F" else "gradient"
                waits.append(Wait(rank, f"recv {what} {action.microbatch} from rank {source}", ready, arrival))
                ready = arrival
        end = ready + cost[action.op][rank]
        events.append(Event(rank, action.op, action.microbatch, action.chunk, ready, end))
        ended[(rank, action.chunk, action.microbatch, result_of(action.op))] = end
        free[rank] = end

    stuck = replay(schedule, play)
    if stuck:
        raise ScheduleError(deadlock_message(schedule, stuck))
    trace = Trace(num_ranks=num_stages, events=events, waits=waits)
    trace.peak_stashed = trace.stash_counts()
    trace.meta = {"source": "simulated", "num_stages": num_stages, "time_unit": time_unit, "layout": schedule.layout,
                  "num_microbatches": schedule.num_microbatches,
                  "costs": {"forward": cost["F"], "backward": cost["B"], "input_grad": cost["I"],
                            "weight_grad": cost["W"], "latency": float(latency)}}
    return trace


# --------------------------------------------------------------------------- calibration

class Receipt(NamedTuple):
    """A receive a rank waited on: the wait, the action it preceded, and when the message's producer ended."""
    wait: Wait
    action: Action
    source: int
    produced: float


def receipts(trace: Trace) -> list[Receipt]:
    """Every wait of ``trace`` that precedes an action receiving a message from another rank, with its producer.

    The geometry comes from the trace (its ranks, chunks and meta["layout"]); waits that are not receives
    (an all-reduce) are skipped.
    """
    chunks = 1 + max((e.chunk for e in trace.events), default=0)
    pipe = Pipeline(trace.num_ranks, chunks, trace.meta.get("layout", "interleaved"))
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
    from statistics import median
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

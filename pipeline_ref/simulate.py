"""Play a schedule without processes, and the closed-form numbers it should reproduce.

The simulator gives every action a cost and runs each rank's list in order. An
action starts when its rank is free and the message it needs (``schedules.dependency``)
has arrived, i.e. the producing action has ended plus ``comm`` if it ran on another
rank. The result is a :class:`~pipeline_ref.trace.Trace`, the same shape the
executor measures, so plots and numbers compare one to one.

    >>> from pipeline_ref import schedules, simulate
    >>> trace = simulate.simulate(schedules.build("gpipe", 4, 8), forward=1.0, backward=2.0)
    >>> trace.makespan, round(trace.utilization, 4), simulate.theory_utilization("gpipe", 4, 8)
    (33.0, 0.7273, 0.7272727272727273)

Costs are in any unit you like. Calibration: ``costs_from_trace(measured)`` reads
each rank's median forward/backward time and the median message latency off a
real run, so the simulator predicts that run, and ``prediction_error`` says how
close the prediction came:

    costs = simulate.costs_from_trace(measured)          # {"forward": [...], "backward": [...], "comm": s}
    predicted = simulate.simulate(schedule, **costs, time_unit="s")
    simulate.prediction_error(measured, predicted)       # {"makespan_error": ..., "utilization_difference": ...}
"""
from __future__ import annotations

from typing import Sequence

from . import schedules
from .schedules import Action, ScheduleError
from .trace import Event, Trace, Wait

Cost = float | Sequence[float]  # one cost for every rank, or one per rank

THEORY_SCHEDULES = ("naive", "gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "zbv")


def _per_rank(name: str, cost: Cost, num_stages: int) -> list[float]:
    costs = [float(cost)] * num_stages if isinstance(cost, (int, float)) else [float(c) for c in cost]
    if len(costs) != num_stages:
        raise ValueError(f"{name}: {len(costs)} costs given for {num_stages} ranks (give one, or one per rank)")
    if any(c < 0 for c in costs):
        raise ValueError(f"{name}: costs must be non-negative, got {costs}")
    return costs


def _kind(op: str) -> str:
    # Downstream ranks only need the input gradient, which B and I both produce.
    return "B" if op in ("B", "I") else op


def simulate(schedule: schedules.Schedule, forward: Cost = 1.0, backward: Cost = 2.0, comm: float = 0.0, *,
             input_grad: Cost | None = None, weight_grad: Cost | None = None,
             time_unit: str = "cost units") -> Trace:
    """Trace of ``schedule`` played with the given per-op costs.

    forward, backward: cost of F and B, one number or a list with one per rank.
    comm: latency between an action and a dependent action on another rank.
    input_grad, weight_grad: cost of the zero-bubble halves I and W (default backward / 2 each).
    time_unit: what the costs are in, for axis labels ("s" when they are measured seconds).
    Raises ScheduleError for a schedule that would deadlock or is malformed.
    """
    schedules.validate(schedule)
    num_stages = len(schedule)
    if comm < 0:
        raise ValueError(f"comm latency must be non-negative, got {comm}")
    cost = {"F": _per_rank("forward", forward, num_stages), "B": _per_rank("backward", backward, num_stages)}
    cost["I"] = (_per_rank("input_grad", input_grad, num_stages) if input_grad is not None
                 else [b / 2 for b in cost["B"]])
    cost["W"] = (_per_rank("weight_grad", weight_grad, num_stages) if weight_grad is not None
                 else [b / 2 for b in cost["B"]])
    chunks = schedules.num_chunks(schedule)
    layout = schedules.layout_of(schedule)

    ended: dict[tuple[int, int, int, str], float] = {}  # (rank, chunk, microbatch, kind) -> end time
    free = [0.0] * num_stages
    position = [0] * num_stages
    events: list[Event] = []
    waits: list[Wait] = []
    remaining = sum(len(actions) for actions in schedule)
    while remaining:
        progressed = False
        # Start times only depend on each rank's own order and on end times, so any
        # order of visiting the ranks that respects dependencies gives the same trace.
        for rank, actions in enumerate(schedule):
            while position[rank] < len(actions):
                action: Action = actions[position[rank]]
                ready, what = free[rank], None
                dep = schedules.dependency(action, rank, num_stages, chunks, layout)
                if dep is not None:
                    src, needed = dep
                    key = (src, needed.chunk, needed.microbatch, _kind(needed.op))
                    if key not in ended:
                        break
                    arrival = ended[key] + (comm if src != rank else 0.0)
                    if arrival > ready:
                        ready = arrival
                        what = (f"recv {'activation' if action.op == 'F' else 'gradient'} "
                                f"{action.microbatch} from rank {src}")
                if what is not None:
                    waits.append(Wait(rank, what, free[rank], ready))
                end = ready + cost[action.op][rank]
                events.append(Event(rank, action.op, action.microbatch, action.chunk, ready, end))
                ended[(rank, action.chunk, action.microbatch, _kind(action.op))] = end
                free[rank] = end
                position[rank] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # validate() should have caught this; never loop forever
            raise ScheduleError("deadlock: no rank can make progress\n" + schedules.describe(schedule))

    trace = Trace(num_ranks=num_stages, events=events, waits=waits)
    trace.peak_stashed = trace.stash_counts()
    trace.meta = {"source": "simulated", "num_stages": num_stages, "time_unit": time_unit, "layout": layout,
                  "num_microbatches": schedules.count_microbatches(schedule),
                  "costs": {"forward": cost["F"], "backward": cost["B"], "input_grad": cost["I"],
                            "weight_grad": cost["W"], "comm": float(comm)}}
    return trace


# --------------------------------------------------------------------------- closed-form theory

def _check(name: str, num_stages: int, num_microbatches: int) -> None:
    if name not in THEORY_SCHEDULES:
        raise ValueError(f"no closed form for schedule {name!r}; known schedules: {', '.join(THEORY_SCHEDULES)}")
    for what, value in (("num_stages", num_stages), ("num_microbatches", num_microbatches)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")


def theory_utilization(name: str, num_stages: int, num_microbatches: int, chunks: int = 2,
                       forward: float = 1.0, input_grad: float = 1.0, weight_grad: float = 1.0) -> float:
    """Fraction of time the ranks compute, with equal stages and free messages.

    With p = num_stages, m = num_microbatches, v = chunks:

    - naive:        1 / p               (one microbatch crosses all p stages at a time)
    - gpipe, 1f1b:  m / (m + p - 1)     (p - 1 slots of fill and drain around m slots of work;
                                         independent of the forward/backward ratio)
    - interleaved:  v m / (v m + p - 1) (the fill and drain shrink to 1/v: chunks are 1/v of a stage;
                                         Megatron's layout, m a multiple of p)
    - zb-h1:        m (F + I + W) / (m (F + I + W) + (p - 1)(F + I - W)), for m >= p and W <= min(F, I): the deferred
                    weight gradients W fill part of 1F1B's (p - 1)(F + I + W) of idle time
                    (forward, input_grad, weight_grad: the costs F, I, W; a third of 1F1B's bubble
                    when they are equal).
    - zb-h2:        3 m / (3 m + p - 1), for m >= p and F = I = W: the synchronous step's lower bound,
                    (p - 1) F before the last stage can start plus its m (F + I + W) of work. The same as
                    ZB-H1's: ZB-H2's extra memory removes the idle time *inside* each stage's span
                    (``Trace.idle_inside``), not the step's fill. For other costs use simulate().
    - zbv:          6 m / (6 m + p - 1), for m >= 2p - 1 and F = I = W (the costs of a whole stage; a chunk
                    costs half): the last rank starts (p - 1) F / 2 late, half of ZB-H1's (p - 1) F, because
                    the V's first p chunks are half stages, and then no rank idles until it is done.
    """
    _check(name, num_stages, num_microbatches)
    p, m = num_stages, num_microbatches
    if name == "naive":
        return 1.0 / p
    if name == "interleaved":
        return chunks * m / (chunks * m + p - 1)
    if name == "zb-h1":
        if m < p:
            raise ValueError(f"the ZB-H1 closed form needs num_microbatches >= num_stages ({m} < {p}); "
                             f"use simulate() for fewer microbatches")
        if p > 1 and weight_grad > min(forward, input_grad):
            # Checked against the simulator: beyond this a deferred W no longer fits the slot it fills.
            raise ValueError(f"the ZB-H1 closed form holds for W <= min(F, I); here W = {weight_grad:g}, "
                             f"F = {forward:g}, I = {input_grad:g}: use simulate()")
        work = m * (forward + input_grad + weight_grad)
        return work / (work + (p - 1) * (forward + input_grad - weight_grad))
    if name == "zb-h2":
        _needs_equal_costs("ZB-H2", p, m, p, "num_stages", forward, input_grad, weight_grad)
        return 3 * m / (3 * m + p - 1)
    if name == "zbv":
        _needs_equal_costs("ZB-V", p, m, 2 * p - 1, "2 num_stages - 1", forward, input_grad, weight_grad)
        return 6 * m / (6 * m + p - 1)
    return m / (m + p - 1)


def _needs_equal_costs(label: str, p: int, m: int, least: int, least_name: str, *costs: float) -> None:
    """ZB-H2's and ZB-V's closed forms hold from ``least`` microbatches on, with F = I = W (the costs their
    orders are built for); elsewhere only the simulator answers."""
    if m < least:
        raise ValueError(f"the {label} closed form needs num_microbatches >= {least_name} ({m} < {least}); "
                         f"use simulate() for fewer microbatches")
    if p > 1 and len(set(costs)) > 1:
        forward, input_grad, weight_grad = costs
        raise ValueError(f"the {label} closed form holds for F = I = W; here F = {forward:g}, I = {input_grad:g}, "
                         f"W = {weight_grad:g}: use simulate()")


def theory_bubble(name: str, num_stages: int, num_microbatches: int, **costs) -> float:
    """Idle fraction, 1 - utilization: naive (p - 1) / p; gpipe and 1f1b (p - 1) / (m + p - 1); ..."""
    return 1.0 - theory_utilization(name, num_stages, num_microbatches, **costs)


def theory_peak_stashed(name: str, num_stages: int, num_microbatches: int, chunks: int = 2) -> list[int]:
    """Most microbatches whose activations stage s holds at once, one number per stage.

    - naive:        1                  (each backward follows its forward)
    - gpipe:        m                  (all forwards run before any backward)
    - 1f1b:         min(p - s, m)      (p - s - 1 warmup forwards, plus one in the steady state)
    - interleaved:  min(2 (p - s - 1) + (v - 1) p + 1, v m) chunk-microbatches (Megatron's warm-up, plus one)
    - zb-h1:        min(p, m)          (every stage, until each microbatch's W)
    - zb-h2:        min(2 p - 1, m)    (every stage: the price of its longer warm-up)
    - zbv:          min(2 p, m + 1 + s, 2 m) chunk-microbatches of half a stage each: p whole microbatches'
                    worth on every rank once m >= 2p - 1, 1F1B's first stage's
    """
    _check(name, num_stages, num_microbatches)
    p, m = num_stages, num_microbatches
    if name == "naive":
        return [1] * p
    if name == "gpipe":
        return [m] * p
    if name == "interleaved":
        if chunks == 1:
            return [min(p - s, m) for s in range(p)]
        return [min(2 * (p - s - 1) + (chunks - 1) * p + 1, chunks * m) for s in range(p)]
    if name == "zb-h1":
        return [min(p, m)] * p
    if name == "zb-h2":
        return [min(2 * p - 1, m)] * p
    if name == "zbv":
        return [min(2 * p, m + 1 + s, 2 * m) for s in range(p)]
    return [min(p - s, m) for s in range(p)]


# --------------------------------------------------------------------------- calibration

def message_latencies(trace: Trace) -> list[float]:
    """Latency of every message a rank was already blocked on when it was sent, from a trace's waits.

    For each wait that ends right before an action with a cross-rank dependency, the
    latency is the wait's end minus the end of the producing action, provided the
    receiver was waiting before the producer finished (otherwise the message may
    have arrived long before it was asked for, and the wait says nothing about the
    wire). Waits that are not receives (e.g. an all-reduce) are skipped.
    """
    num_stages = trace.num_ranks
    chunks = 1 + max((e.chunk for e in trace.events), default=0)
    layout = trace.meta.get("layout", "interleaved")
    ended = {(e.rank, e.chunk, e.microbatch, _kind(e.op)): e.end for e in trace.events}
    by_rank = {r: sorted((e for e in trace.events if e.rank == r), key=lambda e: e.start) for r in range(num_stages)}
    latencies = []
    for w in trace.waits:
        if not w.what.startswith("recv"):
            continue
        after = next((e for e in by_rank.get(w.rank, []) if e.start >= w.end - 1e-12), None)
        if after is None:
            continue
        dep = schedules.dependency(Action(after.op, after.microbatch, after.chunk), w.rank, num_stages, chunks,
                                   layout)
        if dep is None:
            continue
        src, needed = dep
        produced = ended.get((src, needed.chunk, needed.microbatch, _kind(needed.op)))
        if produced is not None and w.start <= produced:
            latencies.append(max(0.0, w.end - produced))   # ranks' clocks agree only to a few µs
    return latencies


def costs_from_trace(trace: Trace) -> dict:
    """Per-rank median forward and backward time, and the median message latency, of a (measured) trace.

    Returns ``{"forward": [...], "backward": [...], "comm": float}``: exactly the keywords
    :func:`simulate` takes, so ``simulate(schedule, **costs_from_trace(measured))`` is the
    prediction calibrated on a real run. A trace of a split-backward schedule (zero bubble)
    also gives ``input_grad`` and ``weight_grad``. A rank without an op gets 0.0 for it,
    and a trace without a blocked receive gets comm 0.0.
    """
    from statistics import median
    costs = {}
    for op, key in (("F", "forward"), ("B", "backward"), ("I", "input_grad"), ("W", "weight_grad")):
        if op in "FB" or any(e.op == op for e in trace.events):
            durations = [[e.duration for e in trace.events if e.rank == rank and e.op == op]
                         for rank in range(trace.num_ranks)]
            costs[key] = [median(d) if d else 0.0 for d in durations]
    latencies = message_latencies(trace)
    costs["comm"] = median(latencies) if latencies else 0.0
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

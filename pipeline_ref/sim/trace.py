"""Traces: what each rank did and when, from the simulator or from a real run.

A :class:`Trace` is a list of :class:`Event` (one per executed action) plus the
time each rank spent blocked on communication (:class:`Wait`). The simulator and
the executor both produce it, so every number below, and every plot in
``plot.py``, works the same on a prediction and on a measurement.

    utilization = busy time / (ranks x makespan)      bubble = 1 - utilization
    executor gaps = time between a rank's actions spent neither computing nor waiting

Exports, for looking at a trace outside Python:

    >>> from pipeline_ref import schedules, simulate
    >>> from pipeline_ref.sim import trace as trace_mod
    >>> t = simulate.simulate(schedules.build("1f1b", 2, 3))
    >>> trace_mod.summary(t)["makespan"], trace_mod.summary(t)["peak_stashed"]
    (12.0, [2, 1])
    >>> # trace_mod.write_chrome_trace(t, "step.json")   -> open in https://ui.perfetto.dev
    >>> # trace_mod.write_summary_json(t, "step.summary.json"); trace_mod.write_events_csv(t, "step.csv")

Times are seconds for measured traces and the simulator's cost unit otherwise;
the Chrome export reads them as seconds.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from math import fsum
from pathlib import Path
from typing import Callable, NamedTuple

from pipeline_ref.schedules.geometry import Op


@dataclass(frozen=True)
class Event:
    rank: int          # pipeline rank (stage index)
    op: str            # "F", "B", "I", "W"
    microbatch: int
    chunk: int
    start: float       # seconds since the step began on this rank
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def name(self) -> str:
        return f"{self.op}{self.microbatch}" + (f".{self.chunk}" if self.chunk else "")


@dataclass(frozen=True)
class Wait:
    rank: int
    what: str          # e.g. "recv F3 from rank 0"
    start: float
    end: float


class Deferred(NamedTuple):
    """A simulated step whose Event and Wait objects are not built yet, and the numbers that need none.

    The simulator plays 10^5-10^6 actions in a search and most callers read only ``makespan``,
    ``utilization`` and ``peak_stashed``; building an object per action would cost more than the play.
    ``build()`` returns (events, waits), exactly the lists an eager trace would hold.
    """
    build: Callable[[], tuple[list[Event], list[Wait]]]
    makespan: float
    busy: float                                    # math.fsum of every event's duration


@dataclass(frozen=True)
class TraceMeta:
    """What a trace is of: the writers fill what they know, with keywords; None is "not said"."""
    source: str | None = None                  # "simulated" or "measured"
    schedule: str | None = None                # the schedule's name, e.g. "1f1b"
    num_stages: int | None = None
    layout: str | None = None                  # how virtual stages sit on ranks: "interleaved" or "v"
    num_microbatches: int | None = None        # per step (an asynchronous run: all its steps')
    time_unit: str | None = None               # unit of the times: "s", "cost units", ...
    dp: int | None = None                      # data-parallel replicas (measured)
    device: str | None = None                  # e.g. "cpu", "cuda:0" (measured)
    costs: dict | None = None                  # simulated: per-rank cost of each op and the latency
    overlapped_pairs: int | None = None        # simulated: F-B pairs of two chunks run as one (DualPipe)
    steps: int | None = None                   # asynchronous: the steps the stream ran
    weight_versions: list[int] | None = None   # asynchronous: versions each rank held at most
    weight_version_bytes: list[int] | None = None   # and their bytes

    @property
    def unit(self) -> str:
        """``time_unit`` if said, else seconds when measured, else the simulator's cost units."""
        return self.time_unit or ("s" if self.source == "measured" else "cost units")


@dataclass
class Trace:
    num_ranks: int
    events: list[Event] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    peak_stashed: list[int] | None = None          # activations held at once, per rank
    peak_stashed_bytes: list[int] | None = None    # measured runs only
    peak_memory_bytes: list[int] | None = None     # GPU runs only (torch.cuda.max_memory_allocated)
    meta: TraceMeta = field(default_factory=TraceMeta)

    # ------------------------------------------------------------------ deferred events (simulate.py)
    def defer(self, deferred: Deferred) -> "Trace":
        """Hold the events and waits as ``deferred`` until someone reads them (``events``, ``waits``)."""
        self.__dict__["_deferred"] = deferred
        return self

    def _built(self) -> dict:
        state = self.__dict__
        deferred = state.pop("_deferred", None)
        if deferred is not None:
            state["_events"], state["_waits"] = deferred.build()
        return state

    def __getstate__(self) -> dict:                # pickle and copy build the events first
        return dict(self._built())

    # ------------------------------------------------------------------ derived numbers
    @property
    def makespan(self) -> float:
        deferred = self.__dict__.get("_deferred")
        if deferred is not None:
            return deferred.makespan
        if not self.events:
            return 0.0
        return max(e.end for e in self.events) - min(e.start for e in self.events)

    def busy(self, rank: int) -> float:
        return sum(e.duration for e in self.events if e.rank == rank)

    def waited(self, rank: int) -> float:
        return sum(w.end - w.start for w in self.waits if w.rank == rank)

    def idle_inside(self, rank: int) -> float:
        """Time ``rank`` sits idle between the start of its first action and the end of its last.

        The step's idle time minus the rank's late start and early finish: the bubble a
        rank would still have if it did not wait for the others at the step's ends
        (what ZB-H2 brings to zero).
        """
        mine = [e for e in self.events if e.rank == rank]
        if not mine:
            return 0.0
        return max(e.end for e in mine) - min(e.start for e in mine) - sum(e.duration for e in mine)

    @property
    def utilization(self) -> float:
        """Compute time over (ranks x makespan): 1.0 means no rank was ever idle."""
        span = self.makespan
        if span <= 0:
            return 0.0
        deferred = self.__dict__.get("_deferred")
        # fsum: exactly rounded whatever the events' order, so a deferred trace and its events agree
        busy = deferred.busy if deferred is not None else fsum(e.duration for e in self.events)
        return busy / (self.num_ranks * span)

    @property
    def bubble_fraction(self) -> float:
        return 1.0 - self.utilization

    def stash_counts(self) -> list[int]:
        """Peak number of microbatches whose activations a rank holds, from the event order.

        A forward stashes; a B (or W, which ends a split backward) frees.
        """
        by_rank: list[list[Event]] = [[] for _ in range(self.num_ranks)]
        for e in self.events:                      # one pass, not one scan of every event per rank
            if 0 <= e.rank < self.num_ranks:
                by_rank[e.rank].append(e)
        peaks = []
        for mine in by_rank:
            held = peak = 0
            for e in sorted(mine, key=lambda e: e.start):
                held += 1 if e.op == "F" else -1 if Op(e.op).ends_backward else 0
                peak = max(peak, held)
            peaks.append(peak)
        return peaks


def _built_list(name: str) -> property:
    """The dataclass's __init__, ==, repr and asdict go through it: a deferred trace is built on first use."""
    return property(lambda trace: trace._built()[name],
                    lambda trace, value: trace._built().__setitem__(name, value))


Trace.events = _built_list("_events")     # list[Event]
Trace.waits = _built_list("_waits")       # list[Wait]


def executor_gaps(trace: Trace) -> dict:
    """Time between a rank's first and last action spent neither computing nor blocked on a receive.

    In a measured trace that is the executor's own work between actions (posting
    receives, starting sends, bookkeeping): ``fraction`` of the makespan (worst rank)
    and ``per_action_s`` (mean over ranks). A simulated trace has none.
    """
    span, fractions, per_action = trace.makespan, [], []
    for rank in range(trace.num_ranks):
        events = [e for e in trace.events if e.rank == rank]
        if not events or span <= 0:
            continue
        first, last = min(e.start for e in events), max(e.end for e in events)
        waited = sum(w.end - w.start for w in trace.waits
                     if w.rank == rank and w.start >= first - 1e-9 and w.end <= last + 1e-9)
        gap = max(0.0, (last - first) - sum(e.duration for e in events) - waited)
        fractions.append(gap / span)
        per_action.append(gap / max(1, len(events) - 1))
    return {"fraction": max(fractions, default=0.0),
            "per_action_s": sum(per_action) / len(per_action) if per_action else 0.0}


# --------------------------------------------------------------------------- exports

def to_chrome_trace(trace: Trace) -> dict:
    """The trace in Chrome's trace-event format (JSON object form), which Perfetto and chrome://tracing open.

    One track per rank (pid 0, tid = rank, named "rank N"); each action is a complete
    event ("ph": "X") named like F3 or B3.1, each wait a separate "X" event of category
    "wait" on the same track. ts and dur are microseconds.
    """
    source = trace.meta.source or "trace"
    out = [{"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": f"pipeline ({source})"}}]
    for rank in range(trace.num_ranks):
        out.append({"ph": "M", "name": "thread_name", "pid": 0, "tid": rank,
                    "args": {"name": f"rank {rank}"}})
        # Without a sort index viewers order tracks by first appearance, not by rank.
        out.append({"ph": "M", "name": "thread_sort_index", "pid": 0, "tid": rank,
                    "args": {"sort_index": rank}})
    for e in trace.events:
        out.append({"ph": "X", "name": e.name, "cat": e.op, "pid": 0, "tid": e.rank,
                    "ts": e.start * 1e6, "dur": e.duration * 1e6,
                    "args": {"op": e.op, "microbatch": e.microbatch, "chunk": e.chunk}})
    for w in trace.waits:
        out.append({"ph": "X", "name": f"wait {w.what}", "cat": "wait", "pid": 0, "tid": w.rank,
                    "ts": w.start * 1e6, "dur": (w.end - w.start) * 1e6, "args": {"what": w.what}})
    return {"traceEvents": out, "displayTimeUnit": "ms", "otherData": _jsonable(asdict(trace.meta))}


def write_chrome_trace(trace: Trace, path) -> Path:
    """Write :func:`to_chrome_trace` to ``path`` (open it at https://ui.perfetto.dev)."""
    path = Path(path)
    path.write_text(json.dumps(to_chrome_trace(trace)))
    return path


def summary(trace: Trace) -> dict:
    """The headline numbers of a trace as a plain (JSON-ready) dict.

    makespan, utilization, bubble_fraction; per rank: busy (computing), waiting (blocked
    on a receive) and utilization; peak stashed activations (the recorded ones, else
    counted from the event order) and bytes where measured; and the trace's meta.
    """
    span = trace.makespan
    per_rank = [{"rank": r, "busy": trace.busy(r), "waiting": trace.waited(r),
                 "utilization": trace.busy(r) / span if span > 0 else 0.0} for r in range(trace.num_ranks)]
    return {"num_ranks": trace.num_ranks, "num_events": len(trace.events),
            "makespan": span, "utilization": trace.utilization, "bubble_fraction": trace.bubble_fraction,
            "per_rank": per_rank,
            "peak_stashed": (list(trace.peak_stashed) if trace.peak_stashed is not None
                             else trace.stash_counts()),
            "peak_stashed_bytes": trace.peak_stashed_bytes, "peak_memory_bytes": trace.peak_memory_bytes,
            "meta": _jsonable(asdict(trace.meta))}


def write_summary_json(trace: Trace, path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(summary(trace), indent=2))
    return path


CSV_COLUMNS = ("kind", "rank", "name", "op", "microbatch", "chunk", "start", "end", "duration", "what")


def write_events_csv(trace: Trace, path) -> Path:
    """One row per event (kind "event") and per wait (kind "wait"), by rank then start time."""
    rows = [{"kind": "event", "rank": e.rank, "name": e.name, "op": e.op, "microbatch": e.microbatch,
             "chunk": e.chunk, "start": e.start, "end": e.end, "duration": e.duration, "what": ""}
            for e in trace.events]
    rows += [{"kind": "wait", "rank": w.rank, "name": f"wait {w.what}", "op": "", "microbatch": "",
              "chunk": "", "start": w.start, "end": w.end, "duration": w.end - w.start,
              "what": w.what} for w in trace.waits]
    rows.sort(key=lambda row: (row["rank"], row["start"], row["kind"] == "event"))
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _jsonable(value):
    # Anything JSON cannot hold (a torch.device or a Path given as the device) becomes its str.
    return json.loads(json.dumps(value, default=str))

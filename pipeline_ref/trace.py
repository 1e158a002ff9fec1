"""Traces: what each rank did and when, from the simulator or from a real run.

A :class:`Trace` is a list of :class:`Event` (one per executed action) plus the
time each rank spent blocked on communication (:class:`Wait`). The simulator and
the executor both produce it, so every number below, and every plot in
``plot.py``, works the same on a prediction and on a measurement.

    utilization = busy time / (ranks x makespan)      bubble = 1 - utilization
"""
from __future__ import annotations

from dataclasses import dataclass, field, asdict


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


@dataclass
class Trace:
    num_ranks: int
    events: list[Event] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    peak_stashed: list[int] | None = None          # activations held at once, per rank
    peak_stashed_bytes: list[int] | None = None    # measured runs only
    peak_memory_bytes: list[int] | None = None     # GPU runs only (torch.cuda.max_memory_allocated)
    meta: dict = field(default_factory=dict)       # schedule, num_microbatches, source ("simulated"/"measured"), ...

    # ------------------------------------------------------------------ derived numbers
    @property
    def makespan(self) -> float:
        if not self.events:
            return 0.0
        return max(e.end for e in self.events) - min(e.start for e in self.events)

    def busy(self, rank: int) -> float:
        return sum(e.duration for e in self.events if e.rank == rank)

    def waited(self, rank: int) -> float:
        return sum(w.end - w.start for w in self.waits if w.rank == rank)

    @property
    def utilization(self) -> float:
        """Compute time over (ranks x makespan): 1.0 means no rank was ever idle."""
        span = self.makespan
        if span <= 0:
            return 0.0
        return sum(e.duration for e in self.events) / (self.num_ranks * span)

    @property
    def bubble_fraction(self) -> float:
        return 1.0 - self.utilization

    def stash_counts(self) -> list[int]:
        """Peak number of microbatches whose activations a rank holds, from the event order.

        A forward stashes; a B (or W, which ends a split backward) frees.
        """
        peaks = []
        for rank in range(self.num_ranks):
            held = peak = 0
            for e in sorted((e for e in self.events if e.rank == rank), key=lambda e: e.start):
                held += 1 if e.op == "F" else -1 if e.op in ("B", "W") else 0
                peak = max(peak, held)
            peaks.append(peak)
        return peaks

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Trace":
        data = dict(data)
        data["events"] = [Event(**e) for e in data.get("events", [])]
        data["waits"] = [Wait(**w) for w in data.get("waits", [])]
        return cls(**data)

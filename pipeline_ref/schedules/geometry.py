"""The shape of a pipeline: actions, schedules, and which virtual stage talks to which.

Everything else in ``pipeline_ref`` builds on this module and nothing here imports
the rest, so it is the place to start reading:

    >>> from pipeline_ref.schedules.geometry import Action, Pipeline
    >>> pipe = Pipeline(num_stages=2, num_chunks=2)            # interleaved: rank r holds stages r and r + 2
    >>> pipe.virtual_stage(rank=1, chunk=1), pipe.place(2)
    (3, Place(rank=0, chunk=1))
    >>> pipe.receives(Action("F", 0, 1), rank=0)               # F0.1 on rank 0 needs F0 of rank 1
    Place(rank=1, chunk=0)
    >>> pipe.sends(Action("B", 0, 1), rank=0)                  # its input gradient: back to rank 1, chunk 0
    Place(rank=1, chunk=0)

- An :class:`Action` is ``(op, microbatch, chunk)``: ``F`` forward, ``B`` backward, or the zero-bubble
  halves ``I`` (input gradient) and ``W`` (weight gradient). ``chunk`` is 0 but for schedules that give a
  rank several model chunks (virtual stages).
- A :class:`Schedule` is one tuple of actions per rank and the ``layout`` of its chunks; it is immutable,
  and slicing or copying keeps the layout.
- A :class:`Pipeline` is the geometry: ``num_stages`` ranks, ``num_chunks`` chunks each, laid out
  ``"interleaved"`` (Megatron: chunk c of rank r is virtual stage c * p + r) or ``"v"`` (ZB-V: odd chunks
  come back up the ranks). It alone answers where an action's input comes from and where its output
  goes; the validator, the simulator, the executor and the set-up all ask it.

Dependencies: the forward of microbatch i on virtual stage v needs the forward of i on v - 1; its
backward (or ``I``) needs the backward (or ``I``) of i on v + 1; ``W`` needs only the local ``I``.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple



class Op(str, Enum):
    """What an action computes, and so what it receives, sends on, hands its neighbour and frees.

    Equal to its letter (``Op.F == "F"``): an Action's ``op`` is the letter, ``Op(action.op)`` its meaning.
    """
    F = "F"      # forward
    B = "B"      # backward: the input gradient and the weight gradient together
    I = "I"      # input gradient only (zero bubble), sent on at once  # noqa: E741
    W = "W"      # weight gradient only, later, local

    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def flow(self) -> int:
        """+1: from virtual stage v - 1 to v + 1 (forward); -1: from v + 1 to v - 1 (backward); 0: local."""
        return {"F": 1, "B": -1, "I": -1, "W": 0}[self.value]

    @property
    def message(self) -> str | None:
        """What it receives and sends: "activation", "gradient", or None (a W talks to no one)."""
        return {1: "activation", -1: "gradient", 0: None}[self.flow]

    @property
    def result(self) -> "Op":
        """What it hands its neighbour, as dependencies name it: B and I both give the input gradient (B)."""
        return Op.B if self.flow < 0 else self

    @property
    def frees(self) -> tuple:
        """The ops of the same microbatch and chunk whose received buffers this one is the last to read: the
        stash reads an activation until the backward (B, or the W after an I); an I's output gradient is kept
        for its W, which may read it as it is (autograd passes it through)."""
        return {"B": (Op.F,), "W": (Op.F, Op.I)}.get(self.value, ())

    @property
    def ends_backward(self) -> bool:
        """Whether a microbatch's backward on this chunk is over after it: B, or W after a split backward."""
        return self in (Op.B, Op.W)


OPS = tuple(op.value for op in Op)    # F, B, I, W
_FLOW = {op.value: op.flow for op in Op}     # the replay asks this per action: a dict, not an Enum call
LAYOUTS = ("interleaved", "v")        # which virtual stage chunk c of rank r holds: Pipeline.virtual_stage


class ScheduleError(ValueError):
    """A schedule that cannot run; the message names the rank, the action and why."""


class Action(NamedTuple):
    op: str
    microbatch: int
    chunk: int = 0

    def __str__(self) -> str:
        return f"{self.op}{self.microbatch}" + (f".{self.chunk}" if self.chunk else "")


def result_of(op: str) -> str:
    """What an op hands to its neighbour: ``B`` and ``I`` both produce the input gradient ("B")."""
    return "B" if _FLOW[op] < 0 else op


def actions_of(op: str, count: int, chunk: int = 0) -> list[Action]:
    """``[Action(op, 0, chunk), ..., Action(op, count - 1, chunk)]``: generators share these between ranks."""
    return [Action(op, i, chunk) for i in range(count)]


def interleave(*lists: list) -> list:
    """``[a0, b0, c0, a1, b1, c1, ...]`` from lists of one length: repeating groups, built by slicing."""
    out = [None] * sum(map(len, lists))
    for k, items in enumerate(lists):
        out[k::len(lists)] = items
    return out


class Schedule(tuple):
    """One tuple of :class:`Action` per pipeline rank, and the ``layout`` of its chunks. Immutable.

    ``Schedule(per_rank_lists, layout="v")``. Equal to another schedule, or to a plain list of lists,
    with the same actions (a student's generator may return lists). Slicing keeps the layout.
    """

    layout: str

    def __new__(cls, per_rank=(), layout: str = "interleaved"):
        self = super().__new__(cls, (tuple(actions) for actions in per_rank))
        self.layout = layout
        return self

    @classmethod
    def of(cls, schedule) -> "Schedule":
        """``schedule`` as a Schedule: itself, or a list of lists with the layout it carries (default
        interleaved)."""
        if isinstance(schedule, Schedule):
            return schedule
        return cls(schedule, getattr(schedule, "layout", "interleaved"))

    def __getitem__(self, index):
        item = super().__getitem__(index)
        return Schedule(item, self.layout) if isinstance(index, slice) else item

    def __eq__(self, other) -> bool:
        if not isinstance(other, (list, tuple)):
            return NotImplemented
        if isinstance(other, Schedule) and other.layout != self.layout:
            return False
        return len(self) == len(other) and all(list(a) == list(b) for a, b in zip(self, other))

    def __ne__(self, other) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = tuple.__hash__

    def __reduce__(self):               # pickle and copy keep the layout
        return (Schedule, (tuple(self), self.layout))

    def __repr__(self) -> str:
        return f"Schedule({[list(actions) for actions in self]!r}, layout={self.layout!r})"

    @property
    def num_stages(self) -> int:
        return len(self)

    @property
    def num_chunks(self) -> int:
        return 1 + max((a.chunk for actions in self for a in actions), default=0)

    @property
    def num_microbatches(self) -> int:
        return 1 + max((a.microbatch for actions in self for a in actions), default=-1)

    @property
    def splits_backward(self) -> bool:
        """Whether the backward runs as I and W (zero bubble) rather than as B."""
        return any(a.op in (Op.I, Op.W) for actions in self for a in actions)

    @property
    def pipeline(self) -> "Pipeline":
        return Pipeline(len(self), self.num_chunks, self.layout)


class Place(NamedTuple):
    """Where a virtual stage lives: a pipeline rank and the chunk of that rank."""
    rank: int
    chunk: int


class Message(NamedTuple):
    """One message of an action: its peer (where it comes from, or goes to), what it carries, and the
    microbatch and chunk it is addressed to (the receiving chunk: what its tag names)."""
    peer: Place
    what: str                 # "activation" or "gradient"
    microbatch: int
    chunk: int


@dataclass(frozen=True)
class Pipeline:
    """``num_stages`` ranks with ``num_chunks`` chunks each, placed by ``layout``: the pipeline's geometry."""
    num_stages: int
    num_chunks: int = 1
    layout: str = "interleaved"

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ScheduleError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")

    @property
    def num_virtual_stages(self) -> int:
        return self.num_stages * self.num_chunks

    def virtual_stage(self, rank: int, chunk: int = 0) -> int:
        """The virtual stage that ``chunk`` of ``rank`` holds.

        interleaved (Megatron): chunk c on rank r is c * p + r, so a microbatch goes round the ranks once
        per chunk: 0, 1, ..., p - 1, 0, 1, ...
        v (ZB-V): even chunks go down the ranks, odd chunks come back up: chunk 1 on rank r is 2p - 1 - r,
        so with two chunks rank 0 holds the first and the last stage, and the last rank holds two
        neighbours (p - 1 and p) and passes between them locally.
        """
        if self.layout == "v" and chunk % 2:
            return (chunk + 1) * self.num_stages - 1 - rank
        return chunk * self.num_stages + rank

    def place(self, vstage: int) -> Place:
        """(rank, chunk) holding virtual stage ``vstage``: the inverse of :meth:`virtual_stage`."""
        chunk, within = divmod(vstage, self.num_stages)
        if self.layout == "v" and chunk % 2:
            return Place(self.num_stages - 1 - within, chunk)
        return Place(within, chunk)

    def is_first(self, rank: int, chunk: int = 0) -> bool:
        """Whether this chunk holds virtual stage 0: its input is the data."""
        return self.virtual_stage(rank, chunk) == 0

    def is_last(self, rank: int, chunk: int = 0) -> bool:
        """Whether this chunk holds the last virtual stage: it applies the loss."""
        return self.virtual_stage(rank, chunk) == self.num_virtual_stages - 1

    @property
    def loss_rank(self) -> int:
        """The rank holding the last virtual stage (the one that needs the targets)."""
        return self.place(self.num_virtual_stages - 1).rank

    def receives(self, action: Action, rank: int) -> Place | None:
        """Where the message ``action`` waits for comes from, or None (data, the loss, or a local W)."""
        flow = _FLOW[action.op]
        source = self.virtual_stage(rank, action.chunk) - flow
        return self.place(source) if flow and 0 <= source < self.num_virtual_stages else None

    def sends(self, action: Action, rank: int) -> Place | None:
        """Where the result of ``action`` goes, or None (the loss, the first stage's gradient, a W)."""
        flow = _FLOW[action.op]
        dest = self.virtual_stage(rank, action.chunk) + flow
        return self.place(dest) if flow and 0 <= dest < self.num_virtual_stages else None

    def messages(self, action: Action, rank: int) -> tuple[Message | None, Message | None]:
        """(the message ``action`` receives first, the one its result goes out as), each None where there is
        none. The executor's plan, the torch transport's order check and the memory plan all read these."""
        source, dest = self.receives(action, rank), self.sends(action, rank)
        what = Op(action.op).message
        return (None if source is None else Message(source, what, action.microbatch, action.chunk),
                None if dest is None else Message(dest, what, action.microbatch, dest.chunk))

    def dependency(self, action: Action, rank: int) -> tuple[int, Action] | None:
        """The action whose result ``action`` waits for, as (its rank, it), or None.

        The producer's op is written "F" or "B"; "B" stands for B or I there (both produce the input
        gradient).
        """
        source = self.receives(action, rank)
        if source is None:
            return None
        return source.rank, Action(result_of(action.op), action.microbatch, source.chunk)

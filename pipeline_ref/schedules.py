"""Pipeline schedules as data, and the validator that checks them.

A schedule is one ordered list of :class:`Action` per pipeline rank. Nothing in
it says "send" or "receive": communication is implied by the dependencies
between actions, so the same list can be played by the simulator
(``simulate.py``, no processes) and by the executor (``executor.py``, over MPI).

    >>> from pipeline_ref import schedules
    >>> sched = schedules.build("1f1b", num_stages=2, num_microbatches=3)
    >>> [" ".join(map(str, actions)) for actions in sched]
    ['F0 F1 B0 F2 B1 B2', 'F0 B0 F1 B1 F2 B2']
    >>> schedules.validate(sched)

Dependencies (``v`` = virtual stage: ``c * num_stages + rank`` for chunk ``c``, or
the V layout of :func:`virtual_stage` for a schedule that says so):
the forward of microbatch i on v needs the forward of i on v - 1; its backward
(or input-gradient ``I``) needs the backward of i on v + 1; the weight gradient
``W`` needs the local ``I``.
"""
from __future__ import annotations

from typing import NamedTuple

OPS = ("F", "B", "I", "W")  # forward, backward, input-gradient, weight-gradient


class Action(NamedTuple):
    op: str
    microbatch: int
    chunk: int = 0

    def __str__(self) -> str:
        return f"{self.op}{self.microbatch}" + (f".{self.chunk}" if self.chunk else "")


LAYOUTS = ("interleaved", "v")   # which virtual stage chunk c of rank r holds: see virtual_stage()


class Schedule(list):
    """One list of :class:`Action` per pipeline rank, and the ``layout`` of its chunks.

    A plain ``list`` of lists is a schedule too, with the interleaved layout: only a
    schedule whose chunks sit otherwise (ZB-V's "v") needs this class to say so.
    """

    def __init__(self, per_rank=(), layout: str = "interleaved"):
        super().__init__(per_rank)
        self.layout = layout


def layout_of(schedule) -> str:
    return getattr(schedule, "layout", "interleaved")


class ScheduleError(ValueError):
    """A schedule that cannot run; the message names the rank, the action and why."""


# --------------------------------------------------------------------------- generators

def naive(num_stages: int, num_microbatches: int) -> Schedule:
    """One microbatch at a time through the whole pipeline: only one rank is ever busy."""
    return [[a for i in range(num_microbatches) for a in (Action("F", i), Action("B", i))]
            for _ in range(num_stages)]


def gpipe(num_stages: int, num_microbatches: int) -> Schedule:
    """GPipe: all forwards, then all backwards. Every rank stashes all m activations."""
    forwards = [Action("F", i) for i in range(num_microbatches)]
    backwards = [Action("B", i) for i in range(num_microbatches)]
    return [forwards + backwards for _ in range(num_stages)]


def one_f_one_b(num_stages: int, num_microbatches: int) -> Schedule:
    """1F1B (PipeDream-flush): warmup forwards, then one forward / one backward, then cooldown.

    Stage s runs num_stages - s - 1 warmup forwards, so it never stashes more than
    min(num_stages - s, num_microbatches) activations.
    """
    schedule = []
    for stage in range(num_stages):
        warmup = min(num_stages - stage - 1, num_microbatches)
        actions = [Action("F", i) for i in range(warmup)]
        for i in range(num_microbatches - warmup):          # steady state
            actions += [Action("F", warmup + i), Action("B", i)]
        actions += [Action("B", i) for i in range(num_microbatches - warmup, num_microbatches)]
        schedule.append(actions)
    return schedule


GENERATORS = {"naive": naive, "gpipe": gpipe, "1f1b": one_f_one_b}  # more are added at the end of this file


def build(name: str, num_stages: int, num_microbatches: int, **options) -> Schedule:
    """The schedule called ``name`` for ``num_stages`` ranks and ``num_microbatches``."""
    if name not in GENERATORS:
        raise ScheduleError(f"unknown schedule {name!r}; choose one of {', '.join(GENERATORS)}")
    for what, value in (("num_stages", num_stages), ("num_microbatches", num_microbatches)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScheduleError(f"{what} must be a positive integer, got {value!r}")
    return GENERATORS[name](num_stages, num_microbatches, **options)


# --------------------------------------------------------------------------- structure

def num_chunks(schedule: Schedule) -> int:
    return 1 + max((a.chunk for actions in schedule for a in actions), default=0)


def splits_backward(schedule: Schedule) -> bool:
    """Whether the schedule runs the backward as I and W (zero bubble) rather than as B."""
    return any(a.op in ("I", "W") for actions in schedule for a in actions)


def count_microbatches(schedule: Schedule) -> int:
    return 1 + max((a.microbatch for actions in schedule for a in actions), default=-1)


def virtual_stage(rank: int, chunk: int, num_stages: int, layout: str = "interleaved") -> int:
    """The virtual stage that chunk ``chunk`` of ``rank`` holds.

    interleaved (Megatron): chunk c on rank r is c * p + r, so a microbatch goes round
    the ranks once per chunk: 0, 1, ..., p - 1, 0, 1, ...
    v (ZB-V): even chunks go down the ranks, odd chunks come back up: chunk 1 on rank r
    is 2p - 1 - r, so with two chunks rank 0 holds the first and the last stage, and
    the last rank holds two neighbours (p - 1 and p) and passes between them locally.
    """
    if layout == "v" and chunk % 2:
        return (chunk + 1) * num_stages - 1 - rank
    return chunk * num_stages + rank


def rank_of(vstage: int, num_stages: int, layout: str = "interleaved") -> tuple[int, int]:
    """(rank, chunk) that holds virtual stage ``vstage``: the inverse of :func:`virtual_stage`."""
    chunk, within = divmod(vstage, num_stages)
    if layout == "v" and chunk % 2:
        return num_stages - 1 - within, chunk
    return within, chunk


def dependency(action: Action, rank: int, num_stages: int, chunks: int,
               layout: str = "interleaved") -> tuple[int, Action] | None:
    """The action (on this or another rank) whose result ``action`` waits for, as (rank, action), or None.

    This is exactly what the executor receives before running ``action``.
    """
    v = virtual_stage(rank, action.chunk, num_stages, layout)
    last = chunks * num_stages - 1
    if action.op == "F" and v > 0:
        src, chunk = rank_of(v - 1, num_stages, layout)
        return src, Action("F", action.microbatch, chunk)
    if action.op in ("B", "I") and v < last:
        src, chunk = rank_of(v + 1, num_stages, layout)
        return src, Action("B", action.microbatch, chunk)  # "B" stands for B or I there
    return None


def _check_action(a, rank: int) -> None:
    if not isinstance(a, Action):
        raise ScheduleError(f"rank {rank}: {a!r} is not an Action")
    if a.op not in OPS:
        raise ScheduleError(f"rank {rank}, action {a}: unknown op {a.op!r} (expected one of {OPS})")
    if not (isinstance(a.microbatch, int) and a.microbatch >= 0):
        raise ScheduleError(f"rank {rank}, action {a}: microbatch must be a non-negative int")
    if not (isinstance(a.chunk, int) and a.chunk >= 0):
        raise ScheduleError(f"rank {rank}, action {a}: chunk must be a non-negative int")


def _check_rank(actions: list, rank: int, microbatches: int, chunks: int) -> None:
    """Every (microbatch, chunk): F, then B (or I then W), each exactly once."""
    seen: dict[tuple[int, int], list[str]] = {}
    for a in actions:
        if a.microbatch >= microbatches:
            raise ScheduleError(f"rank {rank}, action {a}: microbatch {a.microbatch} is out of range "
                                f"(the step has {microbatches} microbatches)")
        done = seen.setdefault((a.microbatch, a.chunk), [])
        if a.op in done:
            raise ScheduleError(f"rank {rank}, action {a}: runs twice")
        if a.op != "F" and "F" not in done:
            raise ScheduleError(f"rank {rank}, action {a}: runs before its forward F{a.microbatch}")
        if a.op == "B" and ("I" in done or "W" in done) or a.op in "IW" and "B" in done:
            raise ScheduleError(f"rank {rank}, action {a}: mixes B with the split backward I/W")
        if a.op == "W" and "I" not in done:
            raise ScheduleError(f"rank {rank}, action {a}: weight gradient before its input gradient I")
        done.append(a.op)
    for i in range(microbatches):
        for c in range(chunks):
            done = seen.get((i, c), [])
            name = str(Action("F", i, c))
            if "F" not in done:
                raise ScheduleError(f"rank {rank}: never runs the forward {name}")
            if "B" not in done and not ("I" in done and "W" in done):
                raise ScheduleError(f"rank {rank}: never completes the backward of {name[1:]} "
                                    f"(needs B, or both I and W)")


def validate(schedule: Schedule, num_microbatches: int | None = None) -> None:
    """Raise :class:`ScheduleError` unless ``schedule`` runs to completion.

    Checks each rank's list (every forward before its backward, each exactly once)
    and then plays the ranks together, each one only advancing when the message its
    next action needs has been produced. If all ranks get stuck, the schedule would
    deadlock, and the error shows who waits for whom.
    """
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise ScheduleError("a schedule is a non-empty list with one list of actions per rank")
    num_stages = len(schedule)
    layout = layout_of(schedule)
    if layout not in LAYOUTS:
        raise ScheduleError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    # Types first: num_chunks / count_microbatches below read .chunk and .microbatch.
    for rank, actions in enumerate(schedule):
        if not isinstance(actions, (list, tuple)):
            raise ScheduleError(f"rank {rank}: expected a list of actions, got {type(actions).__name__}")
        for a in actions:
            _check_action(a, rank)
    chunks = num_chunks(schedule)
    microbatches = num_microbatches if num_microbatches is not None else count_microbatches(schedule)
    for rank, actions in enumerate(schedule):
        _check_rank(list(actions), rank, microbatches, chunks)

    done: set[tuple[int, int, int, str]] = set()  # (vstage, microbatch, chunk-free op kind)
    position = [0] * num_stages

    def produced(rank: int, action: Action) -> bool:
        v = virtual_stage(rank, action.chunk, num_stages, layout)
        kind = "B" if action.op in ("B", "I") else action.op
        return (v, action.microbatch, kind) in done

    progress = True
    while progress:
        progress = False
        for rank, actions in enumerate(schedule):
            while position[rank] < len(actions):
                action = actions[position[rank]]
                dep = dependency(action, rank, num_stages, chunks, layout)
                if dep is not None and not produced(*dep):
                    break
                v = virtual_stage(rank, action.chunk, num_stages, layout)
                done.add((v, action.microbatch, "B" if action.op in ("B", "I") else action.op))
                position[rank] += 1
                progress = True
    stuck = [r for r in range(num_stages) if position[r] < len(schedule[r])]
    if stuck:
        waits = []
        for r in stuck:
            action = schedule[r][position[r]]
            src, needed = dependency(action, r, num_stages, chunks, layout)
            blocker = schedule[src][position[src]] if position[src] < len(schedule[src]) else None
            waits.append(f"rank {r} waits at {action} for {needed} from rank {src}"
                         + (f" (which is itself stuck at {blocker})" if blocker else ""))
        raise ScheduleError("deadlock: " + "; ".join(waits))


def describe(schedule: Schedule) -> str:
    """The schedule as a table, one line per rank: handy in notebooks and error messages."""
    width = max(len(str(a)) for actions in schedule for a in actions) if any(schedule) else 2
    return "\n".join(f"rank {r}: " + " ".join(f"{str(a):>{width}}" for a in actions)
                     for r, actions in enumerate(schedule))


# The schedules past the textbooks live in their own files; they build on Action, defined above.
from .interleaved import interleaved  # noqa: E402
from .zero_bubble import zb_h1, zb_h2, zbv  # noqa: E402

GENERATORS.update({"interleaved": interleaved, "zb-h1": zb_h1, "zb-h2": zb_h2, "zbv": zbv})

"""Play the ranks of a schedule together, in dependency order: the one loop behind validate() and simulate().

Layer: schedules (pure data; no processes, no torch).

    >>> from pipeline_ref import schedules

    >>> from pipeline_ref.schedules import replay
    >>> order = []
    >>> visit = lambda rank, action, dependency: order.append((rank, str(action)))
    >>> replay.replay(schedules.build("1f1b", 2, 2), visit)
    []
    >>> order[:4]
    [(0, 'F0'), (0, 'F1'), (1, 'F0'), (1, 'B0')]

:func:`replay` advances each rank through its list as long as the message its next action needs
(``Pipeline.dependency``) has been produced, calling ``visit(rank, action, dependency)`` for each
action it plays; every action is visited after the action it depends on. It returns the ranks it
could not finish (:class:`Stuck`): a deadlock. :func:`validate` checks each rank's list on its own,
then replays and reports a deadlock with who waits for whom; ``simulate.simulate`` replays with
costs and times. Either way a schedule is played once.

Speed: a search plays thousands of schedules of 10^5 actions, so :func:`compile_schedule` turns a
schedule into integers once (per action: the message it waits for, the message it produces, the rank
that message comes from), checking each rank's list with whole-array operations on the way, and the
replay loops over those integers. The rank-by-rank sweep order is the one ``visit`` has always seen.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from pipeline_ref.schedules.geometry import OPS, Action, Pipeline, Schedule, ScheduleError

OP_CODES = {op: code for code, op in enumerate(OPS)}      # F 0, B 1, I 2, W 3


class Stuck(NamedTuple):
    """A rank that cannot go on: it waits at ``action`` for ``needed`` from rank ``source``."""
    rank: int
    action: Action
    source: int
    needed: Action


class Plan(NamedTuple):
    """A checked schedule as integers, one list per rank with one entry per action.

    A message is numbered ``(virtual stage * num_microbatches + microbatch) * 2 + kind``, kind 0 for the
    activation a forward produces and 1 for the input gradient a B or I produces (a W produces nothing
    anyone waits for). ``needs``: the message an action waits for, or -1; ``makes``: the one it
    produces, or -1; ``sources``: the rank that ``needs`` comes from, or -1; ``holds``: +1 for a forward
    (it stashes), -1 for B or W (they free), 0 for I: all integer arrays. ``columns``: per rank, the
    arrays (op code, microbatch, chunk) of its actions.
    """
    schedule: Schedule
    pipeline: Pipeline
    num_microbatches: int                          # as Schedule.num_microbatches, or as the caller gave it
    needs: list[np.ndarray]
    makes: list[np.ndarray]
    sources: list[np.ndarray]
    holds: list[np.ndarray]
    columns: list[tuple[np.ndarray, np.ndarray, np.ndarray]]

    @property
    def num_messages(self) -> int:
        return 2 * self.pipeline.num_virtual_stages * max(1, self.num_microbatches)


def replay(schedule: Schedule,
           visit: Callable[[int, Action, tuple | None], None] | None = None) -> list[Stuck]:
    """Play every rank's actions in an order that respects the dependencies; return the ranks left stuck."""
    plan = _compile(Schedule.of(schedule), None)
    if visit is None:
        return stuck_ranks(plan, sweep(plan))
    schedule, pipe = plan.schedule, plan.pipeline

    def visit_action(rank: int, index: int) -> None:
        action = schedule[rank][index]
        visit(rank, action, pipe.dependency(action, rank))
    return stuck_ranks(plan, sweep(plan, visit_action))


def sweep(plan: Plan, visit: Callable[[int, int], None] | None = None) -> list[int]:
    """Sweep the ranks in order, each as far as its messages allow, until none moves; return where each
    rank stopped.

    ``visit(rank, index)`` is called for each action played, in play order.
    """
    produced = bytearray(plan.num_messages)
    all_needs, all_makes = [n.tolist() for n in plan.needs], [m.tolist() for m in plan.makes]
    position = [0] * len(all_needs)
    progress = True
    while progress:
        progress = False
        for rank, needs in enumerate(all_needs):
            start = index = position[rank]
            makes, count = all_makes[rank], len(needs)
            while index < count:
                needed = needs[index]
                if needed >= 0 and not produced[needed]:
                    break
                if visit is not None:
                    visit(rank, index)
                made = makes[index]
                if made >= 0:
                    produced[made] = 1
                index += 1
            if index != start:
                position[rank] = index
                progress = True
    return position


def stuck_ranks(plan: Plan, position: list[int]) -> list[Stuck]:
    """The ranks a sweep left before the end of their lists, with what each waits for."""
    schedule, pipe = plan.schedule, plan.pipeline
    return [Stuck(rank, schedule[rank][position[rank]],
                  *pipe.dependency(schedule[rank][position[rank]], rank))
            for rank in range(len(schedule)) if position[rank] < len(schedule[rank])]


def deadlock_message(schedule: Schedule, stuck: list[Stuck]) -> str:
    """"deadlock: rank 0 waits at B0 for B0 from rank 1 (which is itself stuck at F1); ..." """
    at = {s.rank: s.action for s in stuck}
    return "deadlock: " + "; ".join(
        f"rank {s.rank} waits at {s.action} for {s.needed} from rank {s.source}"
        + (f" (which is itself stuck at {at[s.source]})" if s.source in at else "") for s in stuck)


# --------------------------------------------------------------------------- each rank's list on its own

def compile_schedule(schedule, num_microbatches: int | None = None) -> Plan:
    """:func:`check_structure`, then the schedule as a :class:`Plan` for :func:`sweep`."""
    columns = _well_formed(schedule, num_microbatches) if isinstance(schedule, (list, tuple)) else None
    if columns is None:
        return _compile(check_structure(schedule, num_microbatches), num_microbatches)
    return _compile(Schedule.of(schedule), num_microbatches, columns)


def check_structure(schedule, num_microbatches: int | None = None) -> Schedule:
    """The checks that need no replay; returns the schedule as a :class:`Schedule`.

    Types, ops and ranges; then, per rank, every (microbatch, chunk) gets its F before its B (or I then
    W), each exactly once.
    """
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise ScheduleError("a schedule is a non-empty list with one list of actions per rank")
    layout = getattr(schedule, "layout", "interleaved")
    Pipeline(len(schedule), 1, layout)               # refuses an unknown layout
    if _well_formed(schedule, num_microbatches) is not None:
        return Schedule.of(schedule)
    # Something is wrong: find it action by action, for a message that names the rank and the action.
    for rank, actions in enumerate(schedule):
        if not isinstance(actions, (list, tuple)):
            raise ScheduleError(f"rank {rank}: expected a list of actions, got {type(actions).__name__}")
        for a in actions:
            _check_action(a, rank)
    schedule = Schedule.of(schedule)
    microbatches = schedule.num_microbatches if num_microbatches is None else num_microbatches
    for rank, actions in enumerate(schedule):
        _check_rank(actions, rank, microbatches, schedule.num_chunks)
    return schedule


def _columns(actions) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(op codes, microbatches, chunks) of one rank's actions as arrays, or None if any is malformed."""
    if not isinstance(actions, (list, tuple)) or not actions or set(map(type, actions)) != {Action}:
        return None
    ops, microbatches, chunks = zip(*actions)
    integers = set(map(type, microbatches)) | set(map(type, chunks))
    if not set(ops) <= OP_CODES.keys() or integers != {int}:
        return None
    columns = (np.fromiter(map(OP_CODES.__getitem__, ops), np.int64, len(ops)),
               np.array(microbatches, np.int64), np.array(chunks, np.int64))
    return None if columns[1].min() < 0 or columns[2].min() < 0 else columns


def _well_formed(schedule, num_microbatches: int | None) -> list | None:
    """Each rank's columns if every check of :func:`check_structure` passes, else None (the slow way
    says why)."""
    columns = [_columns(actions) for actions in schedule] if schedule else [None]
    if any(c is None for c in columns):
        return None
    microbatches = (1 + max(int(mb.max()) for _, mb, _ in columns) if num_microbatches is None
                    else num_microbatches)
    chunks = 1 + max(int(ch.max()) for _, _, ch in columns)
    for ops, mb, ch in columns:
        if mb.max() >= microbatches:
            return None
        slot = (mb * chunks + ch) * 4 + ops
        if np.bincount(slot, minlength=4 * microbatches * chunks).max() > 1:   # an action twice
            return None
        where = np.full(4 * microbatches * chunks, -1, np.int64)
        where[slot] = np.arange(len(ops))
        f, b, i, w = where.reshape(-1, 4).T                  # position of each op of each (microbatch, chunk)
        has_b, has_i, has_w = b >= 0, i >= 0, w >= 0
        if not ((f >= 0).all() and (has_b ^ (has_i & has_w)).all() and not (has_w & ~has_i).any()
                and not (has_b & (has_i | has_w)).any()):
            return None
        if (has_b & (b < f)).any() or (has_i & (i < f)).any() or (has_w & (w < i)).any():
            return None
    return columns


def _compile(schedule: Schedule, num_microbatches: int | None, columns: list | None = None) -> Plan:
    if columns is None:
        pipe, count = schedule.pipeline, schedule.num_microbatches
    else:                                          # the arrays know both, without a scan of every action
        pipe = Pipeline(len(schedule), 1 + max(int(ch.max()) for _, _, ch in columns), schedule.layout)
        count = 1 + max(int(mb.max()) for _, mb, _ in columns)
    count = count if num_microbatches is None else num_microbatches
    microbatches = max(1, count)
    last = pipe.num_virtual_stages - 1
    rank_of = np.array([pipe.place(v).rank for v in range(last + 1)] + [-1], np.int64)  # [-1]: no stage
    needs, makes, sources, holds, all_columns = [], [], [], [], []
    for rank, actions in enumerate(schedule):
        if not actions:
            for column in (needs, makes, sources, holds):
                column.append(np.zeros(0, np.int64))
            all_columns.append((np.zeros(0, np.int64),) * 3)
            continue
        ops, mb, ch = columns[rank] if columns is not None else (
            np.array(column, np.int64) for column in zip(*((OP_CODES[a[0]], a[1], a[2]) for a in actions)))
        vstage = np.array([pipe.virtual_stage(rank, c) for c in range(pipe.num_chunks)], np.int64)[ch]
        forward, backward = ops == 0, (ops == 1) | (ops == 2)
        from_stage = np.where(forward & (vstage > 0), vstage - 1,
                              np.where(backward & (vstage < last), vstage + 1, -1))
        needs.append(np.where(from_stage >= 0, (from_stage * microbatches + mb) * 2 + backward, -1))
        makes.append(np.where(forward | backward, (vstage * microbatches + mb) * 2 + backward, -1))
        sources.append(rank_of[from_stage])
        holds.append(np.where(forward, 1, np.where((ops == 1) | (ops == 3), -1, 0)))
        all_columns.append((ops, mb, ch))
    return Plan(schedule, pipe, count, needs, makes, sources, holds, all_columns)


def _check_action(a, rank: int) -> None:
    if not isinstance(a, Action):
        raise ScheduleError(f"rank {rank}: {a!r} is not an Action")
    if a.op not in OPS:
        raise ScheduleError(f"rank {rank}, action {a}: unknown op {a.op!r} (expected one of {OPS})")
    for field in ("microbatch", "chunk"):
        value = getattr(a, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ScheduleError(f"rank {rank}, action {a}: {field} must be a non-negative int, got {value!r}")


def _check_rank(actions, rank: int, microbatches: int, chunks: int) -> None:
    seen: dict[tuple[int, int], list[str]] = {}
    for a in actions:
        if a.microbatch >= microbatches:
            raise ScheduleError(f"rank {rank}, action {a}: microbatch {a.microbatch} is out of range "
                                f"(the step has {microbatches} microbatches)")
        done = seen.setdefault((a.microbatch, a.chunk), [])
        forward = Action("F", a.microbatch, a.chunk)
        if a.op in done:
            raise ScheduleError(f"rank {rank}, action {a}: runs twice")
        if a.op != "F" and "F" not in done:
            raise ScheduleError(f"rank {rank}, action {a}: runs before its forward {forward}")
        if a.op == "B" and ("I" in done or "W" in done) or a.op in "IW" and "B" in done:
            raise ScheduleError(f"rank {rank}, action {a}: mixes B with the split backward I/W")
        if a.op == "W" and "I" not in done:
            raise ScheduleError(f"rank {rank}, action {a}: weight gradient before its input gradient "
                                f"{Action('I', a.microbatch, a.chunk)}")
        done.append(a.op)
    for i in range(microbatches):
        for c in range(chunks):
            done = seen.get((i, c), [])
            forward = Action("F", i, c)
            if "F" not in done:
                raise ScheduleError(f"rank {rank}: never runs the forward {forward}")
            if "B" not in done and not ("I" in done and "W" in done):
                raise ScheduleError(f"rank {rank}: never completes the backward of {str(forward)[1:]} "
                                    f"(needs B, or both I and W)")


def validate(schedule, num_microbatches: int | None = None) -> None:
    """Raise :class:`ScheduleError` unless ``schedule`` runs to completion.

    Checks each rank's list (every forward before its backward, each exactly once), then replays the
    ranks together, each one only advancing when the message its next action needs has been produced.
    If ranks get stuck the schedule would deadlock, and the error shows who waits for whom.
    """
    plan = compile_schedule(schedule, num_microbatches)
    stuck = stuck_ranks(plan, sweep(plan))
    if stuck:
        raise ScheduleError(deadlock_message(plan.schedule, stuck))

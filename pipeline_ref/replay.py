"""Play the ranks of a schedule together, in dependency order: the one loop behind validate() and simulate().

    >>> from pipeline_ref import replay, schedules
    >>> order = []
    >>> replay.replay(schedules.build("1f1b", 2, 2), lambda rank, action, dependency: order.append((rank, str(action))))
    []
    >>> order[:4]
    [(0, 'F0'), (0, 'F1'), (1, 'F0'), (1, 'B0')]

:func:`replay` advances each rank through its list as long as the message its next action needs
(``Pipeline.dependency``) has been produced, calling ``visit(rank, action, dependency)`` for each
action it plays; every action is visited after the action it depends on. It returns the ranks it
could not finish (:class:`Stuck`): a deadlock. :func:`validate` checks each rank's list on its own,
then replays and reports a deadlock with who waits for whom; ``simulate.simulate`` replays with
costs and times. Either way a schedule is played once.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from .geometry import OPS, Action, Pipeline, Schedule, ScheduleError, result_of


class Stuck(NamedTuple):
    """A rank that cannot go on: it waits at ``action`` for ``needed`` from rank ``source``."""
    rank: int
    action: Action
    source: int
    needed: Action


def replay(schedule: Schedule, visit: Callable[[int, Action, tuple | None], None] | None = None) -> list[Stuck]:
    """Play every rank's actions in an order that respects the dependencies; return the ranks left stuck."""
    schedule = Schedule.of(schedule)
    pipe = schedule.pipeline
    produced: set[tuple[int, int, str]] = set()       # (virtual stage, microbatch, "F" / "B" / "W")
    position = [0] * len(schedule)
    progress = True
    while progress:
        progress = False
        for rank, actions in enumerate(schedule):
            while position[rank] < len(actions):
                action = actions[position[rank]]
                dependency = pipe.dependency(action, rank)
                if dependency is not None:
                    source, needed = dependency
                    if (pipe.virtual_stage(source, needed.chunk), needed.microbatch, needed.op) not in produced:
                        break
                if visit is not None:
                    visit(rank, action, dependency)
                produced.add((pipe.virtual_stage(rank, action.chunk), action.microbatch, result_of(action.op)))
                position[rank] += 1
                progress = True
    return [Stuck(rank, schedule[rank][position[rank]], *pipe.dependency(schedule[rank][position[rank]], rank))
            for rank in range(len(schedule)) if position[rank] < len(schedule[rank])]


def deadlock_message(schedule: Schedule, stuck: list[Stuck]) -> str:
    """"deadlock: rank 0 waits at B0 for B0 from rank 1 (which is itself stuck at F1); ..." """
    at = {s.rank: s.action for s in stuck}
    return "deadlock: " + "; ".join(
        f"rank {s.rank} waits at {s.action} for {s.needed} from rank {s.source}"
        + (f" (which is itself stuck at {at[s.source]})" if s.source in at else "") for s in stuck)


# --------------------------------------------------------------------------- each rank's list on its own

def check_structure(schedule, num_microbatches: int | None = None) -> Schedule:
    """The checks that need no replay; returns the schedule as a :class:`Schedule`.

    Types, ops and ranges; then, per rank, every (microbatch, chunk) gets its F before its B (or I then
    W), each exactly once.
    """
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise ScheduleError("a schedule is a non-empty list with one list of actions per rank")
    layout = getattr(schedule, "layout", "interleaved")
    Pipeline(len(schedule), 1, layout)               # refuses an unknown layout
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
    schedule = check_structure(schedule, num_microbatches)
    stuck = replay(schedule)
    if stuck:
        raise ScheduleError(deadlock_message(schedule, stuck))

"""Pipeline schedules as data: the generators, and ``build`` / ``validate`` / ``describe``.

A schedule is one ordered list of :class:`~pipeline_ref.schedules.geometry.Action` per pipeline rank. Nothing
in it says "send" or "receive": communication is implied by the dependencies between actions
(``geometry.Pipeline``), so the same schedule is played by the simulator (``simulate.py``, no processes) and
by the executor (``executor.py``, over MPI).

    >>> from pipeline_ref import schedules
    >>> sched = schedules.build("1f1b", num_stages=2, num_microbatches=3)
    >>> [" ".join(map(str, actions)) for actions in sched]
    ['F0 F1 B0 F2 B1 B2', 'F0 B0 F1 B1 F2 B2']
    >>> schedules.validate(sched)

The textbook schedules are in ``classic.py``; interleaved 1F1B is in ``interleaved.py``, the zero-bubble
ones in ``zero_bubble.py``, the one searched under a memory limit (``zb-auto``: the Zero Bubble
paper's ZB-1p / ZB-2p) in ``auto_schedule.py``, DualPipeV in ``dualpipe.py``, PipeDream and 2BW
(no flush: ``build(name, p, m, steps=k)`` streams k x m microbatches) in ``asynchronous.py``.
``validate`` lives in ``replay.py`` (it replays the ranks) and is re-exported here, where users
look for it. Generators build each rank's list by slicing action lists shared between ranks
(``geometry.actions_of``, ``geometry.interleave``): a search builds schedules of 10^5-10^6 actions.
"""
from __future__ import annotations

# the names users import from here
from pipeline_ref.schedules.geometry import OPS, Action, Schedule, ScheduleError  # noqa: F401
from pipeline_ref.schedules.classic import gpipe, naive, one_f_one_b
from pipeline_ref.schedules.asynchronous import ASYNCHRONOUS, pipedream, pipedream_2bw  # noqa: F401
from pipeline_ref.schedules.auto_schedule import zb_auto
from pipeline_ref.schedules.dualpipe import dualpipev
from pipeline_ref.schedules.interleaved import interleaved
from pipeline_ref.schedules.replay import validate  # noqa: F401
from pipeline_ref.schedules.v_auto_schedule import zbv_auto
from pipeline_ref.schedules.zero_bubble import zb_h1, zb_h2, zbv


GENERATORS = {"naive": naive, "gpipe": gpipe, "1f1b": one_f_one_b, "interleaved": interleaved,
              "zb-h1": zb_h1, "zb-h2": zb_h2, "zbv": zbv, "zb-auto": zb_auto, "dualpipev": dualpipev,
              "pipedream": pipedream, "pipedream-2bw": pipedream_2bw,   # steps=: one stream, no flush
              "zbv-auto": zbv_auto}


def chunk_options(name: str, chunks: int) -> dict:
    """What ``build`` takes for ``chunks`` model chunks per rank: only interleaved 1F1B has the choice (zbv
    and dualpipev always hold 2, every other schedule 1): ``build(name, p, m, **chunk_options(name, v))``."""
    return {"chunks": chunks} if name == "interleaved" else {}


def build(name: str, num_stages: int, num_microbatches: int, **options) -> Schedule:
    """The schedule called ``name`` for ``num_stages`` ranks and ``num_microbatches``."""
    if name not in GENERATORS:
        raise ScheduleError(f"unknown schedule {name!r}; choose one of {', '.join(GENERATORS)}")
    for what, value in (("num_stages", num_stages), ("num_microbatches", num_microbatches)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScheduleError(f"{what} must be a positive integer, got {value!r}")
    return GENERATORS[name](num_stages, num_microbatches, **options)


def build_for_run(name: str, num_stages: int, num_microbatches: int, chunks: int = 1, steps: int = 1,
                  generator=None) -> list:
    """A run's schedule, one list of actions per stage (ScheduleError says what is wrong), for ``validate``:
    the one called ``name``, or the user's ``generator(num_stages, num_microbatches[, chunks=])``; an
    asynchronous schedule (PipeDream, 2BW) streams ``steps`` x ``num_microbatches`` microbatches with no
    flush."""
    streams = name in ASYNCHRONOUS
    if generator is not None:
        schedule = generator(num_stages, num_microbatches, **({"chunks": chunks} if chunks > 1 else {}))
    else:
        options = {"steps": steps} if streams else chunk_options(name, chunks)
        schedule = build(name, num_stages, num_microbatches, **options)
    if not isinstance(schedule, (list, tuple)) or len(schedule) != num_stages:
        raise ScheduleError(f"schedule {name!r} must give one list of actions per stage ({num_stages}), got "
                            f"{type(schedule).__name__} of length "
                            f"{len(schedule) if hasattr(schedule, '__len__') else '?'}")
    return schedule


# --------------------------------------------------------------------------- structure of any schedule

def num_chunks(schedule) -> int:
    """Model chunks per rank (1 but for interleaved and ZB-V), of a Schedule or a plain list of lists."""
    return Schedule.of(schedule).num_chunks


def splits_backward(schedule) -> bool:
    """Whether the schedule runs the backward as I and W (zero bubble) rather than as B."""
    return Schedule.of(schedule).splits_backward


def describe(schedule) -> str:
    """The schedule as a table, one line per rank: handy in notebooks and error messages."""
    width = max(len(str(a)) for actions in schedule for a in actions) if any(schedule) else 2
    return "\n".join(f"rank {r}: " + " ".join(f"{str(a):>{width}}" for a in actions)
                     for r, actions in enumerate(schedule))

"""A trace as a text time grid: one row per rank, one column per time slot, idle slots marked.

    python -m pipeline_ref simulate --schedule gpipe --pp 2 --microbatches 2 --timeline

    >>> from pipeline_ref import schedules, simulate
    >>> from pipeline_ref.sim.timeline import timeline
    >>> print(timeline(simulate.simulate(schedules.build("gpipe", 2, 2), forward=1, backward=2)))
    one slot = 1 cost unit (every event starts and ends on a multiple of it); '.' = idle
    time   0  1  2  3  4  5  6  7  8
    rank 0 F0 F1 .  .  .  B0--- B1---
    rank 1 .  F0 F1 B0--- B1--- .  .

For a terminal or a notebook without plots (``plot.gantt`` draws the same trace as a chart). An action is
named as the schedule names it (``F3``, ``B0.1`` for chunk 1) in its first slot; ``-`` fills the further
slots it takes. The slot is the greatest common step of all event boundaries when that gives a readable grid
(the simulator's costs without latency); otherwise (a latency much smaller than the costs, measured times)
it is the shortest action, with every boundary rounded to the nearest slot, and the header says so. Grids
wider than ``width`` are wrapped into blocks of whole slots, each under its own time ruler.
"""
from __future__ import annotations

import math
import textwrap
from fractions import Fraction

from pipeline_ref.sim.trace import TraceMeta

IDLE = "."
FILL = "-"
MAX_EXACT_SLOTS = 400      # beyond this an exact grid is too fine to read: fall back to the shortest action
FINEST = 4                 # nor an exact step that draws the shortest action more than this many slots wide


def _common_step(times: list[float], span: float) -> Fraction | None:
    """The largest step that every time is a multiple of, or None when the times share no readable step."""
    step = Fraction(0)
    for t in times:
        f = Fraction(t).limit_denominator(10_000)
        if abs(float(f) - t) > 1e-9 * max(1.0, span):     # not a short fraction: measured, not simulated
            return None
        # gcd of fractions a/b and c/d: gcd(ad, cb) / bd
        step = (Fraction(math.gcd(step.numerator * f.denominator, f.numerator * step.denominator),
                         step.denominator * f.denominator) if step else abs(f))
    return step if step else None


def slot_width(trace, max_slots: int = MAX_EXACT_SLOTS, finest: int = FINEST) -> tuple[float, bool]:
    """(width of one slot, whether every event boundary lies exactly on a slot boundary).

    The greatest common step of the boundaries, unless it is more than ``finest`` times finer than the
    shortest action (a small latency: 0.1 between actions of 1 would draw every action ten cells wide)
    or needs more than ``max_slots`` slots; then the shortest action, boundaries rounded to it.
    """
    events = trace.events
    origin = min(e.start for e in events)
    times = sorted({e.start - origin for e in events} | {e.end - origin for e in events})
    shortest = min((e.end - e.start for e in events if e.end > e.start), default=1.0)
    step = _common_step(times, times[-1])
    if step is not None and step * finest >= shortest and times[-1] / step <= max_slots:
        return float(step), True
    return shortest, False


def _slot(t: float, origin: float, width: float) -> int:
    return math.floor((t - origin) / width + 0.5)    # monotone, so rounded actions on one rank never overlap


def _number(x: float) -> str:
    return f"{x:.4g}"


def _ruler(start: int, stop: int, origin: float, slot: float, pitch: int) -> str:
    """Slot start times above slots start..stop-1, each where it fits after the previous one."""
    ruler = [" "] * ((stop - start) * pitch)
    free_from = 0
    for i in range(stop - start):
        text = _number(origin + (start + i) * slot)
        at = i * pitch
        if at >= free_from and at + len(text) <= len(ruler):
            ruler[at:at + len(text)] = text
            free_from = at + len(text) + 1
    return "".join(ruler)


def timeline(trace, width: int = 100, slot: float | None = None) -> str:
    """The grid of ``trace`` (reads only its events: rank, op, microbatch, chunk, start, end) as text.

    width: characters per line; longer grids wrap in blocks of whole slots.
    slot: the time one column stands for (default: see ``slot_width``); boundaries are rounded to it, so a
        slot longer than the shortest action can put two actions in one slot (the later one is shown).
    """
    events = list(trace.events)
    if not events:
        return "(no events)"
    if slot is not None and slot <= 0:
        raise ValueError(f"slot must be positive, got {slot}")
    unit = getattr(trace, "meta", TraceMeta()).unit
    if slot is None:
        slot, exact = slot_width(trace)
        how = ("every event starts and ends on a multiple of it" if exact else
               "the shortest action; starts and ends rounded to the nearest slot")
    else:
        how = "as asked; starts and ends rounded to the nearest slot"
    origin = min(e.start for e in events)

    def label(e) -> str:
        return f"{e.op}{e.microbatch}" + (f".{e.chunk}" if e.chunk else "")

    cell = max(len(IDLE), *(len(label(e)) for e in events))
    pitch = cell + 1                                   # a cell and the space after it
    spans = {}                                         # event -> (first slot, one past its last)
    for e in events:
        first = _slot(e.start, origin, slot)
        spans[e] = (first, max(_slot(e.end, origin, slot), first + 1))
    num_slots = max(last for _, last in spans.values())
    ranks = sorted({e.rank for e in events} | set(range(getattr(trace, "num_ranks", 0))))

    rows = {}
    for rank in ranks:
        line = list(f"{IDLE:<{cell}} " * num_slots)
        for e in (e for e in events if e.rank == rank):
            first, last = spans[e]
            # '-' only where the action goes on into the next slots, so one slot never looks like two
            field = label(e).ljust(cell) if last == first + 1 else label(e).ljust((last - first) * pitch - 1,
                                                                                  FILL)
            line[first * pitch:first * pitch + len(field)] = field
        rows[rank] = "".join(line)

    head = [f"rank {r}" for r in ranks]
    margin = max(len("time"), *(len(h) for h in head)) + 1
    per_block = max(1, (width - margin) // pitch)
    blocks = []
    for start in range(0, num_slots, per_block):
        stop = min(num_slots, start + per_block)
        lines = ["time".ljust(margin) + _ruler(start, stop, origin, slot, pitch)]
        lines += [h.ljust(margin) + rows[r][start * pitch:stop * pitch] for h, r in zip(head, ranks)]
        blocks.append("\n".join(line.rstrip() for line in lines))
    if slot == 1 and unit.endswith("units"):
        unit = unit[:-1]                               # "1 cost unit"
    header = f"one slot = {_number(slot)} {unit} ({how}); '{IDLE}' = idle"
    return textwrap.fill(header, max(width, 40)) + "\n" + "\n\n".join(blocks)

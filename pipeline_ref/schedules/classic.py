"""The textbook schedules, as data: naive (one microbatch at a time), GPipe (all forwards, then all backwards)
and 1F1B (warm-up, one forward one backward, cool-down).

Layer: schedules. ``schedules.build("1f1b", p, m)`` is the way in; PipeDream's stream (``asynchronous.py``)
and interleaved 1F1B at one chunk (``interleaved.py``) are this 1F1B.
"""
from __future__ import annotations

from pipeline_ref.schedules.geometry import Schedule, actions_of, interleave


def naive(num_stages: int, num_microbatches: int) -> Schedule:
    """One microbatch at a time through the whole pipeline: only one rank is ever busy."""
    actions = tuple(interleave(actions_of("F", num_microbatches), actions_of("B", num_microbatches)))
    return Schedule([actions] * num_stages)      # every rank the same (immutable) list


def gpipe(num_stages: int, num_microbatches: int) -> Schedule:
    """GPipe: all forwards, then all backwards. Every rank stashes all m activations."""
    actions = tuple(actions_of("F", num_microbatches) + actions_of("B", num_microbatches))
    return Schedule([actions] * num_stages)


def one_f_one_b(num_stages: int, num_microbatches: int) -> Schedule:
    """1F1B (PipeDream-flush): warmup forwards, then one forward / one backward, then cooldown.

    Stage s runs num_stages - s - 1 warmup forwards, so it never stashes more than
    min(num_stages - s, num_microbatches) activations.
    """
    m = num_microbatches
    forwards, backwards = actions_of("F", m), actions_of("B", m)
    schedule = []
    for stage in range(num_stages):
        warmup = min(num_stages - stage - 1, m)
        steady = interleave(forwards[warmup:], backwards[:m - warmup])     # F(warmup + i), B(i)
        schedule.append(forwards[:warmup] + steady + backwards[m - warmup:])
    return Schedule(schedule)

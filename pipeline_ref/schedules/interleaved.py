"""Interleaved 1F1B (Megatron-LM's virtual pipeline stages), as data.

Each of the ``num_stages`` ranks holds ``chunks`` model chunks: chunk c on rank r
is virtual stage c * num_stages + r, so a microbatch visits every rank ``chunks``
times and the pipeline's fill and drain are ``chunks`` times shorter:

    bubble = (p - 1) / (v * m) of the ideal time       utilization = v m / (v m + p - 1)

for p stages, v chunks, m microbatches, in exchange for v times more messages.

    >>> from pipeline_ref import schedules
    >>> print(schedules.describe(schedules.build("interleaved", 2, 2, chunks=2)))
    rank 0:   F0   F1 F0.1 F1.1 B0.1 B1.1   B0   B1
    rank 1:   F0   F1 F0.1 B0.1 F1.1 B1.1   B0   B1

Microbatches go through the chunks in groups of ``num_stages`` (forward: chunk 0
for microbatches 0..p-1, then chunk 1 for the same group, ...; backward the
chunks in reverse), which is why Megatron asks for m to be a multiple of p.
Rank r starts with (p - r - 1) * 2 + (v - 1) * p forwards (the warm-up), then
alternates one forward and one backward, then drains the backwards.
"""
from __future__ import annotations

from pipeline_ref.schedules.classic import one_f_one_b
from pipeline_ref.schedules.geometry import Action, Schedule, ScheduleError, interleave


def _nth(k: int, num_stages: int, chunks: int, op: str) -> Action:
    """The k-th forward (or backward) a rank runs: groups of num_stages microbatches per chunk."""
    group, within = divmod(k, num_stages * chunks)
    chunk = within // num_stages
    if op == "B":
        chunk = chunks - 1 - chunk
    return Action(op, group * num_stages + within % num_stages, chunk)


def interleaved(num_stages: int, num_microbatches: int, chunks: int = 2) -> Schedule:
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise ScheduleError(f"chunks must be a positive integer, got {chunks!r}")
    if num_microbatches % num_stages:
        raise ScheduleError("interleaved 1F1B sends microbatches through the chunks in groups of "
                            f"num_stages, so num_microbatches ({num_microbatches}) must be a multiple of "
                            f"num_stages ({num_stages})")
    if chunks == 1:
        return one_f_one_b(num_stages, num_microbatches)
    total = num_microbatches * chunks                 # actions of each kind on every rank
    forwards = [_nth(k, num_stages, chunks, "F") for k in range(total)]   # the same order on every rank
    backwards = [_nth(k, num_stages, chunks, "B") for k in range(total)]
    schedule = []
    for rank in range(num_stages):
        warmup = min((num_stages - rank - 1) * 2 + (chunks - 1) * num_stages, total)
        steady = interleave(forwards[warmup:], backwards[:total - warmup])   # F(warmup + i), B(i)
        schedule.append(forwards[:warmup] + steady + backwards[total - warmup:])
    return Schedule(schedule)

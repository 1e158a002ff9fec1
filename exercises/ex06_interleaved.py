"""Exercise 6 (lesson 06, lessons/06_interleaved.ipynb): interleaved 1F1B, v virtual stages per rank.

1F1B leaves each rank idle for (p - 1)(F + B) per step, the time it takes to fill and drain p stages.
**Interleaved 1F1B** (Megatron-LM) shrinks that, and is still a schedule as data (lists of ``Action``).
Each rank holds ``chunks`` (v) smaller pieces of the model: chunk c on rank r is *virtual stage*
``c * p + r``, so a microbatch crosses the ranks v times, and a forward or backward of one chunk costs 1/v
of a whole stage's. Filling the pipeline takes v times less time: utilization v m / (v m + p - 1).
``Action("F", 3, 1)`` is the forward of microbatch 3 through chunk 1.

What your schedule must be (the grader checks each): Megatron-LM's order, the one
``pipeline_ref.schedules.build("interleaved", p, m)`` plays; valid; every rank runs every (microbatch, chunk)
forward and backward once, the forwards of a microbatch in chunk order and its backwards the other way; it
works only when m is a multiple of p (Megatron-LM's rule: microbatches go through the chunks in groups of p);
with one chunk it is plain 1F1B; and simulated with a chunk's F = 1 / v, B = 2 / v, its utilization is
v m / (v m + p - 1). For 2 ranks, 4 microbatches, 2 chunks (``F2.1`` = ``Action("F", 2, 1)``):

    rank 0:  F0   F1   F0.1 F1.1 F2   B0.1 F3   B1.1 F2.1 B0   F3.1 B1   B2.1 B3.1 B2   B3
    rank 1:  F0   F1   F0.1 B0.1 F1.1 B1.1 F2   B0   F3   B1   F2.1 B2.1 F3.1 B3.1 B2   B3

    6.1 interleaved   interleaved 1F1B with ``chunks`` chunks per rank

Stuck? ``exercises/hints/ex06_interleaved.md`` has longer hints.
Grade it (your schedule goes through the validator, the simulator, and the real executor on 3 MPI ranks):

    .venv/bin/python -m pytest tests/exercises/test_ex06_interleaved.py
"""
from __future__ import annotations

from pipeline_ref.schedules import Action  # noqa: F401  (what the schedule is lists of)


def interleaved(num_stages: int, num_microbatches: int, chunks: int = 2) -> list[list[Action]]:
    """Interleaved 1F1B: one list of ``Action(op, microbatch, chunk)`` per rank, ops ``F`` and ``B``.

    Raises ValueError when ``chunks`` is not a positive integer or ``num_microbatches`` is not a multiple
    of ``num_stages``.
    """
    raise NotImplementedError(
        "Exercise 6.1: interleaved 1F1B over v chunks per rank, Megatron-LM's order (the docstring's "
        "table). Hint: in rank 0's row of the table, in which order do (microbatch, chunk) come, and when "
        "is B first?")

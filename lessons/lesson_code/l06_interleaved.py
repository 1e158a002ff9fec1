"""Lesson 06, beside the ranks: interleaved 1F1B's bubble in both conventions, and what its messages cost.

    bubble_conventions(4, 8, chunks=2)     # the bubble as a fraction of the step and of the ideal time
    count_messages(schedule)               # point-to-point messages of one step, counted from the schedule
    message_factor(4, 2)                   # (v p - 1) / (p - 1): interleaved's messages over 1F1B's

The ranks themselves run ``pipeline_ref.train.run_many``; nothing here starts MPI.
"""
from __future__ import annotations

from lesson_code.common import LESSON_MODEL
from pipeline_ref import schedules

# The model every schedule trains in lessons 06 and 07 (pipeline_ref.models.mlp): 8 equal blocks, so 2 stages
# of 4 blocks, or 2 ranks x 2 chunks of 2 blocks, cost the same; a block's forward on 128 samples is a
# 128 x 1024 x 1024 product (a few ms), large beside the executor's own work between actions.
MEASURE_MODEL = LESSON_MODEL


def bubble_conventions(num_stages: int, num_microbatches: int, chunks: int = 1) -> dict:
    """The same idle time written two ways (equal stages, free messages; theory).

    The fraction of the *step* idle, (p - 1) / (v m + p - 1), is what this course measures (1 - utilization).
    Megatron-LM (Narayanan et al. 2021) and the Ultra-Scale Playbook divide the same idle time by the *ideal*
    time, the step without any bubble: (p - 1) / m, and (p - 1) / (v m) interleaved. The second is larger, and
    can pass 1 (at m < p - 1 the pipeline idles longer than it computes).
    """
    p, m, v = num_stages, num_microbatches, chunks
    return {"of the step": (p - 1) / (v * m + p - 1), "of the ideal time": (p - 1) / (v * m)}


def count_messages(schedule) -> int:
    """Messages one step sends between ranks: one per action whose input comes from another rank."""
    pipe = schedules.Schedule.of(schedule).pipeline
    return sum(1 for rank, actions in enumerate(schedule) for a in actions
               if (source := pipe.receives(a, rank)) is not None and source.rank != rank)


def message_factor(num_stages: int, chunks: int) -> float:
    """Interleaved 1F1B's messages per step over 1F1B's (theory): (v p - 1) / (p - 1).

    A microbatch crosses v p - 1 boundaries between virtual stages instead of p - 1, each a message forward
    and one back. More than v for every p > 1 (3 at p = v = 2), and close to v for deep pipelines.
    """
    return (chunks * num_stages - 1) / (num_stages - 1)

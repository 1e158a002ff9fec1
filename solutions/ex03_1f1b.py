"""Exercise 3 (lesson 03): the 1F1B schedule as data: warmup, steady state, cooldown.

GPipe keeps the activations of every microbatch on every stage until the backwards start. 1F1B
(PipeDream-flush) starts each microbatch's backward as early as possible instead: stage ``s`` of
``p`` runs a few *warmup* forwards, then alternates one forward and one backward (the *steady
state*), then runs the remaining backwards (the *cooldown*). It has GPipe's bubble, m / (m + p - 1)
utilization, but stage s never holds more than min(p - s, m) microbatches' activations.

For 3 stages and 5 microbatches:

    stage 0:  F0 F1 F2 B0 F3 B1 F4 B2 B3 B4
    stage 1:  F0 F1 B0 F2 B1 F3 B2 F4 B3 B4
    stage 2:  F0 B0 F1 B1 F2 B2 F3 B3 F4 B4

    3.1 warmup_forwards   how many forwards stage s runs before its first backward
    3.2 one_f_one_b       the whole schedule, one list of ``Action`` per stage

Stuck? ``exercises/hints/ex03_1f1b.md`` has longer hints, one section per function.
Grade it (the schedule also runs on real MPI ranks through pipeline_ref's executor):

    .venv/bin/python -m pytest tests/exercises/test_ex03_1f1b.py
"""
from __future__ import annotations

from pipeline_ref.schedules import Action  # noqa: F401  (what one_f_one_b returns lists of)


def warmup_forwards(num_stages: int, stage_index: int, num_microbatches: int) -> int:
    """Forwards stage ``stage_index`` runs before its first backward, not counting the steady state's.

    In the example above: 2 on stage 0, 1 on stage 1, 0 on stage 2. Never more than the microbatches.
    """
    # BEGIN EXERCISE 3.1: the forwards before the first backward: none on the last stage, one more per stage upstream
    # HINT: with few microbatches there is nothing more to warm up with than the microbatches themselves
    # The last stage can backward a microbatch as soon as it has its loss; each stage upstream needs
    # one more in flight, so that the pipeline is full when the first gradient comes back.
    return min(num_stages - stage_index - 1, num_microbatches)
    # END EXERCISE


def one_f_one_b(num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """1F1B (PipeDream-flush): per stage, warmup forwards, then one forward / one backward, then cooldown."""
    # BEGIN EXERCISE 3.2: per stage, the warmup forwards, then forward/backward pairs, then the backwards left
    # HINT: write the three phases as three loops; the steady state runs the oldest microbatch's backward
    schedule = []
    for stage in range(num_stages):
        warmup = warmup_forwards(num_stages, stage, num_microbatches)
        actions = [Action("F", i) for i in range(warmup)]
        for i in range(num_microbatches - warmup):            # steady state: forward i + warmup, backward i
            actions += [Action("F", warmup + i), Action("B", i)]
        actions += [Action("B", i) for i in range(num_microbatches - warmup, num_microbatches)]  # cooldown
        schedule.append(actions)
    return schedule
    # END EXERCISE

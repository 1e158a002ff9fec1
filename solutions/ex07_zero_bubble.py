"""Exercise 7 (lesson 07, lessons/07_zero_bubble.ipynb): zero bubble, the backward split in two (ZB-H1).

**ZB-H1** (Qi et al., 2023, "Zero Bubble Pipeline Parallelism"). A backward is two computations: ``I``, the
gradient of the stage's input (the previous stage waits for it), and ``W``, the gradient of its weights
(nobody needs it before the optimizer step). Run 1F1B with ``B`` split into ``I`` then ``W``, and let stage
s hold back its first s weight gradients, so that they fill the cool-down where 1F1B sits idle. Stage s runs:

    warm-up     p - s - 1      forwards                        F
    then        s times        a forward and an input grad     F I        (no W yet)
    steady      while forwards remain                          F I W
    cool-down   while input gradients remain                   I W
    tail        the held-back weight gradients                 W

(with fewer microbatches than stages, each section stops when its microbatches run out). With F = I = W
each rank idles p - 1 instead of 1F1B's 3 (p - 1), and no stage holds more than p microbatches (one stays
stashed until its W). For 3 stages and 4 microbatches:

    stage 0:  F0 F1 F2 I0 W0 F3 I1 W1 I2 W2 I3 W3
    stage 1:  F0 F1 I0 F2 I1 W0 F3 I2 W1 I3 W2 W3
    stage 2:  F0 I0 F1 I1 F2 I2 W0 F3 I3 W1 W2 W3

    7.1 zb_h1         ZB-H1: 1F1B with the backward split into I and W, the Ws deferred into the bubble

Stuck? ``exercises/hints/ex07_zero_bubble.md`` has longer hints.
Grade it (your schedule goes through the validator, the simulator, and the real executor on 3 MPI ranks):

    .venv/bin/python -m pytest tests/exercises/test_ex07_zero_bubble.py
"""
from __future__ import annotations

from pipeline_ref.schedules import Action  # noqa: F401  (what the schedule is lists of)


def zb_h1(num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """ZB-H1: one list of ``Action`` per stage with ops ``F``, ``I`` and ``W`` (no ``B``)."""
    # BEGIN EXERCISE 7.1: 1F1B with each B split into I and W, stage s holding back its first s Ws
    # HINT: keep the next microbatch of each op in a counter, and guard every section's loop with the counters
    p, m = num_stages, num_microbatches
    schedule = []
    for s in range(p):
        actions: list[Action] = []
        count = {"F": 0, "I": 0, "W": 0}        # the next microbatch of each op

        def run(*ops):
            for op in ops:
                actions.append(Action(op, count[op]))
                count[op] += 1

        for _ in range(min(p - s - 1, m)):      # warm-up
            run("F")
        for _ in range(s):                      # hold back s weight gradients
            if count["F"] < m:
                run("F", "I")
        while count["F"] < m:                   # steady state
            run("F", "I", "W")
        while count["I"] < m:                   # cool-down
            run("I", "W")
        while count["W"] < m:                   # the held-back Ws fill the tail
            run("W")
        schedule.append(actions)
    return schedule
    # END EXERCISE

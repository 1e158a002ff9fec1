"""Zero-bubble ZB-H1 (Qi et al., 2023, "Zero Bubble Pipeline Parallelism"), as data.

The backward of a layer is two computations that need not run together:
``I``, the gradient of its input (the previous stage is waiting for it), and
``W``, the gradient of its weights (nobody needs it before the optimizer step).
ZB-H1 runs 1F1B with the backward split, and stage s defers its weight
gradients by s microbatches, so the Ws fill the slots where 1F1B sits idle in
the cool-down. Stage s runs, in order:

    warm-up     p - s - 1  x  F
    F I         s          x  F, I           (Ws held back)
    F I W       m - p + 1  x  F, I, W        (steady state)
    I W         p - s - 1  x  I, W           (cool-down)
    W           s          x  W              (the held-back Ws fill the tail)

Every stage then holds at most p microbatches (a microbatch stays stashed until
its W), the same peak as 1F1B's first stage, and with F = I = W the bubble is
(p - 1)(F + I - W) = (p - 1) F: a third of 1F1B's (p - 1)(F + I + W).
With fewer microbatches than stages the sections simply run out early.
"""
from __future__ import annotations

from .schedules import Action


def zb_h1(num_stages: int, num_microbatches: int) -> list:
    p, m = num_stages, num_microbatches
    schedule = []
    for s in range(p):
        actions: list[Action] = []
        count = {"F": 0, "I": 0, "W": 0}

        def run(*ops):
            for op in ops:
                actions.append(Action(op, count[op]))
                count[op] += 1

        for _ in range(min(p - s - 1, m)):
            run("F")
        for _ in range(s):
            if count["F"] < m:
                run("F", "I")
        while count["F"] < m:
            run("F", "I", "W")
        while count["I"] < m:
            run("I", "W")
        while count["W"] < m:
            run("W")
        schedule.append(actions)
    return schedule

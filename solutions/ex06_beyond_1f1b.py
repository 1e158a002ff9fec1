"""Exercise 6 (lesson 06, lessons/06_beyond_1f1b.ipynb): past 1F1B, interleaved virtual stages and zero bubble.

1F1B leaves each rank idle for (p - 1)(F + B) per step, the time it takes to fill and drain p stages. Two
ways to shrink that, both still schedules as data (lists of ``Action``):

**Interleaved 1F1B** (Megatron-LM). Each rank holds ``chunks`` (v) smaller pieces of the model: chunk c on
rank r is *virtual stage* ``c * p + r``, so a microbatch crosses the ranks v times, and a forward or backward
of one chunk costs 1/v of a whole stage's. Filling the pipeline takes v times less time:
utilization v m / (v m + p - 1). ``Action("F", 3, 1)`` is the forward of microbatch 3 through chunk 1.

Every rank runs its forwards in groups of p microbatches per chunk: microbatches 0..p-1 through chunk 0,
the same ones through chunk 1, ..., then microbatches p..2p-1 through chunk 0, and so on (which is why m
must be a multiple of p); its backwards in the same order with the chunks reversed (the last chunk first).
Rank r runs (p - r - 1) * 2 + (v - 1) * p warm-up forwards (all of them if there are fewer), then
alternates one forward and one backward, then runs the backwards left. With one chunk it is plain 1F1B
(warm-up p - r - 1). For 2 ranks, 4 microbatches, 2 chunks (``F2.1`` = ``Action("F", 2, 1)``):

    rank 0:  F0   F1   F0.1 F1.1 F2   B0.1 F3   B1.1 F2.1 B0   F3.1 B1   B2.1 B3.1 B2   B3
    rank 1:  F0   F1   F0.1 B0.1 F1.1 B1.1 F2   B0   F3   B1   F2.1 B2.1 F3.1 B3.1 B2   B3

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

    6.1 interleaved   interleaved 1F1B with ``chunks`` chunks per rank
    6.2 zb_h1         ZB-H1: 1F1B with the backward split into I and W, the Ws deferred into the bubble

Stuck? ``exercises/hints/ex06_beyond_1f1b.md`` has longer hints, one section per function.
Grade it (your schedules go through the validator, the simulator, and the real executor on 3 MPI ranks):

    .venv/bin/python -m pytest tests/exercises/test_ex06_beyond_1f1b.py
"""
from __future__ import annotations

from pipeline_ref.schedules import Action  # noqa: F401  (what the schedules are lists of)


def interleaved(num_stages: int, num_microbatches: int, chunks: int = 2) -> list[list[Action]]:
    """Interleaved 1F1B: one list of ``Action(op, microbatch, chunk)`` per rank, ops ``F`` and ``B``.

    Raises ValueError when ``chunks`` is not a positive integer or ``num_microbatches`` is not a multiple
    of ``num_stages``.
    """
    # BEGIN EXERCISE 6.1: interleaved 1F1B over v chunks per rank, in groups of num_stages microbatches per chunk
    # HINT: first write the k-th forward (or backward) every rank runs; then warm-up, pairs and cool-down as in 1F1B
    p, m, v = num_stages, num_microbatches, chunks
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"chunks must be a positive integer, got {v!r}")
    if m % p:
        raise ValueError(f"interleaved 1F1B runs microbatches through the chunks in groups of num_stages, so "
                         f"num_microbatches ({m}) must be a multiple of num_stages ({p})")

    def nth(k: int, op: str) -> Action:
        """The k-th forward (or backward) of every rank: p microbatches through one chunk, then the next chunk."""
        group, within = divmod(k, p * v)
        chunk = within // p
        if op == "B":                   # gradients flow back through the chunks last to first
            chunk = v - 1 - chunk
        return Action(op, group * p + within % p, chunk)

    total = m * v                       # forwards (and backwards) on every rank
    schedule = []
    for rank in range(p):
        # Enough forwards in flight that rank r's first backward, of the last chunk, finds its gradient ready.
        warmup = p - rank - 1 if v == 1 else (p - rank - 1) * 2 + (v - 1) * p
        warmup = min(warmup, total)
        actions = [nth(k, "F") for k in range(warmup)]
        for i in range(total - warmup):                 # steady state: one forward, one backward
            actions += [nth(warmup + i, "F"), nth(i, "B")]
        actions += [nth(i, "B") for i in range(total - warmup, total)]      # cool-down
        schedule.append(actions)
    return schedule
    # END EXERCISE


def zb_h1(num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """ZB-H1: one list of ``Action`` per stage with ops ``F``, ``I`` and ``W`` (no ``B``)."""
    # BEGIN EXERCISE 6.2: 1F1B with each B split into I and W, stage s holding back its first s Ws
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

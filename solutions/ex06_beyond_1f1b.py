"""Exercise 6 (lesson 06, lessons/06_beyond_1f1b.ipynb): past 1F1B, interleaved virtual stages and zero bubble.

**Interleaved 1F1B** (Megatron-LM): each rank holds ``chunks`` (v) pieces of the model, chunk c on rank r
being virtual stage ``c * p + r``; filling the pipeline takes v times less, utilization v m / (v m + p - 1).

    rank 0:  F0   F1   F0.1 F1.1 F2   B0.1 F3   B1.1 F2.1 B0   F3.1 B1   B2.1 B3.1 B2   B3
    rank 1:  F0   F1   F0.1 B0.1 F1.1 B1.1 F2   B0   F3   B1   F2.1 B2.1 F3.1 B3.1 B2   B3

**ZB-H1** (zero bubble): the backward split into ``I`` (input gradient) and ``W`` (weight gradient), stage
s holding back s weight gradients to fill the cool-down: with F = I = W, a bubble of p - 1 instead of 3 (p - 1).

    stage 0:  F0 F1 F2 I0 W0 F3 I1 W1 I2 W2 I3 W3
    stage 1:  F0 F1 I0 F2 I1 W0 F3 I2 W1 I3 W2 W3
    stage 2:  F0 I0 F1 I1 F2 I2 W0 F3 I3 W1 W2 W3

    interleaved   interleaved 1F1B with ``chunks`` chunks per rank
    zb_h1         ZB-H1: 1F1B with the backward split into I and W, the Ws deferred into the bubble

pipeline_ref has both (``interleaved.py``, ``zero_bubble.py``): ``--schedule interleaved --chunks V`` and
``--schedule zb-h1``.

Grade it (your schedules go through the validator, the simulator, and the real executor on 3 MPI ranks):

    .venv/bin/python -m pytest tests/exercises/test_ex06_beyond_1f1b.py --impl solutions
"""
from __future__ import annotations

from pipeline_ref.schedules import Action


def interleaved(num_stages: int, num_microbatches: int, chunks: int = 2) -> list[list[Action]]:
    """Interleaved 1F1B: one list of ``Action(op, microbatch, chunk)`` per rank, ops ``F`` and ``B``.

    Raises ValueError when ``chunks`` is not a positive integer or ``num_microbatches`` is not a multiple
    of ``num_stages``.
    """
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


def zb_h1(num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """ZB-H1: one list of ``Action`` per stage with ops ``F``, ``I`` and ``W`` (no ``B``)."""
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

"""Zero-bubble schedules ZB-H1, ZB-H2 and ZB-V (Qi et al., 2023, "Zero Bubble Pipeline Parallelism"), as data.

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

ZB-H2 lets every stage hold up to 2p - 1 microbatches instead of p, and spends
the extra memory on more warm-up forwards: stage s runs 2(p - s) - 1 of them,
exactly enough to keep it busy until the first input gradient comes back, and
the Ws move to where they fill what is left. With F = I = W every stage then
computes without a gap from its first action to its last. See :func:`zb_h2`
for why that is not yet a shorter step.

ZB-V gives each rank two chunks of half a stage, placed in a V (``layout="v"``):
rank r holds virtual stages r and 2p - 1 - r, so the forward goes down the ranks
and back up, rank 0 holds both the first and the last stage, and each rank's
two chunks together cost as much as one stage. See :func:`zbv`.
"""
from __future__ import annotations

from pipeline_ref.schedules.geometry import Action, Schedule, ScheduleError, actions_of, interleave


def zb_h1(num_stages: int, num_microbatches: int) -> Schedule:
    p, m = num_stages, num_microbatches
    F, I, W = (actions_of(op, m) for op in "FIW")
    schedule = []
    for s in range(p):
        warmup = min(p - s - 1, m)                 # F
        held = min(s, m - warmup)                  # F I, the Ws held back
        steady = m - warmup - held                 # F I W
        cooldown = m - held - steady               # I W
        schedule.append(F[:warmup] + interleave(F[warmup:warmup + held], I[:held])
                        + interleave(F[warmup + held:], I[held:held + steady], W[:steady])
                        + interleave(I[held + steady:], W[steady:steady + cooldown]) + W[steady + cooldown:])
    return Schedule(schedule)


def zb_h2(num_stages: int, num_microbatches: int, max_in_flight: int | None = None) -> Schedule:
    """ZB-H2: each stage keeps busy from its first action to its last, holding up to 2p - 1 microbatches.

    The order is found the way the paper's heuristic scheduler finds one: by playing
    the pipeline with F = I = W = 1 and letting each stage, whenever it is free, take

    1. the input gradient ``I`` of its oldest microbatch, if the gradient has arrived
       (the stage upstream is waiting for it: the critical path);
    2. else the next forward ``F``, if its input has arrived and the stage holds fewer
       than ``max_in_flight`` microbatches (a microbatch is held from its F to its W);
    3. else a deferred weight gradient ``W`` (nobody waits for it);
    4. else nothing until something arrives.

    The default ``max_in_flight = 2p - 1`` is ZB-H2's memory: stage s then runs
    2(p - s) - 1 warm-up forwards, just enough to cover the time until its first I
    comes back, and no stage ever waits between its first and its last action.
    With ``max_in_flight = p`` (ZB-H1's memory) the same rules leave gaps, which is why
    ZB-H1 is written out by hand above.

    Zero bubble *inside* each stage is not a shorter synchronous step: the last stage
    still starts (p - 1) F late, and a step ends when its last stage does, so the step is
    (p - 1) F + m (F + I + W) long, exactly ZB-H1's with F = I = W. It is shorter than
    ZB-H1's only where ZB-H1 misses that bound: when I > W (ZB-H1 idles (p - 1)(F + I - W)),
    and often when W > F (a deferred W outgrows its slot); with I <= W <= F both reach it
    (tests/test_beyond_1f1b.py checks this on random costs). The paper removes the remaining (p - 1) F
    by not waiting at the optimizer step ("post-validation"), so that step n + 1's first
    forwards overlap step n's last backwards: beyond one synchronous step, and beyond this course.
    """
    p, m = num_stages, num_microbatches
    limit = 2 * p - 1 if max_in_flight is None else max_in_flight
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ScheduleError(f"max_in_flight must be a positive integer, got {max_in_flight!r}")
    F, I, W = (actions_of(op, m) for op in "FIW")
    forwards, inputs, weights = [0] * p, [0] * p, [0] * p    # how many of each op stage s has started
    f_end: list[list[int]] = [[] for _ in range(p)]         # when stage s's k-th forward ends
    i_end: list[list[int]] = [[] for _ in range(p)]         # when stage s's k-th input gradient ends
    schedule: list[list[Action]] = [[] for _ in range(p)]
    now, left = 0, 3 * p * m
    while left:                      # one unit of time per turn: every action costs 1, so every stage is free
        for s in range(p):
            nf, ni = forwards[s], inputs[s]
            gradient_from = f_end[s] if s == p - 1 else i_end[s + 1]   # the last stage starts its own
            if ni < nf and ni < len(gradient_from) and gradient_from[ni] <= now:
                schedule[s].append(I[ni])
                inputs[s] = ni + 1
                i_end[s].append(now + 1)
            elif nf < m and nf - weights[s] < limit and (
                    s == 0 or nf < len(f_end[s - 1]) and f_end[s - 1][nf] <= now):
                schedule[s].append(F[nf])
                forwards[s] = nf + 1
                f_end[s].append(now + 1)
            elif weights[s] < ni:
                schedule[s].append(W[weights[s]])
                weights[s] += 1
            else:
                continue
            left -= 1
        now += 1
    return Schedule(schedule)


def zbv(num_stages: int, num_microbatches: int) -> Schedule:
    """ZB-V: two chunks per rank in a V, the backward split into I and W (the paper's section 6).

    Rank r holds chunk 0 = virtual stage r (going down) and chunk 1 = virtual stage
    2p - 1 - r (coming back up). With n = max(m, 2p - 1) microbatches, rank r runs:

        2(p - r) - 1  x  F (chunk 0)                    down the V, until the turn comes back
        r             x  F (chunk 1), F (chunk 0)
        p - r         x  F, I, W (chunk 1)              the first gradients start on the way up
        steady        F, I, W (chunk 0), F, I, W (chunk 1), until both chunks have run n forwards
        r             x  I (chunk 0), I (chunk 1)       cool-down: Ws held back
        p - r         x  I (chunk 0), W (chunk 0)
        then the held-back Ws of chunk 1, then of chunk 0

    The phases are written for n >= 2p - 1; with fewer microbatches the actions of the
    missing ones are left out, which keeps every rank's order and every dependency
    (torch.distributed.pipelining's ScheduleZBVZeroBubble does the same).
    """
    p, m = num_stages, num_microbatches
    n = max(m, 2 * p - 1)
    F0, F1, I0, I1, W0, W1 = (actions_of(op, n, chunk) for op in "FIW" for chunk in (0, 1))
    turn = n - p                                   # steady-state groups (F1 goes from p to n)
    schedule = []
    for r in range(p):
        warmup = 2 * (p - r) - 1                   # F0 down the V; then r x (F1 F0)
        with_f0 = n - (warmup + r)                 # steady groups that still start a forward of chunk 0
        up = p - r                                 # F1 I1 W1: the first gradients, on the way up
        actions = (F0[:warmup] + interleave(F1[:r], F0[warmup:warmup + r])
                   + interleave(F1[r:p], I1[:up], W1[:up])
                   + interleave(F0[warmup + r:], I0[:with_f0], W0[:with_f0], F1[p:p + with_f0],
                                I1[up:up + with_f0], W1[up:up + with_f0])
                   + interleave(I0[with_f0:turn], W0[with_f0:turn], F1[p + with_f0:],
                                I1[up + with_f0:up + turn], W1[up + with_f0:up + turn])
                   + interleave(I0[turn:turn + r], I1[up + turn:])
                   + interleave(I0[turn + r:], W0[turn:turn + up])
                   + W1[up + turn:] + W0[turn + up:])
        schedule.append(actions if m == n else [a for a in actions if a.microbatch < m])
    return Schedule(schedule, layout="v")

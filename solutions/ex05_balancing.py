"""Exercise 5 (lesson 05, lessons/05_balancing.ipynb): balance the stages, so the slowest one is as fast as it can be.

A pipeline in its steady state moves at the pace of its slowest stage: every other stage waits for it.
Splitting the layers into equal counts is only fair when every layer costs the same; real models are
not like that (an embedding, a large output head, attention over long sequences). Given each layer's
measured cost, choose where to cut the model so that the slowest stage costs as little as possible.

A split is one ``range`` of layer indices per stage: in order, contiguous, none empty, together covering
every layer once. For layer costs ``[1, 2, 3, 4, 5, 6]`` on 3 stages:

    equal counts   range(0, 2) range(2, 4) range(4, 6)   stage costs 3, 7, 11   slowest 11
    greedy         range(0, 3) range(3, 4) range(4, 6)   stage costs 6, 4, 11   slowest 11
                   (fill each stage until the next layer would pass total / stages = 7)
    balanced       range(0, 3) range(3, 5) range(5, 6)   stage costs 6, 9, 6    slowest 9 (the best possible)

    5.1 balanced_partition   the contiguous split whose slowest stage is as cheap as possible (optimal)
    5.2 bottleneck           what a split's slowest stage costs

Stuck? ``exercises/hints/ex05_balancing.md`` has longer hints, one section per function.
Grade it (pure Python, no MPI: your split is compared with a brute-force search over every split):

    .venv/bin/python -m pytest tests/exercises/test_ex05_balancing.py
"""
from __future__ import annotations

import math  # noqa: F401  (math.inf, math.fsum)


def balanced_partition(costs, num_stages: int) -> list[range]:
    """The contiguous split of the layers (``costs[i]`` is layer i's cost, >= 0) into ``num_stages`` stages
    that minimises the cost of the slowest stage: one ``range`` per stage, in order, none empty.

    Optimal, not approximately so: no other split may have a cheaper slowest stage (when several are
    optimal, any of them will do). Raises ValueError when ``num_stages`` is not an integer (``True`` and
    ``2.0`` are not), is below 1 or above the number of layers (every stage needs a layer; the message
    says both numbers).
    """
    # BEGIN EXERCISE 5.1: the optimal split, by dynamic programming over where the last stage starts
    # HINT: the best split of the first j layers into k stages extends a best split into k - 1 stages
    if not isinstance(num_stages, int) or isinstance(num_stages, bool):
        raise ValueError(f"num_stages must be an integer, got {num_stages!r}")
    costs = [float(c) for c in costs]
    n = len(costs)
    if not 1 <= num_stages <= n:
        raise ValueError(f"cannot split {n} layers into {num_stages} stages: every stage needs at least one "
                         f"layer, so use 1 to {n} stages")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    # best[k][j]: the cheapest slowest stage when layers 0..j-1 form k stages; start[k][j]: where stage k starts.
    best = [[math.inf] * (n + 1) for _ in range(num_stages + 1)]
    start = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0.0
    for k in range(1, num_stages + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):       # the last stage holds layers i..j-1 (at least one)
                slowest = max(best[k - 1][i], prefix[j] - prefix[i])
                if slowest < best[k][j]:
                    best[k][j], start[k][j] = slowest, i
    bounds = [n]
    for k in range(num_stages, 0, -1):      # walk the choices back from the last stage
        bounds.append(start[k][bounds[-1]])
    bounds.reverse()
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]
    # END EXERCISE


def bottleneck(costs, ranges: list[range]) -> float:
    """The cost of the slowest stage: the largest sum of ``costs`` over one of ``ranges``."""
    # BEGIN EXERCISE 5.2: sum the costs of each stage's layers and return the largest sum
    # HINT: a range's start and stop slice a list
    costs = [float(c) for c in costs]
    return max(math.fsum(costs[r.start:r.stop]) for r in ranges)
    # END EXERCISE


# BEGIN SOLUTION ONLY
# pipeline_ref's partition.by_cost solves the same problem, and among the optimal splits picks the most
# even one (--partition time feeds it measured per-layer times).
# END SOLUTION ONLY

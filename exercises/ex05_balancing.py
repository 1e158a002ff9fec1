"""Exercise 5 (lesson 05, lessons/05_balancing.ipynb): balance the stages, so the slowest one is as fast as it
can be.

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

Then read a measured step against its theory. A run's trace says what each rank did and when: ``trace.events``
is a list of events with ``.rank``, ``.op`` (``"F"`` or ``"B"``), ``.microbatch``, ``.start`` and ``.end``
(seconds), ``trace.makespan`` the step. A measured GPipe step is longer than lesson 02's m (F + B): which part
of the difference comes from the schedule's fill and drain, which from unequal stages, which from messages on
the wire, and which from something the schedule and the stages' costs do not explain at all (another job on
the cores, an op that ran long)? Each fix is different, so name the largest before fixing anything.

    5.3 stage_costs    each stage's typical forward and backward time, and the time a message takes
    5.4 gpipe_step     the step GPipe takes with those costs when nothing else slows it down
    5.5 explain_gap    the measured step's distance from m (F + B), cut into its four causes, and the largest

Stuck? ``exercises/hints/ex05_balancing.md`` has longer hints, one section per function.
Grade it (pure Python, no MPI: your split is compared with a brute-force search over every split; your step
with the simulator on random costs; your causes on traces the simulator makes with one planted cause each):

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
    raise NotImplementedError(
        "Exercise 5.1: the optimal split: no other split of these layers has a cheaper slowest stage. Hint: "
        "why can filling stages one by one miss the best split? What must you know to place the last cut?")


def bottleneck(costs, ranges: list[range]) -> float:
    """The cost of the slowest stage: the largest sum of ``costs`` over one of ``ranges``."""
    raise NotImplementedError(
        "Exercise 5.2: sum the costs of each stage's layers and return the largest sum. Hint: a range's "
        "start and stop slice a list.")


def stage_costs(trace) -> dict:
    """``{"forward": [...], "backward": [...], "latency": float}`` of a GPipe step's trace.

    ``forward[s]`` / ``backward[s]``: the median duration of rank s's ``F`` / ``B`` events (a median, so that
    one op that ran long does not change what the stage typically costs). ``latency``: the least time, over
    every action that needs a message from another rank (``F i`` on rank s > 0 from ``F i`` on s - 1, ``B i``
    on s < p - 1 from ``B i`` on s + 1), between its producer's end and its own start (0.0 on one rank). ``p =
    trace.num_ranks``. Example, 2 ranks, 1 microbatch: F0 from 0 to 1 on rank 0 and from 1.5 to 3.5 on rank 1,
    B0 from 3.5 to 7.5 on rank 1 and from 8 to 10 on rank 0::

        stage_costs(trace) == {"forward": [1.0, 2.0], "backward": [2.0, 4.0], "latency": 0.5}
    """
    raise NotImplementedError(
        "Exercise 5.3: each rank's typical F and B, and the time a message takes, read off the trace. Hint: "
        "which event produced the message a given F (or B) needed, and on which rank did it run?")


def gpipe_step(forward: list, backward: list, latency: float, num_microbatches: int) -> float:
    """The makespan of one GPipe step (every forward, then every backward) whose stage s takes ``forward[s]``
    per forward and ``backward[s]`` per backward, every message ``latency`` after its producer ends, and
    nothing else: no op longer than its cost, no time between ops but the waits for messages.

    Exactly what ``pipeline_ref.sim.simulate`` gives for ``schedules.build("gpipe", p, m)`` with these costs, for
    any costs (unequal stages too). Example: ``gpipe_step([1, 2], [2, 4], 0.5, 3) == 22.0``; with one stage,
    ``gpipe_step([1], [2], 0.0, 4) == 12.0``.
    """
    raise NotImplementedError(
        "Exercise 5.4: the step of GPipe with these costs (unequal stages, messages that take time). Hint: "
        "draw two unequal stages' Gantt chart: when does the last forward end, and what paces the others?")


CAUSES = ("bubble", "imbalance", "messages", "contention")


def explain_gap(trace, num_microbatches: int) -> tuple[str, dict]:
    """``(cause, parts)``: how far the GPipe step of ``trace`` is from m (F + B), in four parts, and the
    largest.

    With your ``stage_costs`` of the trace, F and B the means over the stages of ``forward`` and ``backward``,
    and ``step(...)`` your ``gpipe_step``, the parts (``parts[name]``, in the trace's time unit) are:

        bubble       step with every stage at F and B, free messages (latency 0)  -  m (F + B)
        imbalance    step with each stage's own costs, free messages  -  the step of the line above
        messages     step with each stage's own costs and the latency  -  the step of the line above
        contention   trace.makespan  -  the step of the line above (what the schedule and costs leave out)

    so they add up to ``trace.makespan - m (F + B)``. ``cause``: the name (one of ``CAUSES``) of the largest
    part. Example: 2 balanced stages (F = 1, B = 2), 4 microbatches, free messages, no contention: a makespan
    of 15, parts ``{"bubble": 3.0, "imbalance": 0.0, "messages": 0.0, "contention": 0.0}``, cause
    ``"bubble"``.
    """
    raise NotImplementedError(
        "Exercise 5.5: the four parts, each the difference of two steps, and the name of the largest. Hint: "
        "which of your two functions gives each step, and with which costs?")

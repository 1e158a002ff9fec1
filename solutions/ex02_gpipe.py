"""Exercise 2 (lesson 02): microbatches, gradient accumulation, and the GPipe schedule as data.

The naive split keeps all but one rank idle. GPipe cuts the batch into microbatches, so that while
stage 1 works on microbatch 0, stage 0 already works on microbatch 1. For the step to stay the
same step, the gradients of the microbatches must add up to the gradient of the whole batch.

    2.1 split_microbatches     the batch as equal microbatches, refusing a split that isn't equal
    2.2 accumulate_gradients   one step over the microbatches, one after another, on one process
    2.3 gpipe                  the GPipe schedule: every stage runs all forwards, then all backwards

A schedule is data: one list of ``Action`` per stage. ``Action("F", 2)`` is the forward of
microbatch 2, ``Action("B", 2)`` its backward. For 2 stages and 3 microbatches GPipe is
``[[F0, F1, F2, B0, B1, B2], [F0, F1, F2, B0, B1, B2]]``. Who sends what to whom follows from the
dependencies: ``pipeline_ref.schedules.validate`` checks a schedule, ``pipeline_ref.sim.simulate``
plays it, and the executor runs it on real ranks; the tests do all three with yours.

Stuck? ``exercises/hints/ex02_gpipe.md`` has longer hints, one section per function.
Grade it (the schedule also runs on real MPI ranks through pipeline_ref's executor):

    .venv/bin/python -m pytest tests/exercises/test_ex02_gpipe.py
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_ref.schedules import Action  # noqa: F401  (what gpipe returns lists of)


def split_microbatches(inputs: torch.Tensor, targets: torch.Tensor, num_microbatches: int):
    """The batch as a list of ``num_microbatches`` equal, consecutive ``(inputs, targets)`` pairs, in order.

    Raises ValueError when the batch size (dim 0) is not a multiple of ``num_microbatches`` (the
    message says both numbers), when ``num_microbatches`` is not a positive integer (``True`` and
    ``2.0`` are not), or when inputs and targets differ in batch size.
    """
    # BEGIN EXERCISE 2.1: check the arguments, then cut inputs and targets into equal consecutive pieces
    # HINT: unequal microbatches would weigh their samples unequally in the mean loss, so refuse them
    if not isinstance(num_microbatches, int) or isinstance(num_microbatches, bool) or num_microbatches < 1:
        raise ValueError(f"num_microbatches must be a positive integer, got {num_microbatches!r}")
    batch = inputs.shape[0]
    if targets.shape[0] != batch:
        raise ValueError(f"inputs and targets differ in batch size (dim 0): {batch} vs {targets.shape[0]}")
    if batch % num_microbatches:
        raise ValueError(f"a batch of {batch} samples does not split into {num_microbatches} equal "
                         f"microbatches; choose a number of microbatches that divides {batch}")
    size = batch // num_microbatches
    return list(zip(inputs.split(size), targets.split(size)))
    # END EXERCISE


def accumulate_gradients(model: nn.Module, loss_fn, microbatches) -> float:
    """Forward and backward of each ``(inputs, targets)`` microbatch in turn; returns their mean loss.

    Afterwards ``model``'s parameters' ``.grad`` must hold the gradient of the whole batch's mean
    loss added to what ``.grad`` held before, as if the whole batch had gone through at once.
    """
    # BEGIN EXERCISE 2.2: forward and backward of each microbatch, so that their gradients add up
    # HINT: backward() adds into .grad; scale each microbatch's loss so the sum is the batch's mean
    count = len(microbatches)
    total = 0.0
    for x, target in microbatches:
        loss = loss_fn(model(x), target)
        (loss / count).backward()       # backward() adds into .grad: the microbatches accumulate
        total += loss.item()
    return total / count
    # END EXERCISE


def gpipe(num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """GPipe: on every stage, the forwards of all microbatches in order, then their backwards."""
    # BEGIN EXERCISE 2.3: return one list of Actions per stage: every forward, then every backward
    # HINT: every stage runs the same list; the executor works out the messages from the dependencies
    forwards = [Action("F", i) for i in range(num_microbatches)]
    backwards = [Action("B", i) for i in range(num_microbatches)]
    return [forwards + backwards for _ in range(num_stages)]
    # END EXERCISE

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
    raise NotImplementedError(
        "Exercise 2.1: check the arguments, then cut inputs and targets into equal consecutive pieces. "
        "Hint: unequal microbatches would weigh their samples unequally in the mean loss, so refuse them.")


def accumulate_gradients(model: nn.Module, loss_fn, microbatches) -> float:
    """Forward and backward of each ``(inputs, targets)`` microbatch in turn; returns their mean loss.

    Afterwards ``model``'s parameters' ``.grad`` must hold the gradient of the whole batch's mean
    loss added to what ``.grad`` held before, as if the whole batch had gone through at once.
    """
    raise NotImplementedError(
        "Exercise 2.2: forward and backward of each microbatch, so that their gradients add up. Hint: "
        "backward() adds into .grad; scale each microbatch's loss so the sum is the batch's mean.")


def gpipe(num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """GPipe: on every stage, the forwards of all microbatches in order, then their backwards."""
    raise NotImplementedError(
        "Exercise 2.3: return one list of Actions per stage: every forward, then every backward. Hint: "
        "every stage runs the same list; the executor works out the messages from the dependencies.")

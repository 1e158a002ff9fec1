"""Exercise 2 (lesson 02): microbatches, gradient accumulation, and the GPipe schedule as data.

The naive split keeps all but one rank idle. GPipe cuts the batch into microbatches, so that while
stage 1 works on microbatch 0, stage 0 already works on microbatch 1. For the step to stay the
same step, the gradients of the microbatches must add up to the gradient of the whole batch:
each microbatch's (mean) loss is divided by the number of microbatches.

    split_microbatches     the batch as equal microbatches, refusing a split that isn't equal
    accumulate_gradients   one step over the microbatches, one after another, on one process
    gpipe                  the GPipe schedule: every stage runs all forwards, then all backwards

A schedule is data: one list of ``pipeline_ref.schedules.Action`` per stage, e.g. for 2 stages and
3 microbatches ``[[F0, F1, F2, B0, B1, B2], [F0, F1, F2, B0, B1, B2]]``. Who sends what to whom
follows from the dependencies; the validator, the simulator and the executor all read this list.

Grade it (the schedule also runs on real MPI ranks through pipeline_ref's executor):

    .venv/bin/python -m pytest tests/exercises/test_ex02_gpipe.py --impl solutions
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_ref.schedules import Action


def split_microbatches(inputs: torch.Tensor, targets: torch.Tensor, num_microbatches: int):
    """The batch as ``num_microbatches`` equal, consecutive ``(inputs, targets)`` pairs, in order.

    Raises ValueError (saying the batch size and the number of microbatches) when they do not divide,
    when ``num_microbatches`` is not a positive integer, or when inputs and targets differ in batch size.
    """
    if not isinstance(num_microbatches, int) or isinstance(num_microbatches, bool) or num_microbatches < 1:
        raise ValueError(f"num_microbatches must be a positive integer, got {num_microbatches!r}")
    batch = inputs.shape[0]
    if targets.shape[0] != batch:
        raise ValueError(f"inputs and targets differ in batch size (dim 0): {batch} vs {targets.shape[0]}")
    if batch % num_microbatches:
        # Unequal microbatches would weigh their samples unequally in the mean loss.
        raise ValueError(f"a batch of {batch} samples does not split into {num_microbatches} equal "
                         f"microbatches; choose a number of microbatches that divides {batch}")
    size = batch // num_microbatches
    return list(zip(inputs.split(size), targets.split(size)))


def accumulate_gradients(model: nn.Module, loss_fn, microbatches) -> float:
    """Forward and backward of each microbatch in turn; returns the mean loss over them.

    Leaves in ``model``'s ``.grad`` the gradient of the whole batch's mean loss (added to whatever
    ``.grad`` held): each microbatch's loss is scaled by ``1 / len(microbatches)`` before its backward.
    """
    count = len(microbatches)
    total = 0.0
    for x, target in microbatches:
        loss = loss_fn(model(x), target)
        (loss / count).backward()       # backward() adds into .grad: the microbatches accumulate
        total += loss.item()
    return total / count


def gpipe(num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """GPipe: on every stage, the forwards of all microbatches, then their backwards."""
    forwards = [Action("F", i) for i in range(num_microbatches)]
    backwards = [Action("B", i) for i in range(num_microbatches)]
    return [forwards + backwards for _ in range(num_stages)]

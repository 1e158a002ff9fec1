"""Exercise 1 (lesson 01): a model split over ranks, one training step with blocking sends.

Each rank owns a contiguous run of the model's layers (a *stage*). The forward pass crosses the ranks
as activations, rank 0 -> 1 -> ... -> last, where the loss is computed; the backward pass crosses
back as the gradients of those activations. Nothing else travels: every rank's parameters get their
gradients from its own backward, and they must equal the unsplit model's gradients.

    1.1 stage_layers     which layers this rank owns
    1.2 stage_forward    receive the input (unless first), run the stage, send the output (unless last)
    1.3 stage_backward   receive the output's gradient (unless last), backward, send the input's gradient
    1.4 naive_step       one whole training step: forward, loss on the last rank, backward

Use your ``send_tensor``/``recv_tensor`` from exercise 0 (imported below), so exercise 0 must pass
first. ``comm.Get_rank()`` and ``comm.Get_size()`` tell a rank where it sits in the pipeline: rank 0
is the first stage and rank ``size - 1`` the last. A single rank (size 1) is both. Only one rank
computes at any moment (utilization 1/num_stages): lesson 02 fixes that.

Stuck? ``exercises/hints/ex01_naive_split.md`` has longer hints, one section per function.
Grade it (the tests start 3 MPI ranks and compare with the unsplit model):

    .venv/bin/python -m pytest tests/exercises/test_ex01_naive_split.py
"""
from __future__ import annotations

import torch
from torch import nn

from .ex00_mpi_tensors import recv_tensor, send_tensor  # noqa: F401  (your exercise 0)

ACTIVATION_TAG, GRADIENT_TAG = 0, 1   # what a message carries: forward or backward


def stage_layers(layers: list[nn.Module], num_stages: int, stage_index: int) -> nn.Sequential:
    """The layers stage ``stage_index`` owns, as an ``nn.Sequential`` of the same module objects.

    Contiguous, in order, as equal as possible; when they don't divide, the first
    ``len(layers) % num_stages`` stages get one more (7 layers on 3 stages: 3, 2, 2).
    Raises ValueError when there are more stages than layers (every stage needs one).
    """
    raise NotImplementedError(
        "Exercise 1.1: return an nn.Sequential of this stage's contiguous slice of the layers. Hint: "
        "divmod(len(layers), num_stages) says how many each stage gets and how many get one more.")


def stage_forward(comm, stage: nn.Module, inputs: torch.Tensor | None = None):
    """Forward of this rank's stage; returns ``(x, y)``: the stage's input and its output.

    Rank 0 takes ``inputs``; every other rank receives its input from rank - 1. Every rank but the
    last sends its output to rank + 1 (tag ``ACTIVATION_TAG``). The backward needs both: x for
    x.grad, y to backward from.
    """
    raise NotImplementedError(
        "Exercise 1.2: take or receive x, compute y = stage(x), send y on unless this is the last rank. "
        "Hint: a received x must require grad, or the backward cannot give its gradient to send upstream.")


def stage_backward(comm, x: torch.Tensor, y: torch.Tensor) -> None:
    """Backward of this rank's stage, from :func:`stage_forward`'s ``(x, y)``; on the last rank ``y`` is the loss.

    Leaves the gradients in the stage's parameters' ``.grad``: every rank but the last receives the
    gradient of its output from rank + 1, and every rank but the first sends the gradient of its
    input to rank - 1 (tag ``GRADIENT_TAG``).
    """
    raise NotImplementedError(
        "Exercise 1.3: backward from the loss (last rank) or from the received gradient, then send x.grad. "
        "Hint: y.backward(g) computes what the unsplit model's backward would, given d loss / d y = g.")


def naive_step(comm, stage: nn.Module, inputs: torch.Tensor | None, targets: torch.Tensor | None,
               loss_fn) -> float | None:
    """One training step of the naive split; returns the loss (a float) on the last rank, None elsewhere.

    ``inputs`` matter only on rank 0 and ``targets`` only on the last rank.
    """
    raise NotImplementedError(
        "Exercise 1.4: stage_forward, the loss on the last rank, stage_backward; return the loss there. "
        "Hint: the last rank backwards from loss_fn(y, targets), every other rank from its y.")

"""Exercise 1 (lesson 01): a model split over ranks, one training step with blocking sends.

Each rank owns a contiguous run of the model's layers (a *stage*). The forward pass crosses the ranks
as activations, rank 0 -> 1 -> ... -> last, where the loss is computed; the backward pass crosses
back as the gradients of those activations. Nothing else travels: every rank's parameters get their
gradients from its own backward, and they equal the unsplit model's gradients.

    stage_layers     which layers this rank owns
    stage_forward    receive the input (unless first), run the stage, send the output (unless last)
    stage_backward   receive the output's gradient (unless last), backward, send the input's gradient
    naive_step       one whole training step: forward, loss on the last rank, backward

Only one rank computes at any moment (utilization 1/num_stages): lesson 02 fixes that.
The messages go through your own ``send_tensor``/``recv_tensor`` from exercise 0.

Grade it (the tests start 3 MPI ranks and compare with the unsplit model):

    .venv/bin/python -m pytest tests/exercises/test_ex01_naive_split.py --impl solutions
"""
from __future__ import annotations

import torch
from torch import nn

from .ex00_mpi_tensors import recv_tensor, send_tensor

ACTIVATION_TAG, GRADIENT_TAG = 0, 1   # what a message carries: forward or backward


def stage_layers(layers: list[nn.Module], num_stages: int, stage_index: int) -> nn.Sequential:
    """The layers stage ``stage_index`` owns, as an ``nn.Sequential`` of the same module objects.

    Contiguous, in order, as equal as possible; when they don't divide, the first stages get one more.
    """
    if not 1 <= num_stages <= len(layers):
        raise ValueError(f"cannot split {len(layers)} layers into {num_stages} stages: every stage needs "
                         f"at least one layer")
    if not 0 <= stage_index < num_stages:
        raise ValueError(f"stage_index {stage_index} is not in 0..{num_stages - 1}")
    base, extra = divmod(len(layers), num_stages)
    start = stage_index * base + min(stage_index, extra)
    stop = start + base + (stage_index < extra)
    return nn.Sequential(*layers[start:stop])


def stage_forward(comm, stage: nn.Module, inputs: torch.Tensor | None = None):
    """Forward of this rank's stage; returns ``(x, y)``: its input and its output.

    Rank 0 takes ``inputs``; the others receive their input from the previous rank. Every rank but
    the last sends its output on. The backward needs both x (for x.grad) and y (to backward from).
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        x = inputs
    else:
        # A leaf that requires grad: after the backward, x.grad is what goes back upstream.
        x = recv_tensor(comm, rank - 1, ACTIVATION_TAG).requires_grad_(True)
    y = stage(x)
    if rank < size - 1:
        send_tensor(comm, y.detach(), rank + 1, ACTIVATION_TAG)
    return x, y


def stage_backward(comm, x: torch.Tensor, y: torch.Tensor) -> None:
    """Backward of this rank's stage; on the last rank ``y`` is the loss.

    Leaves the gradients in the stage's parameters' ``.grad``.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == size - 1:
        y.backward()                                   # the loss: d loss / d loss = 1
    else:
        y.backward(recv_tensor(comm, rank + 1, GRADIENT_TAG))
    if rank > 0:
        send_tensor(comm, x.grad, rank - 1, GRADIENT_TAG)


def naive_step(comm, stage: nn.Module, inputs: torch.Tensor | None, targets: torch.Tensor | None,
               loss_fn) -> float | None:
    """One training step of the naive split; returns the loss on the last rank, None on the others.

    ``inputs`` matter only on rank 0 and ``targets`` only on the last rank.
    """
    x, y = stage_forward(comm, stage, inputs)
    if comm.Get_rank() == comm.Get_size() - 1:
        loss = loss_fn(y, targets)
        stage_backward(comm, x, loss)
        return loss.item()
    stage_backward(comm, x, y)
    return None

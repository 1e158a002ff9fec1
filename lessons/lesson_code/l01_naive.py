"""Lesson 01, on the ranks: one training step of a model split over two ranks, with plain Send/Recv.

Both ranks build the same seeded model and keep their half of its layers. The
forward pass crosses from rank 0 to rank 1 as an activation, the backward pass
crosses back as the gradient of that activation. Nothing else is exchanged:
each rank's parameters get their gradients from its own backward.

    launch(2, "lesson_code.l01_naive:naive_step")   # -> per rank {"loss", "grads"}
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_ref import models


def naive_step(comm, depth: int = 8, width: int = 64, batch: int = 32, dtype=torch.float64, seed: int = 0):
    rank = comm.Get_rank()
    torch.manual_seed(seed)                                   # the same initial weights on both ranks
    layers, loss_fn, (inputs, targets) = models.mlp(depth=depth, width=width, batch=batch, seed=seed)
    layers, (inputs, targets) = models.to_dtype(layers, (inputs, targets), dtype)
    names = {id(p): name for name, p in nn.Sequential(*layers).named_parameters()}
    half = depth // 2
    ACTIVATION, GRADIENT = 0, 1                               # message tags

    if rank == 0:
        stage = nn.Sequential(*layers[:half])
        h = stage(inputs)                                     # forward of the first half
        comm.Send(h.detach().numpy(), dest=1, tag=ACTIVATION) # activation ->
        grad_h = torch.empty_like(h)                          # the shape is known: batch x width
        comm.Recv(grad_h.numpy(), source=1, tag=GRADIENT)     # <- d loss / d h
        h.backward(grad_h)                                    # backward of the first half
        loss = None
    else:
        stage = nn.Sequential(*layers[half:])
        h = torch.empty(batch, width, dtype=dtype)
        comm.Recv(h.numpy(), source=0, tag=ACTIVATION)
        h.requires_grad_(True)                                # so that backward fills h.grad
        loss = loss_fn(stage(h), targets)                     # forward of the second half, and the loss
        loss.backward()                                       # backward of the second half
        comm.Send(h.grad.numpy(), dest=0, tag=GRADIENT)       # the gradient goes back upstream
        loss = loss.item()
    return {"loss": loss, "grads": {names[id(p)]: p.grad for p in stage.parameters()}}

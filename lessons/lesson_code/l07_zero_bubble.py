"""Lesson 07, beside the ranks: the zero-bubble schedules' bounds, their memory, and the FLOPs of I and W.

    synchronous_bound(4, 8, f=1, i=1, w=1)              # no synchronous step is shorter (one stage per rank)
    synchronous_bound(4, 8, f=1, i=1, w=1, chunks=2)    # ... with chunks of 1/v stage (ZB-V): the fill is 1/v
    held_bytes(schedule, sizes)                         # peak bytes a rank holds, replaying its actions
    mlp_held_sizes(...)                                 # those sizes for the lesson's MLP, split backward or not
    split_backward_flops()                              # FLOPs of F, B, and of B split into I and W

The ranks themselves run ``pipeline_ref.train.run_many``; nothing here starts MPI.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from pipeline_ref import models, schedules


def synchronous_bound(num_stages: int, num_microbatches: int, f: float, i: float, w: float,
                      chunks: int = 1) -> float:
    """The shortest a synchronous step can be (theory): (p - 1) F / v + m (F + I + W).

    F, I, W are the costs of a whole stage; each of the ``chunks`` chunks per rank costs 1/v of them. The
    last rank holds virtual stage p - 1 (Megatron's layout and the V alike), so its first action waits for
    p - 1 chunk forwards, (p - 1) F / v, and then it has m (F + I + W) of its own work. With one stage per
    rank that is (p - 1) F + m (F + I + W); ZB-V's half-stage chunks halve the fill, so it beats that.
    """
    return (num_stages - 1) * f / chunks + num_microbatches * (f + i + w)


def rank_ends(trace) -> list[float]:
    """When each rank's last action ends: where its gradients are final and its all-reduce can start."""
    return [max(e.end for e in trace.events if e.rank == r) for r in range(trace.num_ranks)]


def held_bytes(schedule, sizes) -> list[int]:
    """Peak bytes each rank holds between a microbatch's F and its B (or W), replaying its action order.

    ``sizes(rank, chunk)`` gives ``(at_forward, at_input_grad)``: the bytes an F adds (what autograd saves,
    and with a split backward the module outputs kept for W) and the bytes an I adds (the output gradients
    kept for W). A B frees what its F added; a W frees what its F and I added. Theory: the order of the
    actions, not their timing, sets the peak, so it does not depend on how fast anything runs.
    """
    peaks = []
    for rank, actions in enumerate(schedule):
        held = peak = 0
        for a in actions:
            at_forward, at_input_grad = sizes(rank, a.chunk)
            if a.op == "F":
                held += at_forward
            elif a.op == "I":
                held += at_input_grad
            elif a.op == "B":
                held -= at_forward
            elif a.op == "W":
                held -= at_forward + at_input_grad
            peak = max(peak, held)
        peaks.append(peak)
    return peaks


def mlp_held_sizes(schedule, depth: int, microbatch: int, width: int, itemsize: int = 4):
    """``sizes`` for ``held_bytes``: the lesson's MLP (``models.mlp``: blocks of Linear then Tanh), cut into
    equal virtual stages.

    A chunk of k blocks saves k + 1 tensors of microbatch x width for its backward (each Linear's input, each
    Tanh's output; the last virtual stage also its targets). A split backward keeps more, for W: each
    Linear's output from the F (k tensors) and that output's gradient from the I (k more).
    """
    schedule = schedules.Schedule.of(schedule)
    pipe = schedule.pipeline
    total = pipe.num_virtual_stages
    blocks = depth // total
    one = microbatch * width * itemsize
    split = schedule.splits_backward

    def sizes(rank, chunk):
        last = pipe.is_last(rank, chunk)
        saved = (blocks + 1 + (1 if last else 0)) * one
        return (saved + blocks * one, blocks * one) if split else (saved, 0)

    return sizes


def split_backward_flops(depth: int = 4, width: int = 256, batch: int = 64) -> dict:
    """FLOPs of one microbatch through a middle stage of the MLP: F, the whole backward B, and B split into I, W.

    Two copies of the same stage: a plain ``Stage`` runs B; a ``Stage(split_backward=True)`` runs I (the
    input's gradient, what the previous stage waits for) then W (the weights' gradients).
    ``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of the matrix products each one runs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline_ref.engine.stage import Stage
    torch.manual_seed(0)
    layers, loss_fn, (x, _) = models.mlp(depth=depth, width=width, batch=batch)
    plain = Stage(nn.Sequential(*layers), loss_fn=loss_fn)
    split = Stage(copy.deepcopy(nn.Sequential(*layers)), loss_fn=loss_fn, split_backward=True)
    grad = (torch.randn(batch, width),)

    def count(run) -> int:
        with FlopCounterMode(display=False) as counter:
            run()
        return counter.get_total_flops()

    flops = {"F": count(lambda: plain.forward(0, x))}
    split.forward(0, x)
    flops["B"] = count(lambda: plain.backward(0, grad))
    flops["I"] = count(lambda: split.backward_input(0, grad))
    flops["W"] = count(lambda: split.backward_weight(0))
    same = all(torch.equal(p.grad, q.grad) for p, q in zip(plain.parameters(), split.parameters()))
    return {"flops": flops, "same weight gradients": same}

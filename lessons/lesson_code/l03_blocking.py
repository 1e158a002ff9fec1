"""Lesson 03, on the ranks: a schedule played with blocking Send/Recv, in the schedule's order.

This is the obvious way to write an executor, and what pipeline_ref.engine.executor
does *not* do. Before an action a rank receives what it needs (blocking Recv);
after it, it sends its result on (blocking Send). For GPipe that works. For
1F1B it hangs as soon as MPI stops buffering the messages: in the steady state
rank s sends the activation of microbatch i+1 downstream while rank s+1 sends
the gradient of microbatch i upstream, and each waits for the other to receive.

    launch(2, "lesson_code.l03_blocking:play_blocking", "1f1b", synchronous=True, ...)
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_ref import models, schedules
from pipeline_ref.faults import watchdog
from pipeline_ref.front import partition
from pipeline_ref.engine.stage import Stage


def play_blocking(comm, schedule_name: str, num_microbatches: int = 4, width: int = 512,
                  microbatch: int = 64, depth: int = 4, synchronous: bool = False):
    rank, num_stages = comm.Get_rank(), comm.Get_size()
    torch.manual_seed(0)
    layers, loss_fn, (inputs, targets) = models.mlp(depth=depth, width=width,
                                                    batch=microbatch * num_microbatches)
    mine = partition.uniform(len(layers), num_stages)[rank]
    first, last = rank == 0, rank == num_stages - 1
    stage = Stage(nn.Sequential(*layers[mine.start:mine.stop]), first, last, loss_fn, num_microbatches)
    xs, ts = inputs.tensor_split(num_microbatches), targets.tensor_split(num_microbatches)
    send = comm.Ssend if synchronous else comm.Send            # Ssend: no eager buffering, ever
    nbytes = microbatch * width * 4

    stage.start_step()
    for action in schedules.build(schedule_name, num_stages, num_microbatches)[rank]:
        i = action.microbatch
        if action.op == "F":
            x = xs[i]
            if not first:
                x = torch.empty(microbatch, width)
                watchdog.beat(f"{action}: in Recv of activation {i} from rank {rank - 1}")
                comm.Recv(x.numpy(), source=rank - 1, tag=i)
            y = stage.forward(i, x, ts[i] if last else None)
            if not last:
                watchdog.beat(f"{action}: in {send.__name__} of activation {i} ({nbytes} bytes) to rank {rank + 1}")
                send(y[0].numpy(), dest=rank + 1, tag=i)      # a boundary is a tuple: here one tensor
        else:
            grad = None
            if not last:
                grad = torch.empty(microbatch, width)
                watchdog.beat(f"{action}: in Recv of gradient {i} from rank {rank + 1}")
                comm.Recv(grad.numpy(), source=rank + 1, tag=i)
            grad_x = stage.backward(i, grad)
            if not first:
                watchdog.beat(f"{action}: in {send.__name__} of gradient {i} ({nbytes} bytes) to rank {rank - 1}")
                send(grad_x[0].numpy(), dest=rank - 1, tag=i)
    watchdog.beat("finished")
    return "finished"

"""Lesson 06, beside the ranks: what the schedules past 1F1B cost, and the same schedules in torch.

    theory_utilization("interleaved", 4, 8, chunks=2)      # v m / (v m + p - 1)
    theory_utilization("zb-h1", 4, 8, f=1, i=1, w=1)       # bubble (p - 1)(F + I - W) per rank
    count_messages(schedule)                               # point-to-point messages of one step
    split_backward_flops()                                 # FLOPs of F, B, and of B split into I and W
    torch_schedule("interleaved", 2, 4, chunks=2)          # torch.distributed.pipelining's own order

The ranks themselves run ``pipeline_ref.runner.run_many``; nothing here starts MPI.
"""
from __future__ import annotations

import copy
from statistics import median

import torch
from torch import nn

from pipeline_ref import models, schedules, simulate
from pipeline_ref.schedules import Action
from pipeline_ref.stage import Stage
from pipeline_ref.trace import Trace

# The model every schedule trains in the lesson (pipeline_ref.models.mlp): 8 equal blocks, so 2 stages of 4
# blocks, or 2 ranks x 2 chunks of 2 blocks, cost the same; a block's forward on 128 samples is a
# 128 x 1024 x 1024 product (a few ms), large beside the executor's own work between actions.
MEASURE_MODEL = {"depth": 8, "width": 1024, "batch": 512}


def theory_utilization(name: str, num_stages: int, num_microbatches: int, chunks: int = 2,
                       f: float = 1.0, i: float = 1.0, w: float = 1.0) -> float:
    """Closed-form utilization, equal stages, free messages: ``simulate.theory_utilization``,
    where interleaved is v m / (v m + p - 1), ZB-H1 works m (F + I + W) per rank and
    idles (p - 1)(F + I - W), and ZB-H2 idles (p - 1) F (f, i, w: the costs of the three ops)."""
    return simulate.theory_utilization(name, num_stages, num_microbatches, chunks=chunks,
                                       forward=f, input_grad=i, weight_grad=w)


def count_messages(schedule) -> int:
    """Messages one step sends between ranks: one per action whose input comes from another rank."""
    chunks, layout = schedules.num_chunks(schedule), schedules.layout_of(schedule)
    return sum(1 for rank, actions in enumerate(schedule) for a in actions
               if (dep := schedules.dependency(a, rank, len(schedule), chunks, layout)) is not None and dep[0] != rank)


def op_costs(trace: Trace) -> dict:
    """Median duration of each op kind per rank in a (measured) trace: {"F": [...], "B": [...], ...}."""
    out = {}
    for op in ("F", "B", "I", "W"):
        per_rank = [[e.duration for e in trace.events if e.rank == r and e.op == op] for r in range(trace.num_ranks)]
        if any(per_rank):
            out[op] = [median(d) if d else 0.0 for d in per_rank]
    return out


def calibrated(schedule, measured: Trace) -> Trace:
    """The simulator's prediction of ``schedule`` with each rank's measured median F, B (or I and W) and latency.

    For an interleaved run a "stage" in the simulator is a chunk: its measured costs are per chunk already.
    """
    costs = op_costs(measured)
    comm = simulate.costs_from_trace(measured)["comm"]
    zero = [0.0] * measured.num_ranks
    return simulate.simulate(schedule, forward=costs["F"], backward=costs.get("B", zero), comm=comm,
                             input_grad=costs.get("I"), weight_grad=costs.get("W"), time_unit="s")


def split_backward_flops(depth: int = 4, width: int = 256, batch: int = 64) -> dict:
    """FLOPs of one microbatch through a middle stage of the MLP: F, the whole backward B, and B split into I, W.

    Two copies of the same stage: a plain ``Stage`` runs B; a ``Stage(split_backward=True)`` runs I (the
    input's gradient, what the previous stage waits for) then W (the weights' gradients).
    ``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of the matrix products each one runs.
    """
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    layers, loss_fn, (x, _) = models.mlp(depth=depth, width=width, batch=batch)
    plain = Stage([nn.Sequential(*layers)], [False], [False], loss_fn)
    split = Stage([copy.deepcopy(nn.Sequential(*layers))], [False], [False], loss_fn, split_backward=True)
    grad = torch.randn(batch, width)

    def count(run) -> int:
        with FlopCounterMode(display=False) as counter:
            run()
        return counter.get_total_flops()

    flops = {"F": count(lambda: plain.forward(0, 0, x, None))}
    split.forward(0, 0, x, None)
    flops["B"] = count(lambda: plain.backward(0, 0, grad))
    flops["I"] = count(lambda: split.backward_input(0, 0, grad))
    flops["W"] = count(lambda: split.backward_weight(0, 0))
    same = all(torch.equal(p.grad, q.grad) for p, q in zip(plain.parameters(), split.parameters()))
    return {"flops": flops, "same weight gradients": same}


# ------------------------------------------------------------------------------ torch.distributed.pipelining

TORCH_CLASSES = {"interleaved": "ScheduleInterleaved1F1B", "zb-h1": "ScheduleInterleavedZeroBubble",
                 "zbv": "ScheduleZBVZeroBubble"}


def torch_schedule(name: str, num_stages: int, num_microbatches: int, chunks: int = 1) -> list:
    """The order torch.distributed.pipelining's schedule class runs, as pipeline_ref Actions (one list per rank).

    torch's multi-stage schedules compute their whole order (``pipeline_order``) when built, for every
    rank. Building one needs a process group and ``PipelineStage`` objects, but no other process: a
    *fake* process group (torch's own testing backend) says "rank 0 of ``num_stages``" and sends nothing.
    torch numbers stages as pipeline_ref numbers virtual stages: ``chunk * num_stages + rank`` (Megatron's
    layout), or in a V for ScheduleZBVZeroBubble (``chunks=2``), so ``schedules.rank_of`` turns a stage back
    into its chunk. ScheduleInterleavedZeroBubble (the paper's ZB1P) with one stage per rank (``chunks=1``)
    is ZB-H1. (GPipe and 1F1B are torch classes of another kind, ScheduleGPipe and Schedule1F1B, which
    decide their order while they run.)
    """
    import torch.distributed as dist
    import torch.distributed.pipelining as pipelining
    from torch.distributed.pipelining import PipelineStage
    from torch.testing._internal.distributed.fake_pg import FakeStore

    layout = "v" if name == "zbv" else "interleaved"
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=num_stages)
    try:
        total = num_stages * chunks
        stages = [PipelineStage(nn.Linear(2, 2), schedules.virtual_stage(0, c, num_stages, layout), total,
                                torch.device("cpu")) for c in range(chunks)]
        schedule = getattr(pipelining, TORCH_CLASSES[name])(stages, n_microbatches=num_microbatches,
                                                              loss_fn=lambda out, target: out.sum())
        order = schedule.pipeline_order
    finally:
        if started:
            dist.destroy_process_group()
    return schedules.Schedule([[Action(a.computation_type.value, a.microbatch_index,
                                       schedules.rank_of(a.stage_index, num_stages, layout)[1])
                                for a in order[rank] if a is not None] for rank in range(num_stages)], layout)

"""The orders torch.distributed.pipelining's own schedule classes run, as pipeline_ref Actions.

    torch_schedule("interleaved", 2, 4, chunks=2)   # ScheduleInterleaved1F1B
    torch_schedule("zb-h1", 3, 4)                   # ScheduleInterleavedZeroBubble with one stage per rank
    torch_schedule("zbv", 2, 4, chunks=2)           # ScheduleZBVZeroBubble
    torch_schedule("dualpipev", 2, 4, chunks=2)     # ScheduleDualPipeV (an overlapped pair: F, then B)

Built on torch's *fake* process group: no other process, no message. Nothing here starts MPI.

Layer: tools (lessons 06, 07 and the tests compare the schedules with torch's through it).
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_ref import schedules
from pipeline_ref.schedules.geometry import Pipeline
from pipeline_ref.schedules import Action

TORCH_CLASSES = {"interleaved": "ScheduleInterleaved1F1B", "zb-h1": "ScheduleInterleavedZeroBubble",
                 "zbv": "ScheduleZBVZeroBubble", "dualpipev": "ScheduleDualPipeV"}


def torch_schedule(name: str, num_stages: int, num_microbatches: int, chunks: int = 1) -> list:
    """The order torch.distributed.pipelining's schedule class runs, as pipeline_ref Actions (one list per
    rank).

    torch's multi-stage schedules compute their whole order (``pipeline_order``) when built, for every
    rank. Building one needs a process group and ``PipelineStage`` objects, but no other process: a
    *fake* process group (torch's own testing backend) says "rank 0 of ``num_stages``" and sends nothing.
    torch numbers stages as pipeline_ref numbers virtual stages: ``chunk * num_stages + rank`` (Megatron's
    layout), or in a V for ScheduleZBVZeroBubble and ScheduleDualPipeV (``chunks=2``), so ``Pipeline.place``
    turns a stage back into its chunk. ScheduleInterleavedZeroBubble (the paper's ZB1P) with one stage per
    rank (``chunks=1``) is ZB-H1. (GPipe and 1F1B are torch classes of another kind, ScheduleGPipe and
    Schedule1F1B, which decide their order while they run.)
    """
    import torch.distributed as dist
    import torch.distributed.pipelining as pipelining
    from torch.distributed.pipelining import PipelineStage
    from torch.testing._internal.distributed.fake_pg import FakeStore

    layout = "v" if name in ("zbv", "dualpipev") else "interleaved"
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=num_stages)
    try:
        total = num_stages * chunks
        pipe = Pipeline(num_stages, chunks, layout)
        stages = [PipelineStage(nn.Linear(2, 2), pipe.virtual_stage(0, c), total,
                                torch.device("cpu")) for c in range(chunks)]
        schedule = getattr(pipelining, TORCH_CLASSES[name])(stages, n_microbatches=num_microbatches,
                                                              loss_fn=lambda out, target: out.sum())
        order = schedule.pipeline_order
    finally:
        if started:
            dist.destroy_process_group()
    return schedules.Schedule([[Action(a.computation_type.value, a.microbatch_index,
                                       Pipeline(num_stages, chunks, layout).place(a.stage_index).chunk)
                                for step in order[rank] if step is not None
                                # DualPipeV's OVERLAP_F_B: F, then B
                                for a in (step.sub_actions or (step,))]
                               for rank in range(num_stages)], layout)

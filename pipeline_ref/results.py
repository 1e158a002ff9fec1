"""What a training run returns: one typed record, the same for the command line, the demo, the lessons and the
tests.

    result = launch(2, "pipeline_ref.train:run_rank", RunConfig(pp=2))[0]     # world rank 0's RunResult
    result.losses, result.trace.utilization, result.memory[0].peak_stashed_bytes

No MPI here (the launcher unpickles results in an ordinary Python process).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from statistics import median

import torch

from pipeline_ref.config import RunConfig
from pipeline_ref.engine.memory import Memory, nbytes
from pipeline_ref.sim.trace import Trace, TraceMeta


@dataclass
class RankReport:
    """What one rank sends world rank 0: after each step, or after an asynchronous run's whole stream."""
    events: list                        # trace.Event of each action this rank ran
    waits: list                         # trace.Wait: where it was blocked on a message or a reduction
    peak: int                           # stashed activations at the peak, counted
    memory: Memory
    rss: int | None                     # the process's resident bytes (machine.resident_bytes)
    loss: float | None = None           # a step's mean loss on the loss stage, None elsewhere
    losses: list = field(default_factory=list)    # a stream's loss of each microbatch, on the loss stage
    grads: dict | None = None           # {name: gradient} of the first step, when collected
    params: dict | None = None          # {name: parameter} after the last step, when collected
    skip: bool = False                  # a NaN/inf skipped this step on every rank
    nonfinite: str | None = None        # where this rank found one
    versions: int = 0                   # asynchronous: weight versions kept at the peak
    version_bytes: int = 0


def rank_memory(params: list, meter, device, optimizer=None) -> Memory:
    """The bytes one rank holds: its parameters, their gradients, its optimizer state, its stash at the
    peak."""
    return Memory(parameters=nbytes(params), gradients=nbytes(p.grad for p in params if p.grad is not None),
                  optimizer=optimizer.state_bytes() if optimizer is not None else 0,
                  peak_stashed_bytes=meter.peak_bytes,
                  device_peak=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)


def measured_trace(reports: list[RankReport], cfg: RunConfig, layout: str, device, **meta) -> Trace:
    """Replica 0's step (world ranks 0 .. pp - 1 are its stages) as one trace; ``meta``: TraceMeta fields that
    add to or override the run's own."""
    replica0 = reports[:cfg.pp]
    memory = [r.memory.device_peak for r in replica0]
    return Trace(num_ranks=cfg.pp, events=[e for r in replica0 for e in r.events],
                 waits=[w for r in replica0 for w in r.waits], peak_stashed=[r.peak for r in replica0],
                 peak_stashed_bytes=[r.memory.peak_stashed_bytes for r in replica0],
                 peak_memory_bytes=memory if None not in memory else None,
                 meta=replace(TraceMeta(source="measured", schedule=cfg.schedule, num_stages=cfg.pp,
                                        layout=layout, num_microbatches=cfg.microbatches, dp=cfg.dp,
                                        device=str(device), time_unit="s"), **meta))


@dataclass
class RunResult:
    config: RunConfig
    losses: list[float]                          # mean loss of each step
    trace: Trace                                 # replica 0's last step
    step_seconds: list[float]                    # each step's makespan
    step_utilization: list[float]                # each step's utilization (the first is a warm-up)
    memory: list[Memory]                         # per pipeline rank of replica 0
    grads: dict | None = None                    # the whole model's first-step gradients (cfg.collect_grads)
    params: list | None = None                   # per world rank, {name: tensor} after the last step
    partition: list[tuple[int, int]] = field(default_factory=list)   # layer range of each virtual stage
    layer_costs: list[float] | None = None       # seconds per layer (partition "time")
    predicted_stage_costs: list[float] | None = None
    tied: list = field(default_factory=list)     # (parameter name, pipeline ranks holding a copy)
    # steps a NaN/inf skipped on every rank (skip_nonfinite)
    skipped_steps: list[int] = field(default_factory=list)
    first_step: int = 0                          # a resumed run's first step; losses[0] is that step's
    # after each step, every world rank's resident memory (bytes)
    step_rss: list = field(default_factory=list)

    @property
    def warm_utilization(self) -> float:
        """Median utilization of the steps after the first (the first step warms up); the only one if one
        step."""
        warm = self.step_utilization[1:] or self.step_utilization
        return median(warm)

    @property
    def warm_step_seconds(self) -> float:
        warm = self.step_seconds[1:] or self.step_seconds
        return median(warm)

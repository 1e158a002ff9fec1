"""What a training run returns: one typed record, the same for the command line, the demo, the lessons and the tests.

    result = launch(2, "pipeline_ref.train:run_rank", RunConfig(pp=2))[0]     # world rank 0's RunResult
    result.losses, result.trace.utilization, result.memory[0].peak_stashed_bytes

No MPI here (the launcher unpickles results in an ordinary Python process).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

from pipeline_ref.config import RunConfig
from pipeline_ref.sim.trace import Trace


@dataclass(frozen=True)
class Memory:
    """Bytes one pipeline rank held: accounted from its tensors (CPU and GPU), and the device's peak (GPU)."""
    parameters: int
    gradients: int
    optimizer: int                      # optimizer state (plain SGD keeps none)
    peak_stashed_bytes: int             # activations autograd kept between F and B, at the peak
    device_peak: int | None = None      # torch.cuda.max_memory_allocated, GPU runs only

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.peak_stashed_bytes


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
    skipped_steps: list[int] = field(default_factory=list)   # steps a NaN/inf skipped on every rank (skip_nonfinite)
    first_step: int = 0                          # a resumed run's first step; losses[0] is that step's
    step_rss: list = field(default_factory=list)  # after each step, every world rank's resident memory (bytes)

    @property
    def warm_utilization(self) -> float:
        """Median utilization of the steps after the first (the first step warms up); the only one if one step."""
        warm = self.step_utilization[1:] or self.step_utilization
        return median(warm)

    @property
    def warm_step_seconds(self) -> float:
        warm = self.step_seconds[1:] or self.step_seconds
        return median(warm)

"""What a training run returns: one typed record, the same for the command line, the demo, the lessons and the
tests.

    result = launch(2, "pipeline_ref.train:run_rank", RunConfig(pp=2))[0]     # world rank 0's RunResult
    result.losses, result.trace.utilization, result.memory[0].peak_stashed_bytes
    print_report(result, trace_file="step.json")   # what `python -m pipeline_ref run` prints, and the files

A run's reports (``RankReport``, one per rank) reach world rank 0, which logs them (``StepLog``: after each
step of a synchronous run, once for an asynchronous stream) and makes the ``RunResult`` from that log.
No MPI here (the launcher unpickles results in an ordinary Python process).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from statistics import median

import torch

from pipeline_ref.config import RunConfig
from pipeline_ref.engine.memory import Memory, nbytes
from pipeline_ref.sim import theory
from pipeline_ref.sim.trace import Trace, TraceMeta, write_chrome_trace


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


@dataclass
class StepLog:
    """What world rank 0 keeps of a run's steps as their reports arrive (a synchronous run: after each step;
    an asynchronous one: once, for its whole stream); :meth:`result` makes the RunResult of either."""
    losses: list = field(default_factory=list)          # mean loss of each step
    seconds: list = field(default_factory=list)
    utilization: list = field(default_factory=list)
    rss: list = field(default_factory=list)             # per step (a stream: once), every world rank's bytes
    skipped: list = field(default_factory=list)
    grads: dict | None = None
    trace: Trace | None = None                          # the last step's (a stream: the whole run's)

    def add_step(self, gathered: list[RankReport], cfg: RunConfig, step: int, first_step: int, layout: str,
                 device) -> None:
        """One synchronous step's reports (every world rank's), and its progress line."""
        last_stages = [g.loss for g in gathered if g.loss is not None]
        self.losses.append(sum(last_stages) / len(last_stages))
        if gathered[0].skip:
            self.skipped.append(step)
            if cfg.verbose:
                print(f"  step {step + 1}/{cfg.steps} skipped on every rank: "
                      + "; ".join(sorted({g.nonfinite for g in gathered if g.nonfinite})), flush=True)
        self.trace = trace = measured_trace(gathered, cfg, layout, device)
        self.seconds.append(trace.makespan)
        self.rss.append([g.rss for g in gathered])
        self.utilization.append(trace.utilization)
        if step == first_step and cfg.collect_grads:
            self.grads = {k: v for g in gathered if g.grads for k, v in g.grads.items()}
        if cfg.verbose:
            print(f"  step {step + 1}/{cfg.steps}  loss {self.losses[-1]:.6f}  {trace.makespan:.3f} s  "
                  f"utilization {trace.utilization:.3f}"
                  + ("  (warm-up)" if step == first_step and cfg.steps > 1 else ""), flush=True)

    def result(self, cfg: RunConfig, last: list[RankReport], model, first_step: int = 0) -> RunResult:
        """The run's RunResult: ``last`` the reports gathered last, ``model`` the rank's model (its
        ``ranges``, ``layer_costs``, ``predicted`` stage costs and ``tied`` weights)."""
        return RunResult(config=cfg, losses=self.losses, trace=self.trace, step_seconds=self.seconds,
                         step_utilization=self.utilization, memory=[g.memory for g in last[:cfg.pp]],
                         grads=self.grads, params=[g.params for g in last] if cfg.collect_params else None,
                         partition=[(r.start, r.stop) for r in model.ranges], layer_costs=model.layer_costs,
                         predicted_stage_costs=model.predicted, tied=model.tied, skipped_steps=self.skipped,
                         first_step=first_step, step_rss=self.rss)


def theory_note(name: str, pp: int, microbatches: int, chunks: int, **costs) -> str:
    """" (theory 0.800)", or nothing where no closed form applies (a user's schedule, ZB-H1 with m < p)."""
    try:
        return f" (theory {theory.utilization(name, pp, microbatches, chunks=chunks, **costs):.4f})"
    except ValueError:
        return ""


def print_report(result: RunResult, save_params: str | None = None, save_grads: str | None = None,
                 trace_file: str | None = None) -> None:
    """What a run measured: the warm steps' median (the first step warms up), then the files asked for."""
    cfg = result.config
    theory = theory_note(cfg.schedule, cfg.pp, cfg.microbatches, cfg.chunks)
    steps = len(result.step_utilization)
    if steps > 1:
        which = f"median of steps 2-{steps}" if steps > 2 else "step 2"
        measured = (f"utilization {result.warm_utilization:.3f} ({which}; step 1, the warm-up: "
                    f"{result.step_utilization[0]:.3f}){theory}, "
                    f"step {result.warm_step_seconds * 1e3:.1f} ms")
    else:
        measured = (f"utilization {result.step_utilization[0]:.3f} of a single, cold step (a warm-up; use "
                    f"--steps 3 or more for a steady number){theory}")
    print(f"{cfg.schedule} on {cfg.pp} stages, {cfg.microbatches} microbatches: {measured}, "
          f"peak stashed activations per stage {result.trace.peak_stashed}")
    if result.trace.meta.weight_versions is not None:      # PipeDream, 2BW: the versions each stage kept
        print(f"weight versions held per stage (most at once) {result.trace.meta.weight_versions}, "
              f"{[round(b / 2**20, 3) for b in result.trace.meta.weight_version_bytes]} MiB")
    if save_params:
        params = {name: tensor for ranks in result.params[:cfg.pp] if ranks for name, tensor in ranks.items()}
        torch.save(params, save_params)
        print(f"parameters after the run ({len(params)} tensors) -> {save_params}")
    if save_grads:
        torch.save(result.grads, save_grads)
        print(f"gradients of the first step ({len(result.grads)} tensors) -> {save_grads}")
    if trace_file:
        write_chrome_trace(result.trace, trace_file)
        print(f"trace of the last step -> {trace_file} (open it in https://ui.perfetto.dev)")

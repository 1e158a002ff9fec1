"""Every check that can be made before a rank communicates, in the order a rank needs their results.

Layer: run (package root). Bad requests are refused with a message that says what to change, *before* any
rank communicates: a wrong world size, more stages than layers, a batch the microbatches don't divide, an
unknown schedule, a model factory that doesn't import. ``preflight`` makes every check and returns what a
rank needs (the model, its loss, the batch, the schedule): first this module's own (``check_config``, which
needs no model) and the model's build, then each check another module owns, asked once: the schedule
(``schedules.build_for_run``), what an asynchronous schedule refuses, the cut's sizes (``cut.num_pieces``;
``check_fits`` is its form for callers that know only the sizes), the memory plan, the checkpoint to resume.

This module does not import MPI, so the launcher (and pytest) can use it.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple

import torch

from pipeline_ref import models, schedules
from pipeline_ref.config import DEVICES, DTYPES, PARTITIONS, TRANSPORTS, ConfigError, RunConfig
from pipeline_ref.engine import optim, precision
from pipeline_ref.faults.checkpoint_check import check_resume
from pipeline_ref.front import cut, memory_plan
from pipeline_ref.models import batches
from pipeline_ref.schedules import asynchronous

OPTIMIZERS = optim.OPTIMIZERS
AUTOCAST = tuple(precision.DTYPES)


class Prepared(NamedTuple):
    """What the checks leave a rank: the model (a list of layers, or a whole module), its loss, step 0's batch
    (or the source of a batch per step), the validated schedule, and torch's random state as the model's
    build left it (so a rank handed a Prepared built elsewhere draws what it would have drawn itself)."""
    layers: object
    loss_fn: object
    batch: object
    schedule: schedules.Schedule
    random_state: torch.Tensor


def check_config(cfg: RunConfig, world_size: int | None = None) -> None:
    """Checks that need no model: names, counts, and the number of ranks."""
    if ":" in cfg.schedule:
        _schedule_function(cfg.schedule)
    elif cfg.schedule not in schedules.GENERATORS:
        raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose one of "
                          f"{', '.join(schedules.GENERATORS)}, or give your own generator as "
                          "pkg.module:function")
    for name in ("pp", "dp", "microbatches", "steps", "chunks", "checkpoint_every"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {value!r}")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {cfg.dtype!r}; choose one of {', '.join(DTYPES)}")
    if cfg.chunks > 1 and cfg.schedule != "interleaved" and ":" not in cfg.schedule:
        raise ConfigError(f"--chunks {cfg.chunks} applies only to --schedule interleaved (or your own "
                          f"generator); zbv always holds 2 chunks per rank")
    budget = cfg.memory_budget
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise ConfigError(f"--memory-budget is in GB per rank and must be positive, got {budget!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if cfg.autocast is not None and cfg.autocast not in AUTOCAST:
        raise ConfigError(f"unknown autocast dtype {cfg.autocast!r}; choose one of {', '.join(AUTOCAST)}")
    if cfg.autocast and cfg.dtype != "float32":
        raise ConfigError(f"--autocast {cfg.autocast} keeps float32 master weights: use it with --dtype "
                          f"float32, not {cfg.dtype}")
    try:
        models.load_factory(cfg.model)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    check_world_size(cfg, world_size)
    _check_combinations(cfg)


def _check_combinations(cfg: RunConfig) -> None:
    """What the options allow together: checkpoints and asynchronous schedules, devices, transports."""
    if cfg.schedule in asynchronous.ASYNCHRONOUS and (cfg.checkpoint_dir or cfg.resume_from):
        raise ConfigError(f"{cfg.schedule} has no point where a checkpoint is exact: its one stream of steps "
                          f"x microbatches always has microbatches in flight, whose stashed activations "
                          f"(autograd graphs) and weight versions a file cannot hold, and draining the "
                          f"stream to save would change what the run computes; checkpoint a schedule with a "
                          f"flush (1f1b, gpipe, ...)")
    if cfg.checkpoint_dir and Path(cfg.checkpoint_dir).exists() and not Path(cfg.checkpoint_dir).is_dir():
        raise ConfigError(f"--save-checkpoint {cfg.checkpoint_dir} is a file, not a folder")
    if cfg.partition not in PARTITIONS:
        raise ConfigError(f"unknown partition {cfg.partition!r}; choose one of {', '.join(PARTITIONS)}")
    if cfg.device not in DEVICES:
        raise ConfigError(f"unknown device {cfg.device!r}; choose one of {', '.join(DEVICES)}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    if cfg.transport not in TRANSPORTS:
        raise ConfigError(f"unknown transport {cfg.transport!r}; choose one of {', '.join(TRANSPORTS)}")
    if cfg.transport == "torch" and cfg.sync_sends:
        raise ConfigError("--sync-sends is MPI's Issend; torch.distributed has no synchronous send: "
                          "use it with --transport mpi")


def check_world_size(cfg: RunConfig, world_size: int | None) -> None:
    """The ranks there are (None: not known yet) are the ranks the run needs."""
    if world_size is not None and world_size != cfg.world_size:
        raise ConfigError(f"the run has {world_size} ranks but --pp {cfg.pp} x --dp {cfg.dp} needs "
                          f"{cfg.world_size}; start it with -n {cfg.world_size}")


def build_model(cfg: RunConfig):
    """The whole model and batch, identical on every rank: seeded, then converted to the run's dtype."""
    factory = models.load_factory(cfg.model)
    torch.manual_seed(cfg.seed)
    layers, loss_fn, data = factory(**cfg.model_kwargs)
    batch = batches.first_batch(data)       # a per-step data source stands in as its step 0 batch
    models.check_model(layers, loss_fn, batch)
    layers, batch = models.to_dtype(layers, batch, DTYPES[cfg.dtype])
    return layers, loss_fn, batch


def check_fits(cfg: RunConfig, num_layers: int, batch_size: int, chunks: int = 1,
               split_backward: bool = False, target_size: int | None = None) -> None:
    """Checks that need only the model's sizes: enough layers for the stages, a batch the microbatches
    divide (``cut.check_sizes``, whose ValueError is a refused request here)."""
    try:
        cut.check_sizes(cfg, num_layers, batch_size, chunks, split_backward, target_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def asynchronous_refusals(cfg: RunConfig) -> dict[str, bool]:
    """The options an asynchronous schedule (PipeDream, 2BW: no step boundary shared by all stages)
    refuses, by the name the user gave them: True where asked for."""
    return {"--overlap-allreduce": cfg.overlap_allreduce, "--skip-nonfinite-steps": cfg.skip_nonfinite,
            "--save-checkpoint": bool(cfg.checkpoint_dir), "--resume": bool(cfg.resume_from),
            "--save-grads (no step has one gradient)": cfg.collect_grads,
            f"--optimizer {cfg.optimizer} (the updates are SGD, in weight_versions.py)":
                cfg.optimizer != "sgd",
            "--autocast": bool(cfg.autocast)}


def preflight(cfg: RunConfig, world_size: int | None = None) -> Prepared:
    """Every check, each made once, in the order a rank needs their results; nothing here communicates.

    Returns a :class:`Prepared` ``(layers, loss_fn, batch, schedule, random_state)``. ``python -m
    pipeline_ref run -n N`` calls it once, before starting any rank, and hands the ranks what it returns (a
    batch that the microbatches don't divide is one line of error, not N ranks' tracebacks); ranks started
    by a bare ``mpiexec`` call it each for itself. First this module's own checks and the model's build,
    then each check that another module owns, in turn: the schedule (built and validated), what an
    asynchronous schedule refuses, the cut (how many pieces the model gives, whether the batch splits), the
    memory plan (``--memory-budget``), the checkpoint to resume from (``--resume``).
    """
    check_config(cfg, world_size)
    layers, loss_fn, batch = build_model(cfg)
    random_state = torch.get_rng_state()
    refused = asynchronous_refusals(cfg)
    schedule = make_schedule(cfg)
    try:      # the modules below say what is wrong (ValueError); to the user it is a refused request
        asynchronous.check_asynchronous_run(cfg.schedule, cfg.pp, cfg.microbatches, cfg.dp, layers, **refused)
        cut.num_pieces(cfg, layers, batch, schedule.num_chunks, schedule.splits_backward)
        if cfg.memory_budget is not None:
            memory_plan.check_budget(cfg, layers, loss_fn, batch, schedule)
        if cfg.resume_from:           # a damaged or foreign checkpoint: one line, before any rank trains
            check_resume(cfg, layers)
    except ValueError as err:         # ScheduleError and CheckpointError are ones too
        raise ConfigError(str(err)) from None
    return Prepared(layers, loss_fn, batch, schedule, random_state)


def _schedule_function(spec: str):
    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except Exception as err:     # ImportError, AttributeError, or whatever the module raised
        raise ConfigError(f"cannot load the schedule generator {spec!r}: "
                          f"{type(err).__name__}: {err}") from None
    if not callable(function):
        raise ConfigError(f"the schedule generator {spec!r} is not callable")
    return function


def make_schedule(cfg: RunConfig) -> schedules.Schedule:
    """The run's schedule, validated: a built-in name, or a user's ``pkg.module:function(num_stages,
    num_microbatches)``."""
    generator = _schedule_function(cfg.schedule) if ":" in cfg.schedule else None
    streams = cfg.schedule in asynchronous.ASYNCHRONOUS      # steps x m microbatches, no flush
    try:
        schedule = schedules.build_for_run(cfg.schedule, cfg.pp, cfg.microbatches, cfg.chunks, cfg.steps,
                                           generator)
        schedules.validate(schedule, cfg.microbatches * (cfg.steps if streams else 1))
    except schedules.ScheduleError as err:
        raise ConfigError(str(err)) from None
    return schedules.Schedule.of(schedule)

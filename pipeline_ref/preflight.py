"""Every check that can be made before a rank communicates, in the order a rank needs their results.

Layer: run (package root). ``check_config`` and ``check_fits`` refuse bad requests with a message that says
what to change, *before* any rank communicates: a wrong world size, more stages than layers, a batch the
microbatches don't divide, an unknown schedule, a model factory that doesn't import. ``preflight`` makes them
all and returns what a rank needs (the model, its loss, the batch, the schedule).

This module does not import MPI, so the launcher (and pytest) can use it.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import torch

from pipeline_ref import models, schedules
from pipeline_ref.config import DEVICES, DTYPES, PARTITIONS, TRANSPORTS, ConfigError, RunConfig
from pipeline_ref.engine import optim, precision
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
    try:                              # PipeDream and 2BW: what a run without a shared step boundary refuses
        asynchronous.check_asynchronous_run(cfg.schedule, cfg.pp, cfg.microbatches, cfg.dp, **{
            "--overlap-allreduce": cfg.overlap_allreduce, "--skip-nonfinite-steps": cfg.skip_nonfinite,
            "--save-checkpoint": bool(cfg.checkpoint_dir), "--resume": bool(cfg.resume_from),
            "--save-grads (no step has one gradient)": cfg.collect_grads,
            f"--optimizer {cfg.optimizer} (the updates are SGD, in weight_versions.py)":
                cfg.optimizer != "sgd",
            "--autocast": bool(cfg.autocast)})
    except schedules.ScheduleError as err:
        raise ConfigError(str(err)) from None


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
    """Checks that need the model: enough layers for the stages, a batch the microbatches divide.

    ``target_size``: the targets' first dimension when it is not the batch's (targets flattened per
    token, (B*T,) for inputs (B, T)): it must split into the same number of equal microbatches, which
    then pair up with the inputs' in order, as torch.distributed.pipelining splits them.
    """
    if cfg.pp * chunks > num_layers:
        pieces = f"--pp {cfg.pp} stages" + (f" x {chunks} chunks" if chunks > 1 else "")
        raise ConfigError(f"{pieces} but the model has only {num_layers} layers; every "
                          f"{'chunk' if chunks > 1 else 'stage'} needs at least one")
    if split_backward and cfg.checkpoint:
        raise ConfigError(f"--checkpoint cannot be combined with schedule {cfg.schedule!r}, whose backward "
                          f"is split into I and W (it would recompute the forward twice)")
    pieces = cfg.dp * cfg.microbatches
    if batch_size % pieces:
        raise ConfigError(f"the global batch of {batch_size} samples does not split into {cfg.dp} "
                          f"replica(s) x {cfg.microbatches} equal microbatches; choose --microbatches "
                          f"(and --dp) so that their product divides {batch_size}")
    if target_size is not None and target_size != batch_size and target_size % pieces:
        raise ConfigError(f"the targets' first dimension ({target_size}) does not split into {cfg.dp} "
                          f"replica(s) x {cfg.microbatches} equal microbatches as the inputs' ({batch_size}) "
                          "do; give targets whose first dimension is the batch (e.g. "
                          f"targets.view({batch_size}, -1)) or a multiple of it in the inputs' order (per "
                          "token: (batch * tokens,))")


def preflight(cfg: RunConfig, world_size: int | None = None) -> Prepared:
    """Every check, each made once, in the order a rank needs their results; nothing here communicates.

    Returns a :class:`Prepared` ``(layers, loss_fn, batch, schedule, random_state)``. ``python -m
    pipeline_ref run -n N`` calls it once, before starting any rank, and hands the ranks what it returns (a
    batch that the microbatches don't divide is one line of error, not N ranks' tracebacks); ranks started
    by a bare ``mpiexec`` call it each for itself. First this module's own checks, then each one that
    another module owns: the cut (how many pieces the model gives), the memory plan (``--memory-budget``),
    the checkpoint to resume from (``--resume``).
    """
    check_config(cfg, world_size)
    layers, loss_fn, batch = build_model(cfg)
    random_state = torch.get_rng_state()
    schedule = make_schedule(cfg)
    if cfg.schedule in asynchronous.ASYNCHRONOUS and cfg.pp > 1 and asynchronous.shared_parameters(layers):
        raise ConfigError(f"{cfg.schedule} keeps weight versions per stage, and layers of this model share a "
                          f"Parameter ({asynchronous.shared_parameters(layers)[0]}): two stages would update "
                          f"it at different times; untie it, or use a schedule with a flush")
    from pipeline_ref.faults.checkpoint_check import check_resume
    from pipeline_ref.front import cut, memory_plan
    try:      # the modules below say what is wrong (ValueError); to the user it is a refused request
        count = cut.num_pieces(cfg, layers, batch[0], schedule.num_chunks)   # layers, or a module's pieces
        check_fits(cfg, count, batch[0].shape[0], chunks=schedule.num_chunks,
                   split_backward=schedule.splits_backward, target_size=batch[1].shape[0])
        if cfg.memory_budget is not None:
            memory_plan.check_budget(cfg, layers, loss_fn, batch, schedule)
        if cfg.resume_from:           # a damaged or foreign checkpoint: one line, before any rank trains
            check_resume(cfg, layers)
    except ConfigError:
        raise
    except ValueError as err:         # CheckpointError is one too
        raise ConfigError(str(err)) from None
    return Prepared(layers, loss_fn, batch, schedule, random_state)


def handed_on(prepared: Prepared) -> Prepared | None:
    """What the launcher can hand its ranks (pickled, with the configuration): ``prepared``, or None when it
    does not pickle (a user's factory may return a lambda as its loss): then each rank prepares for
    itself."""
    try:
        pickle.dumps(prepared)
    except (pickle.PicklingError, AttributeError, TypeError):
        return None
    return prepared


def _schedule_function(spec: str):
    import importlib
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
    if ":" in cfg.schedule:
        options = {"chunks": cfg.chunks} if cfg.chunks > 1 else {}
        schedule = _schedule_function(cfg.schedule)(cfg.pp, cfg.microbatches, **options)
    else:
        options = schedules.chunk_options(cfg.schedule, cfg.chunks)
        if cfg.schedule in asynchronous.ASYNCHRONOUS:
            options = {"steps": cfg.steps}     # one stream of steps x m microbatches, no flush
        try:
            schedule = schedules.build(cfg.schedule, cfg.pp, cfg.microbatches, **options)
        except schedules.ScheduleError as err:
            raise ConfigError(str(err)) from None
    if not isinstance(schedule, (list, tuple)) or len(schedule) != cfg.pp:
        raise ConfigError(f"schedule {cfg.schedule!r} must give one list of actions per stage ({cfg.pp}), "
                          f"got {type(schedule).__name__} of length "
                          f"{len(schedule) if hasattr(schedule, '__len__') else '?'}")
    schedules.validate(schedule,
                       cfg.microbatches * (cfg.steps if cfg.schedule in asynchronous.ASYNCHRONOUS else 1))
    return schedules.Schedule.of(schedule)

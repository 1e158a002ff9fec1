"""One pipelined (and data-parallel) training run on this rank: set up, play N steps, gather the results.

``run_rank(comm, cfg, prepared)`` is what every rank calls, whoever started the ranks (``launch.py`` from
Python, handing each rank the checks the parent made; ``run_under_mpiexec`` for ranks that
``mpiexec``/``srun`` started on a cluster); world rank 0 returns a :class:`~pipeline_ref.results.RunResult`,
the others None. It reads in four parts:

    set_up        everything that can be refused was refused before the first message
                  (``preflight.preflight``, once per run); the model is cut into stages, the ranks into a
                  pp x dp grid, shapes agreed with the neighbours
    train_step    the pipeline plays the schedule (``executor.py``) inside this replica's pipeline
                  communicator; gradients averaged over the data communicator and summed over the ranks
                  sharing a tied weight (``reduce.py``)
    optimizer     each stage's own (``optim.py``: plain SGD written out, or AdamW), after the reductions;
                  in float16 the gradients are unscaled first (``precision.py``)
    gather        every rank's report to world rank 0, which keeps the losses, the trace and the memory

``run_many(comm, configs)`` plays several runs one after another on the first pp x dp ranks of ``comm``:
one ``mpiexec`` for a whole test matrix or demo, since starting ranks (``import torch``) costs seconds and
a step of a toy model milliseconds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pipeline_ref import async_run, run_checkpoint
from pipeline_ref.config import RunConfig
from pipeline_ref.engine import machine, optim, precision, topology
from pipeline_ref.engine.device import for_rank as device_for_rank
from pipeline_ref.engine.executor import Executor, agree_specs, plan
from pipeline_ref.engine.reduce import GradientReducer, tied_weight_reducers
from pipeline_ref.engine.stage import Stage, rank_stages
from pipeline_ref.faults import watchdog
from pipeline_ref.faults.finite import check_gradients
from pipeline_ref.front import cut, partition
from pipeline_ref.models import batches
from pipeline_ref.preflight import Prepared, preflight
from pipeline_ref.results import RankReport, RunResult, StepLog, rank_memory
from pipeline_ref.schedules import asynchronous
from pipeline_ref.schedules.geometry import Pipeline
from pipeline_ref.sim.trace import Wait


@dataclass
class Place:
    """Where this rank sits: the run's communicator, its grid coordinates and communicators, its device."""
    comm: object                 # an MPI communicator (mpi4py is imported on the ranks only)
    topo: topology.Topology      # stage, replica, pipeline and data communicators
    pipeline: Pipeline           # the schedule's stages and chunks, and where each chunk sits
    device: torch.device


@dataclass
class RankModel:
    """The part of the model this rank holds, and how the whole was cut."""
    stages: dict[int, Stage]     # chunk -> Stage
    params: list                 # this rank's Parameters, each once
    names: dict                  # id(Parameter) -> name as nn.Sequential(*layers) (or the module) gives it
    layers: dict                 # global layer index -> module, the layers this rank holds (for checkpoints)
    ranges: list                 # layer (or piece) range of each virtual stage
    tied: list                   # (parameter name, pipeline ranks holding a copy)
    layer_costs: list | None     # measured seconds per layer (partition "time"), else None
    predicted: list | None       # each virtual stage's predicted cost, from layer_costs
    state_names: set | None      # a whole module's state_dict names (what a checkpoint keeps), else None


@dataclass
class RankData:
    """This rank's microbatches: inputs on the first stage, targets on the loss stage (None elsewhere)."""
    inputs: list | None
    targets: list | None
    source: batches.PerStep | None     # when the factory gives a batch per step: where each step's comes from


@dataclass
class Update:
    """What turns a step's gradients into new weights: the reductions, then the optimizer."""
    optimizer: optim.SGD | optim.AdamW
    scaler: precision.LossScaler | precision.NoScaler   # LossScaler in float16
    dp_reducer: GradientReducer                         # this stage in every replica: averaged
    tie_reducers: list[GradientReducer]                 # the stages sharing a tied weight: summed


@dataclass
class RankRun:
    """What one rank holds for a run, once set up."""
    cfg: RunConfig
    place: Place
    model: RankModel
    data: RankData
    update: Update
    executor: Executor
    communicators: list          # to free at the end (MPI has a limited number; a torch transport's group)
    first_step: int = 0          # 0, or the step a resumed run continues from


def set_up(comm, cfg: RunConfig, prepared: Prepared) -> RankRun:
    """This rank's part of the run, ready for its first step; ``prepared``: what the preflight left (made
    by the launcher, or by this process)."""
    from pipeline_ref.engine.message import Messenger, check_tag_range
    from pipeline_ref.engine.mpi_transport import MPITransport
    from pipeline_ref.engine.torch_transport import open_transport

    layers, loss_fn, batch, schedule, random_state = prepared
    torch.set_rng_state(random_state)         # as the model's build left it, wherever it was built
    pipe, device = schedule.pipeline, device_for_rank(cfg.device, comm)   # one GPU per rank: its local rank
    per_replica = batch[0].shape[0] // cfg.dp  # each replica trains on its own slice of the batch
    watchdog.beat(f"choosing the {cfg.partition} partition")
    state_names = set(layers.state_dict()) if cut.split.is_whole_module(layers) else None   # checkpoints
    whole = cut.cut(comm, cfg, layers, loss_fn, batch[0][:per_replica // cfg.microbatches].to(device), pipe,
                    device)
    watchdog.beat("arranging the ranks into pipeline and data communicators")
    topo = topology.grid(comm, cfg.pp, cfg.dp)
    watchdog.locate(f"stage {topo.stage}, replica {topo.replica}" if cfg.dp > 1 else "")   # in its reports
    rank = topo.stage
    transport = (open_transport(comm, topo, schedule, device, cfg.stall_timeout, cfg.schedule)
                 if cfg.transport == "torch" else MPITransport(topo.pipeline, sync_sends=cfg.sync_sends))
    check_tag_range(transport, schedule.num_microbatches, pipe.num_chunks)   # PipeDream: steps x m
    stages = rank_stages(whole, schedule, rank, device, cfg.microbatches, recompute=cfg.checkpoint,
                         autocast=cfg.autocast)
    params = list({id(p): p for s in stages.values() for p in s.parameters()}.values())
    model = RankModel(stages=stages, params=params, names=whole.names, ranges=whole.ranges, tied=whole.tied,
                      layers={i: whole.layers[i] for c in range(pipe.num_chunks)
                              for i in whole.ranges[pipe.virtual_stage(rank, c)]},
                      layer_costs=whole.costs, state_names=state_names,
                      predicted=partition.stage_costs(whole.costs, whole.ranges) if whole.costs else None)
    inputs, targets = batches.microbatches(batch, cfg, topo, pipe, device)
    data = RankData(inputs=inputs, targets=targets,
                    source=batch if isinstance(batch, batches.PerStep) else None)
    watchdog.beat("agreeing on tensor shapes with the neighbouring stages")
    sample = inputs[0] if rank == 0 else (torch.empty(0, device=device),)
    in_specs, out_specs = agree_specs(transport, stages, pipe, rank, sample)
    executor = Executor(stages,
                        topology.by_world_rank(plan(schedule[rank], pipe, rank, in_specs, out_specs), topo),
                        Messenger(transport, device), rank, device, skip_nonfinite=cfg.skips_nonfinite)
    # Reducers: replicas of this stage (average), then the stages sharing a tied weight (sum).
    tie_reducers = tied_weight_reducers(comm, topo, whole.tied, {whole.names[id(p)]: p for p in params})
    update = Update(optimizer=optim.make(cfg.optimizer, params, cfg.lr),
                    scaler=precision.scaler_for(cfg.autocast),
                    dp_reducer=GradientReducer(topo.data, params, average=True), tie_reducers=tie_reducers)
    run = RankRun(cfg=cfg, place=Place(comm=comm, topo=topo, pipeline=pipe, device=device), model=model,
                  data=data, update=update, executor=executor,
                  # a torch transport's Free() ends its process group
                  communicators=[topo.pipeline, topo.data] + [r.comm for r in tie_reducers]
                  + ([transport] if cfg.transport == "torch" else []))
    if cfg.resume_from:
        run_checkpoint.resume(run)
    return run


def train_step(run: RankRun, step: int) -> RankReport:
    """One step on this rank: the schedule, then the all-reduces. Returns this rank's report of it."""
    cfg, place, model, update = run.cfg, run.place, run.model, run.update
    if run.data.source is not None:           # a batch per step (real text): this step's, as step 0's shapes
        run.data.inputs, run.data.targets = batches.microbatches(run.data.source.at(step), cfg, place.topo,
                                                                 place.pipeline, place.device)
    for stage in model.stages.values():       # float16: the loss scaled up by the agreed scale
        stage.loss_scale = update.scaler.scale / cfg.microbatches
    watchdog.beat(f"waiting for the other ranks before step {step}")
    place.comm.Barrier()
    if place.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(place.device)     # the trace reports this step's peak
    meter = next(iter(model.stages.values())).meter
    meter.reset_peaks()
    began = time.perf_counter()
    early = update.dp_reducer.start if cfg.overlap_allreduce else None   # the all-reduce after the last B
    events, waits = run.executor.run(run.data.inputs, run.data.targets, step, t0=began,
                                     after_last_backward=early)
    found = run.executor.found_nonfinite or check_gradients(model.params, f"rank {place.topo.stage}", step,
                                                            skipping=cfg.skips_nonfinite)
    skip = False
    if cfg.skips_nonfinite:
        # Every rank of every replica must make the same choice, or the next collective would hang: reduce it.
        watchdog.beat(f"step {step}: agreeing whether to skip the step")
        from mpi4py import MPI
        skip = bool(place.comm.allreduce(int(found is not None), op=MPI.MAX))
    watchdog.beat(f"step {step}: all-reducing gradients")
    reduce_start = time.perf_counter()
    if cfg.overlap_allreduce:
        update.dp_reducer.wait()
    elif not skip:
        update.dp_reducer.allreduce()
    for reducer in update.tie_reducers if not skip else ():
        reducer.allreduce()
    if cfg.dp > 1 or update.tie_reducers:
        waits.append(Wait(place.topo.stage, "all-reduce gradients", reduce_start - began,
                          time.perf_counter() - began))
    losses = [loss for s in model.stages.values() for loss in s.losses]
    first = cfg.collect_grads and step == run.first_step and place.topo.replica == 0
    return RankReport(events=events, waits=waits, peak=meter.peak_count,
                      memory=rank_memory(model.params, meter, place.device, update.optimizer),
                      rss=machine.resident_bytes(),
                      loss=torch.stack(losses).mean().item() if losses else None,
                      grads={model.names[id(p)]: p.grad.detach().cpu().clone() for p in model.params
                             if p.grad is not None} if first else None, skip=skip, nonfinite=found)


def run_rank(comm, cfg: RunConfig, prepared: Prepared | None = None) -> RunResult | None:
    """Every rank's whole run; world rank 0 returns the RunResult. ``prepared``: the preflight the launcher
    handed on, else each rank makes its own."""
    if prepared is None:
        watchdog.beat("checking the configuration")
        prepared = preflight(cfg, comm.Get_size())
    return run_prepared(comm, cfg, prepared)


def run_prepared(comm, cfg: RunConfig, prepared: Prepared) -> RunResult | None:
    """The run, once checked: set up, the steps (or an asynchronous stream), what world rank 0 gathers."""
    run = set_up(comm, cfg, prepared)
    if cfg.verbose and comm.Get_rank() == 0:
        _announce(run)
    if cfg.schedule in asynchronous.ASYNCHRONOUS:     # PipeDream, 2BW: one stream, updates after backwards
        log, gathered = async_run.run_stream(run)
    else:
        log, gathered, update = StepLog(), None, run.update
        for step in range(run.first_step, cfg.steps):
            report = train_step(run, step)
            if not report.skip:
                update.scaler.unscale(run.model.params)
                update.optimizer.step()
            update.scaler.update(skipped=report.skip)     # the same on every rank: the skip was agreed
            if cfg.checkpoint_dir and (step + 1) % cfg.checkpoint_every == 0:
                run_checkpoint.save(run, step + 1)
            if cfg.collect_params and step == cfg.steps - 1:
                report.params = {run.model.names[id(p)]: p.detach().cpu().clone() for p in run.model.params}
            watchdog.beat(f"gathering the results of step {step}")
            gathered = comm.gather(report, root=0)
            if comm.Get_rank() == 0:
                log.add_step(gathered, cfg, step, run.first_step, run.place.pipeline.layout, run.place.device)
    watchdog.beat("finished")
    for c in run.communicators:      # MPI has a limited number of them; run_many makes many runs
        c.Free()
    return log.result(cfg, gathered, run.model, run.first_step) if comm.Get_rank() == 0 else None


def _announce(run: RankRun) -> None:
    cfg, chunks, model = run.cfg, run.place.pipeline.num_chunks, run.model
    print(f"{cfg.schedule}: {cfg.pp} stages x {cfg.dp} replica(s), {cfg.microbatches} microbatches, "
          f"{cfg.steps} step(s), layers per {'virtual ' if chunks > 1 else ''}stage "
          f"{[len(r) for r in model.ranges]}"
          + (f", tied {[n for n, _ in model.tied]}" if model.tied else ""), flush=True)
    if model.predicted:
        print(f"  {cfg.partition} partition: predicted forward+backward per microbatch and stage "
              f"{[f'{1e3 * c:.2f} ms' for c in model.predicted]}", flush=True)


def run_under_mpiexec(cfg: RunConfig, prepared: Prepared) -> RunResult | None:
    """The command line's run on a rank that ``mpiexec``/``srun`` started (``prepared``: this rank's own
    preflight; its watchdog started before it, by ``__main__``); one rank's failure ends them all, named,
    instead of leaving the others waiting."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    try:
        return run_prepared(comm, cfg, prepared)
    except Exception as err:
        watchdog.report(f"failed while {watchdog.doing()}: {type(err).__name__}: {err}")
        watchdog.abort_all(comm, 1)


def run_many(comm, configs: list[RunConfig]) -> list[RunResult | None]:
    """Each run on the first pp x dp ranks of ``comm``; the rest wait. Results as rank 0 of ``comm`` sees
    them."""
    from mpi4py import MPI
    results = []
    for index, cfg in enumerate(configs):
        # Ranks left out of a run wait here for as long as it takes: not a stall.
        watchdog.beat(f"waiting for run {index} ({cfg.schedule}, {cfg.world_size} ranks)", watched=False)
        machine.wait_quietly(comm)
        color = 0 if comm.Get_rank() < cfg.world_size else MPI.UNDEFINED
        sub = comm.Split(color, comm.Get_rank())
        if sub != MPI.COMM_NULL:
            results.append(run_rank(sub, cfg))
            sub.Free()
        else:
            results.append(None)
    return results

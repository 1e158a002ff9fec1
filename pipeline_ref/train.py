"""One pipelined (and data-parallel) training run on this rank: set up, play N steps, gather the results.

``run_rank(comm, cfg)`` is what every rank calls, whoever started the ranks (``launch.py`` from
Python, or ``mpiexec``/``srun`` on a cluster); world rank 0 returns a
:class:`~pipeline_ref.results.RunResult`, the others None. It reads in four parts:

    set_up        everything that can be refused is refused before the first message
                  (``preflight.preflight``);
                  the model is cut into stages, the ranks into a pp x dp grid, shapes agreed with the
                  neighbours
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
from pipeline_ref.engine import machine, optim, precision, topology
from pipeline_ref.engine.executor import Executor, agree_specs, plan
from pipeline_ref.engine.reduce import GradientReducer
from pipeline_ref.engine.stage import StashMeter, Stage
from pipeline_ref.faults import watchdog
from pipeline_ref.front import cut, partition
from pipeline_ref.models import batches
from pipeline_ref.schedules import asynchronous
from pipeline_ref.schedules.geometry import Pipeline
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import Prepared, preflight
from pipeline_ref.engine.device import for_rank as device_for_rank
from pipeline_ref.faults.finite import NonFiniteError, nonfinite
from pipeline_ref.results import RankReport, RunResult, measured_trace, rank_memory
from pipeline_ref.sim.trace import Wait


@dataclass
class RankRun:
    """What one rank holds for a run, once set up."""
    cfg: RunConfig
    comm: object                 # an MPI communicator (mpi4py is imported on the ranks only)
    topo: topology.Topology      # stage, replica, pipeline and data communicators
    pipeline: Pipeline
    stages: dict[int, Stage]     # chunk -> Stage
    executor: Executor
    params: list
    names: dict                  # id(Parameter) -> name as nn.Sequential(*layers) gives it
    inputs: list | None          # per-microbatch input tuples (the first stage only)
    targets: list | None         # per-microbatch targets (the loss stage only)
    dp_reducer: GradientReducer
    tie_reducers: list[GradientReducer]
    communicators: list
    ranges: list
    layer_costs: list | None
    predicted: list | None
    tied: list
    device: torch.device
    layers: dict                 # global layer index -> module, the layers this rank holds (for checkpoints)
    first_step: int              # 0, or the step a resumed run continues from
    data: batches.PerStep | None = None      # when the factory gives a batch per step
    optimizer: optim.SGD | optim.AdamW | None = None      # over this rank's parameters
    scaler: precision.LossScaler | precision.NoScaler | None = None   # LossScaler in float16
    state_names: set | None = None   # a whole module's state_dict names (what a checkpoint keeps), else None


def set_up(comm, cfg: RunConfig, prepared: Prepared | None = None) -> RankRun:
    from pipeline_ref.engine.message import Messenger, check_tag_range
    from pipeline_ref.engine.mpi_transport import MPITransport
    from pipeline_ref.engine.torch_transport import open_transport

    watchdog.beat("checking the configuration")
    layers, loss_fn, batch, schedule = prepared or preflight(cfg, comm.Get_size())
    inputs, targets = batch                   # step 0's, when the factory gives a batch per step
    pipe = schedule.pipeline                  # num_stages, chunks per rank, and where each chunk sits
    # one GPU per rank: the launcher's local rank
    m, device = cfg.microbatches, device_for_rank(cfg.device, comm)
    per_replica = inputs.shape[0] // cfg.dp   # each replica trains on its own slice of the batch
    watchdog.beat(f"choosing the {cfg.partition} partition")
    state_names = set(layers.state_dict()) if cut.split.is_whole_module(layers) else None   # checkpoints
    # module: traced
    model = cut.cut(comm, cfg, layers, loss_fn, inputs[:per_replica // m].to(device), pipe, device)
    layers, ranges, costs = model.layers, model.ranges, model.costs     # pieces (split.py) or the layers
    watchdog.beat("splitting the ranks into pipeline and data communicators")
    topo = topology.split(comm, cfg.pp, cfg.dp)
    watchdog.locate(f"stage {topo.stage}, replica {topo.replica}" if cfg.dp > 1 else "")   # in its reports
    rank = topo.stage
    transport = (open_transport(comm, topo, schedule, device, cfg.stall_timeout,
                                cfg.schedule) if cfg.transport == "torch"
                 else MPITransport(topo.pipeline, sync_sends=cfg.sync_sends))
    check_tag_range(transport, schedule.num_microbatches, pipe.num_chunks)   # PipeDream: steps x m

    stages = _stages(cfg, model, schedule, rank, device)
    params = list({id(p): p for s in stages.values() for p in s.parameters()}.values())
    held = {i: layers[i] for c in range(pipe.num_chunks) for i in ranges[pipe.virtual_stage(rank, c)]}
    names = model.names    # as nn.Sequential(*layers), or the whole module, names them: as on one device

    micro_inputs, micro_targets = batches.microbatches(batch, cfg, topo, pipe, device)
    sample = micro_inputs[0] if rank == 0 else (torch.empty(0, device=device),)

    watchdog.beat("agreeing on tensor shapes with the neighbouring stages")
    in_specs, out_specs = agree_specs(transport, stages, pipe, rank, sample)
    executor = Executor(stages,
                        topology.by_world_rank(plan(schedule[rank], pipe, rank, in_specs, out_specs), topo),
                        Messenger(transport, device), rank, device, skip_nonfinite=cfg.skips_nonfinite)

    # Reducers: replicas of this stage (average), then the stages sharing a tied weight (sum).
    dp_reducer = GradientReducer(topo.data, params, average=True)
    tie_reducers = _tie_reducers(comm, topo, model.tied, {names[id(p)]: p for p in params})
    communicators = [topo.pipeline, topo.data] + [r.comm for r in tie_reducers]
    run = RankRun(cfg=cfg, comm=comm, topo=topo, pipeline=pipe, stages=stages, executor=executor,
                  params=params, names=names, inputs=micro_inputs, targets=micro_targets,
                  dp_reducer=dp_reducer, tie_reducers=tie_reducers,
                  # a torch transport's Free() ends its process group
                  communicators=communicators + ([transport] if cfg.transport == "torch" else []),
                  ranges=ranges, layer_costs=costs, tied=model.tied, device=device, layers=held, first_step=0,
                  predicted=partition.stage_costs(costs, ranges) if costs else None,
                  data=batch if isinstance(batch, batches.PerStep) else None,
                  optimizer=optim.make(cfg.optimizer, params, cfg.lr),
                  scaler=precision.scaler_for(cfg.autocast), state_names=state_names)
    if cfg.resume_from:
        run_checkpoint.resume(run)
    return run



def _stages(cfg: RunConfig, model, schedule, rank: int, device) -> dict:
    """chunk -> Stage: the pieces of each virtual stage this rank holds, sharing one stash meter."""
    pipe, meter, stages = schedule.pipeline, StashMeter(), {}   # the rank's stash, over all its chunks
    for chunk in range(pipe.num_chunks):
        piece = model.ranges[pipe.virtual_stage(rank, chunk)]
        stages[chunk] = Stage(model.chunk(*model.layers[piece.start:piece.stop]).to(device),
                              pipe.is_first(rank, chunk), pipe.is_last(rank, chunk), model.loss_fn,
                              cfg.microbatches, recompute=cfg.checkpoint,
                              split_backward=schedule.splits_backward, meter=meter)
        stages[chunk].precision = precision.autocast(cfg.autocast, device)
    return stages


def _tie_reducers(comm, topo, tied: list, by_name: dict) -> list:
    """A sum over the stages holding each tied weight (Split is collective: every rank takes part in each)."""
    from mpi4py import MPI
    reducers = []
    for name, holders in tied:
        member = topo.stage in holders
        tie_comm = comm.Split(topo.replica if member else MPI.UNDEFINED, topo.stage)
        if member:
            reducers.append(GradientReducer(tie_comm, [by_name[name]], average=False))
    return reducers

def train_step(run: RankRun, step: int) -> RankReport:
    """One step on this rank: the schedule, then the all-reduces. Returns this rank's report of it."""
    cfg, rank = run.cfg, run.topo.stage
    # a batch per step (real text): this step's, same shapes as step 0's
    if run.data is not None:
        run.inputs, run.targets = batches.microbatches(run.data.at(step), cfg, run.topo, run.pipeline,
                                                      run.device)
    for stage in run.stages.values():         # float16: the loss scaled up by the agreed scale
        stage.loss_scale = run.scaler.scale / cfg.microbatches
    watchdog.beat(f"waiting for the other ranks before step {step}")
    run.comm.Barrier()
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)     # the trace reports this step's peak
    meter = next(iter(run.stages.values())).meter
    meter.reset_peaks()
    began = time.perf_counter()
    early = run.dp_reducer.start if cfg.overlap_allreduce else None   # the all-reduce after the last B
    events, waits = run.executor.run(run.inputs, run.targets, step, t0=began, after_last_backward=early)
    found = run.executor.found_nonfinite or _nonfinite_gradients(run, step)
    skip = False
    if cfg.skips_nonfinite:
        # Every rank of every replica must make the same choice, or the next collective would hang: reduce it.
        watchdog.beat(f"step {step}: agreeing whether to skip the step")
        from mpi4py import MPI
        skip = bool(run.comm.allreduce(int(found is not None), op=MPI.MAX))
    watchdog.beat(f"step {step}: all-reducing gradients")
    reduce_start = time.perf_counter()
    if cfg.overlap_allreduce:
        run.dp_reducer.wait()
    elif not skip:
        run.dp_reducer.allreduce()
    for reducer in run.tie_reducers if not skip else ():
        reducer.allreduce()
    if cfg.dp > 1 or run.tie_reducers:
        waits.append(Wait(rank, "all-reduce gradients", reduce_start - began, time.perf_counter() - began))
    losses = [loss for s in run.stages.values() for loss in s.losses]
    first = cfg.collect_grads and step == run.first_step and run.topo.replica == 0
    return RankReport(events=events, waits=waits, peak=meter.peak_count,
                      memory=rank_memory(run.params, meter, run.device, run.optimizer),
                      rss=machine.resident_bytes(),
                      loss=torch.stack(losses).mean().item() if losses else None,
                      grads={run.names[id(p)]: p.grad.detach().cpu().clone() for p in run.params
                             if p.grad is not None} if first else None, skip=skip, nonfinite=found)


def _nonfinite_gradients(run: RankRun, step: int) -> str | None:
    """The weight gradients, checked once per step (the executor checks what crosses a boundary)."""
    kind = nonfinite(p.grad for p in run.params)
    if kind is None:
        return None
    message = f"rank {run.topo.stage}: a weight gradient is {kind} after the backward of step {step}"
    if not run.cfg.skips_nonfinite:
        raise NonFiniteError(message)
    return message



def run_rank(comm, cfg: RunConfig, prepared: Prepared | None = None) -> RunResult | None:
    """Every rank's whole run; world rank 0 returns the RunResult. ``prepared``: the preflight this process
    already made (the command line under mpiexec), else the set-up makes it."""
    run = set_up(comm, cfg, prepared)
    if cfg.verbose and comm.Get_rank() == 0:
        _announce(run)
    if cfg.schedule in asynchronous.ASYNCHRONOUS:     # PipeDream, 2BW: one stream, updates after backwards
        return async_run.run_stream(run)
    losses, grads, seconds, utilization, gathered, skipped, rss = [], None, [], [], None, [], []
    for step in range(run.first_step, cfg.steps):
        report = train_step(run, step)
        if not report.skip:
            run.scaler.unscale(run.params)
            run.optimizer.step()
        run.scaler.update(skipped=report.skip)     # the same on every rank: the skip was agreed
        if cfg.checkpoint_dir and (step + 1) % cfg.checkpoint_every == 0:
            run_checkpoint.save(run, step + 1)
        if cfg.collect_params and step == cfg.steps - 1:
            report.params = {run.names[id(p)]: p.detach().cpu().clone() for p in run.params}
        watchdog.beat(f"gathering the results of step {step}")
        gathered = comm.gather(report, root=0)
        if comm.Get_rank() == 0:
            last_stages = [g.loss for g in gathered if g.loss is not None]
            losses.append(sum(last_stages) / len(last_stages))
            if report.skip:
                skipped.append(step)
                if cfg.verbose:
                    print(f"  step {step + 1}/{cfg.steps} skipped on every rank: "
                          + "; ".join(sorted({g.nonfinite for g in gathered if g.nonfinite})), flush=True)
            trace = measured_trace(gathered, cfg, run.pipeline.layout, run.device)
            seconds.append(trace.makespan)
            rss.append([g.rss for g in gathered])
            utilization.append(trace.utilization)
            if step == run.first_step and cfg.collect_grads:
                grads = {k: v for g in gathered if g.grads for k, v in g.grads.items()}
            if cfg.verbose:
                print(f"  step {step + 1}/{cfg.steps}  loss {losses[-1]:.6f}  {trace.makespan:.3f} s  "
                      f"utilization {trace.utilization:.3f}"
                      + ("  (warm-up)" if step == run.first_step and cfg.steps > 1 else ""),
                      flush=True)
    watchdog.beat("finished")
    for c in run.communicators:      # MPI has a limited number of them; run_many makes many runs
        c.Free()
    if comm.Get_rank() != 0:
        return None
    return RunResult(config=cfg, losses=losses, trace=trace, step_seconds=seconds,
                     step_utilization=utilization,
                     memory=[g.memory for g in gathered[:cfg.pp]], grads=grads,
                     params=[g.params for g in gathered] if cfg.collect_params else None,
                     partition=[(r.start, r.stop) for r in run.ranges], layer_costs=run.layer_costs,
                     predicted_stage_costs=run.predicted, tied=run.tied, skipped_steps=skipped,
                     first_step=run.first_step, step_rss=rss)


def _announce(run: RankRun) -> None:
    cfg, chunks = run.cfg, run.pipeline.num_chunks
    print(f"{cfg.schedule}: {cfg.pp} stages x {cfg.dp} replica(s), {cfg.microbatches} microbatches, "
          f"{cfg.steps} step(s), layers per {'virtual ' if chunks > 1 else ''}stage "
          f"{[len(r) for r in run.ranges]}"
          + (f", tied {[n for n, _ in run.tied]}" if run.tied else ""), flush=True)
    if run.predicted:
        print(f"  {cfg.partition} partition: predicted forward+backward per microbatch and stage "
              f"{[f'{1e3 * c:.2f} ms' for c in run.predicted]}", flush=True)


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

"""PipeDream and PipeDream-2BW on the ranks: one stream of steps x m microbatches through the ordinary
executor.

``train.run_rank`` sets a run up as for any schedule (partition, grid, stages, shapes) and hands an
asynchronous one to :func:`run_stream`, which

1. gives each Stage a weight store (``weight_versions.py``) that follows the schedule's rule
   (``asynchronous.py``): the version each forward uses, the stashed one for its backward, the SGD update
   after a backward; and sets the loss scale (PipeDream: each microbatch's own mean loss; 2BW: 1/m);
2. plays the whole run as *one* call of the executor, over the schedule of steps x m microbatches
   (microbatch j of the stream is microbatch j % m of the batch): no flush, no step boundary, no
   all-reduce, the pipeline drains once, at the end;
3. logs the run in a :class:`~pipeline_ref.results.StepLog`, from which ``train.run_rank`` makes the
   RunResult as for a synchronous run: the mean loss of each
   step's m microbatches, and "step" t's time from the end of step t - 1's last backward on rank 0 to the
   end of its own there (the utilization of that window beside it). The trace is the whole run; its
   ``meta.weight_versions`` says how many versions each rank held at most, and
   ``meta.weight_version_bytes`` what they took.

    python -m pipeline_ref run --schedule pipedream --pp 4 --microbatches 4 --steps 8 -n 4 --save-params p.pt
"""
from __future__ import annotations

import time
from functools import partial


from pipeline_ref.engine import machine
from pipeline_ref.faults import watchdog
from pipeline_ref.models.batches import microbatches
from pipeline_ref.schedules import asynchronous
from pipeline_ref.results import Memory, RankReport, StepLog, measured_trace, rank_memory
from pipeline_ref.sim.trace import Trace
from pipeline_ref.engine.weight_versions import WeightVersions


def _rule(cfg, stage: int):
    """(forward_version(j, current), updates_after(j)) of stage ``stage`` under cfg's schedule."""
    if cfg.schedule == "pipedream":
        forward = lambda microbatch, current: current          # whatever is current: max(0, j - (p - s - 1))
    else:
        forward = lambda microbatch, current: asynchronous.forward_version(cfg.schedule, stage, cfg.pp,
                                                                           cfg.microbatches, microbatch)
    return forward, partial(asynchronous.updates_after, cfg.schedule, cfg.microbatches)


def attach_versions(run) -> list[WeightVersions]:
    """A weight store on each of this rank's stages; returns them."""
    cfg, rank = run.cfg, run.place.topo.stage
    stores = []
    for chunk, stage in run.model.stages.items():
        forward, updates = _rule(cfg, run.place.pipeline.virtual_stage(rank, chunk))
        stage.loss_scale = asynchronous.loss_scale(cfg.schedule, cfg.microbatches)
        stage.weights = WeightVersions(list(stage.parameters()), forward, updates, cfg.lr,
                                       num_forwards=cfg.steps * cfg.microbatches, where=f"rank {rank}")
        stores.append(stage.weights)
    return stores


def _stream_data(run) -> tuple[list | None, list | None]:
    """This rank's inputs and targets of each microbatch j of the stream: microbatch j % m of step j // m's
    batch."""
    cfg, m, data, place = run.cfg, run.cfg.microbatches, run.data, run.place
    if data.source is None:                           # the same batch at every step
        per_step = [(data.inputs, data.targets)] * cfg.steps
    else:                                             # a batch per step (real text): each step's own
        per_step = [microbatches(data.source.at(t), cfg, place.topo, place.pipeline, place.device)
                    for t in range(cfg.steps)]
    def pick(k):
        return None if per_step[0][k] is None else [per_step[j // m][k][j % m] for j in range(cfg.steps * m)]
    return pick(0), pick(1)


def run_stream(run) -> tuple[StepLog, list | None]:
    """The whole stream on this rank; world rank 0's log of it and every rank's report (None elsewhere)."""
    cfg, comm, model, device = run.cfg, run.place.comm, run.model, run.place.device
    stores = attach_versions(run)
    inputs, targets = _stream_data(run)
    meter = next(iter(model.stages.values())).meter
    meter.reset_peaks()
    watchdog.beat("waiting for the other ranks before the stream")
    comm.Barrier()
    began = time.perf_counter()
    events, waits = run.executor.run(inputs, targets, 0, t0=began)
    for store in stores:
        store.finish()
    memory = rank_memory(model.params, meter, device)
    report = RankReport(events=events, waits=waits, peak=meter.peak_count, rss=machine.resident_bytes(),
                        memory=Memory(memory.parameters, 0, 0, memory.peak_stashed_bytes, memory.device_peak),
                        losses=[loss.item() for s in model.stages.values() for loss in s.losses],
                        versions=max(s.peak for s in stores),
                        version_bytes=sum(s.peak * s.version_bytes for s in stores),
                        params={model.names[id(p)]: p.detach().cpu().clone() for p in model.params}
                        if cfg.collect_params else None)
    watchdog.beat("gathering the results of the stream")
    gathered = comm.gather(report, root=0)
    return (_log(run, gathered) if comm.Get_rank() == 0 else StepLog()), gathered


def _log(run, gathered: list) -> StepLog:
    """The stream as steps: each step's mean loss, and its window of the one trace."""
    cfg = run.cfg
    m = cfg.microbatches
    losses = next(g.losses for g in gathered if g.losses)
    trace = measured_trace(gathered, cfg, run.place.pipeline.layout, run.place.device,
                           num_microbatches=cfg.steps * m, steps=cfg.steps,
                           weight_versions=[g.versions for g in gathered],
                           weight_version_bytes=[g.version_bytes for g in gathered])
    seconds, utilization = step_windows(trace, cfg.steps, m)
    return StepLog(losses=[sum(losses[t * m:(t + 1) * m]) / m for t in range(cfg.steps)], seconds=seconds,
                   utilization=utilization, rss=[[g.rss for g in gathered]], trace=trace)


def step_windows(trace: Trace, steps: int, num_microbatches: int) -> tuple[list[float], list[float]]:
    """Each step's seconds and utilization, in a stream without step boundaries.

    Step t ends when rank 0 finishes the backward of its last microbatch (the last action that
    microbatch needs anywhere); its window starts where step t - 1's ended (step 0's at 0).
    """
    ends = {e.microbatch: e.end for e in trace.events if e.rank == 0 and e.op == "B"}
    bounds = [0.0] + [ends[(t + 1) * num_microbatches - 1] for t in range(steps)]
    seconds, utilization = [], []
    for start, end in zip(bounds, bounds[1:]):
        busy = sum(max(0.0, min(e.end, end) - max(e.start, start)) for e in trace.events)
        seconds.append(end - start)
        utilization.append(busy / (trace.num_ranks * (end - start)) if end > start else 0.0)
    return seconds, utilization

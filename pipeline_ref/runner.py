"""One pipelined (and data-parallel) training run on this rank: set up, play N steps, gather results.

``run_rank(comm, cfg)`` is what every rank calls, whoever started the ranks
(``launch.py`` from Python, or ``mpiexec``/``srun`` on a cluster). Everything
that can be refused is refused before the first message (``config.py``).

A step: the pipeline plays the schedule (``executor.py``) inside this replica's
pipeline communicator; then gradients are averaged over the data communicator
(replicas of the same stage) and summed over the stages that share a tied
weight (``reduce.py``); then plain SGD. World rank 0 returns the gathered result,
the others None:

    {"config", "losses": [mean loss per step], "grads": {name: tensor} (first step, if
     cfg.collect_grads), "params": [per world rank {name: tensor}] (after the last step,
     if cfg.collect_params), "trace": replica 0's Trace of the last step, "partition",
     "layer_costs" and "predicted_stage_costs" (seconds, with cfg.partition == "time"), "tied"}

``run_many(comm, configs)`` plays several runs one after another on the first
pp x dp ranks of ``comm``: one ``mpiexec`` for a whole test matrix or demo, since
starting ranks (``import torch``) costs seconds and a step of a toy model milliseconds.
"""
from __future__ import annotations

import os
import time

import torch
from torch import nn

from . import partition, schedules
from .config import RunConfig, preflight
from .trace import Trace, Wait


def _device(cfg: RunConfig) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    # One GPU per rank on a node: the launcher tells each rank its place on the node.
    local = next((int(os.environ[k]) for k in ("MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")
                  if k in os.environ), 0)
    return torch.device("cuda", local % torch.cuda.device_count())


def run_rank(comm, cfg: RunConfig) -> dict | None:
    from mpi4py import MPI
    from . import topology, watchdog
    from .comm import Messenger, check_tag_range
    from .executor import Executor, agree_specs
    from .reduce import GradientReducer, tied_groups
    from .stage import Stage

    num_stages, m = cfg.pp, cfg.microbatches
    watchdog.beat("checking the configuration")
    layers, loss_fn, (inputs, targets), schedule = preflight(cfg, comm.Get_size())
    chunks = schedules.num_chunks(schedule)         # model chunks per rank (interleaved, ZB-V: more than one)
    layout = schedules.layout_of(schedule)          # which virtual stage each chunk holds
    split_backward = schedules.splits_backward(schedule)
    device = _device(cfg)
    per_replica = inputs.shape[0] // cfg.dp          # each replica trains on its own slice of the batch
    watchdog.beat(f"choosing the {cfg.partition} partition")
    ranges, costs = choose_partition(comm, cfg, layers, inputs[:per_replica // m].to(device),
                                     num_pieces=num_stages * chunks)
    predicted = partition.stage_costs(costs, ranges) if costs else None

    watchdog.beat("splitting the ranks into pipeline and data communicators")
    topo = topology.split(comm, cfg.pp, cfg.dp)
    pipe, rank = topo.pipeline, topo.stage
    check_tag_range(pipe, m, chunks)

    # Names as torch.nn.Sequential(*layers) gives them, so anyone can compare with one device.
    names = {id(p): n for n, p in nn.Sequential(*layers).named_parameters()}
    # Chunk c of this rank is virtual stage c * num_stages + rank (one chunk unless interleaved), or in a V.
    mine_v = [schedules.virtual_stage(rank, c, num_stages, layout) for c in range(chunks)]
    last_v = num_stages * chunks - 1
    loss_rank = schedules.rank_of(last_v, num_stages, layout)[0]     # holds the last stage: needs the targets
    modules = [nn.Sequential(*layers[ranges[v].start:ranges[v].stop]).to(device) for v in mine_v]
    stage = Stage(modules, [v == 0 for v in mine_v], [v == last_v for v in mine_v], loss_fn, m,
                  recompute=cfg.checkpoint, split_backward=split_backward)
    params = list(stage.parameters())
    by_name = {names[id(p)]: p for p in params}

    mine = slice(topo.replica * per_replica, (topo.replica + 1) * per_replica)
    micro_inputs = [x.to(device) for x in inputs[mine].tensor_split(m)] if rank == 0 else None
    micro_targets = [t.to(device) for t in targets[mine].tensor_split(m)] if rank == loss_rank else None
    sample = micro_inputs[0] if rank == 0 else torch.empty(0, device=device)

    watchdog.beat("agreeing on tensor shapes with the neighbouring stages")
    in_specs, out_specs = agree_specs(pipe, stage, rank, num_stages, chunks, sample, layout)
    executor = Executor(stage, schedule[rank], Messenger(pipe, sync_sends=cfg.sync_sends), rank,
                        num_stages, chunks, m, in_specs, out_specs, device, layout=layout)

    # Reducers: replicas of this stage (average), then the stages sharing a tied weight (sum).
    dp_reducer = GradientReducer(topo.data, params, average=True)
    tied = tied_groups(layers, ranges, num_stages, layout)
    tie_reducers = []
    for name, holders in tied:            # Split is collective: every rank takes part in each
        member = rank in holders
        tie_comm = comm.Split(topo.replica if member else MPI.UNDEFINED, rank)
        if member:
            tie_reducers.append(GradientReducer(tie_comm, [by_name[name]], average=False))
    communicators = [topo.pipeline, topo.data] + [r.comm for r in tie_reducers]

    if cfg.verbose and comm.Get_rank() == 0:
        print(f"{cfg.schedule}: {num_stages} stages x {cfg.dp} replica(s), {m} microbatches, {cfg.steps} "
              f"step(s), layers per {'virtual ' if chunks > 1 else ''}stage {[len(r) for r in ranges]}"
              + (f", tied {[n for n, _ in tied]}" if tied else ""), flush=True)
        if predicted:
            print(f"  {cfg.partition} partition: predicted forward+backward per microbatch and stage "
                  f"{[f'{1e3 * c:.2f} ms' for c in predicted]}", flush=True)
    losses, grads, gathered = [], None, None
    for step in range(cfg.steps):
        watchdog.beat(f"waiting for the other ranks before step {step}")
        comm.Barrier()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)     # the trace reports this step's peak
        began = time.perf_counter()
        events, waits = executor.run(micro_inputs, micro_targets, step, t0=began,
                                     after_last_backward=dp_reducer.start if cfg.overlap_allreduce else None)
        watchdog.beat(f"step {step}: all-reducing gradients")
        reduce_start = time.perf_counter()
        if cfg.overlap_allreduce:
            dp_reducer.wait()
        else:
            dp_reducer.allreduce()
        for reducer in tie_reducers:
            reducer.allreduce()
        if cfg.dp > 1 or tie_reducers:
            waits.append(Wait(rank, "all-reduce gradients", reduce_start - began, time.perf_counter() - began))
        report = {
            "loss": torch.stack(stage.losses).mean().item() if stage.losses else None,
            "grads": ({names[id(p)]: p.grad.detach().cpu().clone() for p in params if p.grad is not None}
                      if cfg.collect_grads and step == 0 and topo.replica == 0 else None),
            "events": events, "waits": waits,
            "peak": stage.peak_stashed, "peak_bytes": stage.peak_stashed_bytes,
            "memory": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        }
        with torch.no_grad():          # plain SGD, written out: nothing to import, nothing hidden
            for p in params:
                if p.grad is not None:
                    p -= cfg.lr * p.grad
        if cfg.collect_params and step == cfg.steps - 1:
            report["params"] = {names[id(p)]: p.detach().cpu().clone() for p in params}
        watchdog.beat(f"gathering the results of step {step}")
        gathered = comm.gather(report, root=0)
        if comm.Get_rank() == 0:
            last_stages = [g["loss"] for g in gathered if g["loss"] is not None]
            losses.append(sum(last_stages) / len(last_stages))
            if step == 0 and cfg.collect_grads:
                grads = {k: v for g in gathered if g["grads"] for k, v in g["grads"].items()}
            if cfg.verbose:
                print(f"  step {step + 1}/{cfg.steps}  loss {losses[-1]:.6f}  "
                      f"{time.perf_counter() - began:.3f} s", flush=True)
    watchdog.beat("finished")
    for c in communicators:      # MPI has a limited number of them; run_many makes many runs
        c.Free()
    if comm.Get_rank() != 0:
        return None
    replica0 = gathered[:num_stages]
    memory = [g["memory"] for g in replica0]
    trace = Trace(num_ranks=num_stages,
                  events=[e for g in replica0 for e in g["events"]],
                  waits=[w for g in replica0 for w in g["waits"]],
                  peak_stashed=[g["peak"] for g in replica0],
                  peak_stashed_bytes=[g["peak_bytes"] for g in replica0],
                  peak_memory_bytes=memory if None not in memory else None,
                  meta={"source": "measured", "schedule": cfg.schedule, "num_stages": num_stages, "layout": layout,
                        "num_microbatches": m, "dp": cfg.dp, "device": str(device), "time_unit": "s"})
    return {"config": cfg.to_dict(), "losses": losses, "grads": grads, "trace": trace.to_dict(),
            "params": [g.get("params") for g in gathered] if cfg.collect_params else None,
            "partition": [(r.start, r.stop) for r in ranges], "predicted_stage_costs": predicted,
            "layer_costs": costs, "tied": tied}


def choose_partition(comm, cfg: RunConfig, layers, sample, num_pieces: int) -> tuple[list[range], list[float] | None]:
    """Layers -> ``num_pieces`` (virtual) stages, the same on every rank; with "time", also each layer's seconds.

    "time" profiles every layer once, on world rank 0, and broadcasts the costs:
    every rank must cut the model at the same places, and timings differ between ranks.
    """
    if cfg.partition == "uniform":
        return partition.uniform(len(layers), num_pieces), None
    if cfg.partition == "parameters":
        return partition.by_parameters(layers, num_pieces), None
    from .profiling import layer_costs
    costs = layer_costs(layers, sample) if comm.Get_rank() == 0 else None
    wait_quietly(comm)                 # the others sleep while rank 0 profiles, instead of spinning
    costs = comm.bcast(costs, root=0)
    return partition.by_cost(costs, num_pieces), costs


def wait_quietly(comm, poll: float = 0.0005) -> None:
    """A barrier that sleeps between polls. MPICH's blocking calls spin on a core; a rank idling in
    one would slow down the ranks that work when they share cores (a laptop, this course's CI)."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll)


def run_many(comm, configs: list[RunConfig]) -> list[dict | None]:
    """Each run on the first pp x dp ranks of ``comm``; the rest wait. Results as rank 0 of ``comm`` sees them."""
    from mpi4py import MPI
    from . import watchdog
    results = []
    for index, cfg in enumerate(configs):
        # Ranks left out of a run wait here for as long as it takes: not a stall.
        watchdog.beat(f"waiting for run {index} ({cfg.schedule}, {cfg.world_size} ranks)", watched=False)
        wait_quietly(comm)
        color = 0 if comm.Get_rank() < cfg.world_size else MPI.UNDEFINED
        sub = comm.Split(color, comm.Get_rank())
        if sub != MPI.COMM_NULL:
            results.append(run_rank(sub, cfg))
            sub.Free()
        else:
            results.append(None)
    return results

"""One pipelined training run on this rank: set up, play the schedule for N steps, gather results.

``run_rank(comm, cfg)`` is what every rank calls, whoever started the ranks
(``launch.py`` from Python, or ``mpiexec``/``srun`` on a cluster). Everything
that can be refused is refused before the first message (``config.py``). Rank 0
returns the gathered result; the others return None:

    {"config": ..., "losses": [loss per step], "grads": {name: tensor} (first step,
     if cfg.collect_grads), "trace": Trace of the last step, "partition": [ranges]}

``run_many(comm, configs)`` plays several runs one after another on the first
pp x dp ranks of ``comm``: one ``mpiexec`` for a whole test matrix or demo, since
starting ranks (``import torch``) costs seconds and a step of a toy model milliseconds.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from . import partition, schedules
from .config import RunConfig, build_model, check_config, check_fits, check_ties
from .trace import Trace


def _device(cfg: RunConfig) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    import os   # one GPU per rank on a node: the launcher tells us our place on it
    local = int(os.environ.get("MPI_LOCALRANKID", os.environ.get("SLURM_LOCALID",
                os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))))
    return torch.device("cuda", local % torch.cuda.device_count())


def run_rank(comm, cfg: RunConfig) -> dict | None:
    from . import watchdog
    from .comm import Messenger, check_tag_range
    from .executor import Executor, agree_specs
    from .stage import Stage

    rank, num_stages, m = comm.Get_rank(), cfg.pp, cfg.microbatches
    watchdog.beat("checking the configuration")
    check_config(cfg, comm.Get_size())
    layers, loss_fn, (inputs, targets) = build_model(cfg)
    check_fits(cfg, len(layers), inputs.shape[0])
    ranges = partition.uniform(len(layers), num_stages)
    check_ties(layers, ranges)
    schedule = schedules.build(cfg.schedule, num_stages, m)
    schedules.validate(schedule)
    check_tag_range(comm, m, 1)

    # Names as torch.nn.Sequential(*layers) gives them, so anyone can compare with one device.
    names = {id(p): n for n, p in nn.Sequential(*layers).named_parameters()}
    device = _device(cfg)
    module = nn.Sequential(*layers[ranges[rank].start:ranges[rank].stop]).to(device)
    stage = Stage([module], [rank == 0], [rank == num_stages - 1], loss_fn, m)
    micro_inputs = [x.to(device) for x in inputs.tensor_split(m)] if rank == 0 else None
    micro_targets = [t.to(device) for t in targets.tensor_split(m)] if rank == num_stages - 1 else None
    sample = micro_inputs[0] if rank == 0 else torch.empty(0, device=device)

    watchdog.beat("agreeing on tensor shapes with the neighbouring stages")
    in_specs, out_specs = agree_specs(comm, stage, rank, num_stages, 1, sample)
    messenger = Messenger(comm, sync_sends=cfg.sync_sends)
    executor = Executor(stage, schedule[rank], messenger, rank, num_stages, 1, m,
                        in_specs, out_specs, device)
    params = list(stage.parameters())
    optimizer = torch.optim.SGD(params, lr=cfg.lr) if params else None

    if cfg.verbose and rank == 0:
        print(f"{cfg.schedule}: {num_stages} stages, {m} microbatches, {cfg.steps} step(s), "
              f"layers per stage {[len(r) for r in ranges]}", flush=True)
    losses, grads, gathered = [], None, None
    for step in range(cfg.steps):
        watchdog.beat(f"waiting for the other ranks before step {step}")
        comm.Barrier()
        began = time.perf_counter()
        events, waits = executor.run(micro_inputs, micro_targets, step)
        mine = {
            "loss": torch.stack(stage.losses).mean().item() if stage.losses else None,
            "grads": ({names[id(p)]: p.grad.detach().cpu().clone() for p in params if p.grad is not None}
                      if cfg.collect_grads and step == 0 else None),
            "events": events, "waits": waits,
            "peak": stage.peak_stashed, "peak_bytes": stage.peak_stashed_bytes,
        }
        if optimizer:
            optimizer.step()
        watchdog.beat(f"gathering the results of step {step}")
        gathered = comm.gather(mine, root=0)
        if rank == 0:
            loss = gathered[num_stages - 1]["loss"]
            losses.append(loss)
            if step == 0 and cfg.collect_grads:
                grads = {k: v for g in gathered for k, v in g["grads"].items()}
            if cfg.verbose:
                print(f"  step {step + 1}/{cfg.steps}  loss {loss:.6f}  "
                      f"{time.perf_counter() - began:.3f} s", flush=True)
    watchdog.beat("finished")
    if rank != 0:
        return None
    trace = Trace(num_ranks=num_stages,
                  events=[e for g in gathered for e in g["events"]],
                  waits=[w for g in gathered for w in g["waits"]],
                  peak_stashed=[g["peak"] for g in gathered],
                  peak_stashed_bytes=[g["peak_bytes"] for g in gathered],
                  meta={"source": "measured", "schedule": cfg.schedule, "num_stages": num_stages,
                        "num_microbatches": m, "device": str(device)})
    return {"config": cfg.to_dict(), "losses": losses, "grads": grads, "trace": trace.to_dict(),
            "partition": [(r.start, r.stop) for r in ranges]}


def run_many(comm, configs: list[RunConfig]) -> list[dict | None]:
    """Each run on the first pp x dp ranks of ``comm``; the rest wait. Results as rank 0 of ``comm`` sees them."""
    from mpi4py import MPI
    results = []
    for cfg in configs:
        color = 0 if comm.Get_rank() < cfg.world_size else MPI.UNDEFINED
        sub = comm.Split(color, comm.Get_rank())
        if sub != MPI.COMM_NULL:
            results.append(run_rank(sub, cfg))
            sub.Free()
        else:
            results.append(None)
    return results

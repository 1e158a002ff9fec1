"""One rank of torch.distributed.pipelining (ScheduleGPipe / Schedule1F1B) on pipeline_ref's model, for vs_torch.py.

vs_torch.py starts it with the same ``mpiexec`` that starts pipeline_ref's ranks (one thread per rank):

    mpiexec -n 2 .venv/bin/python benchmarks/torch_side.py --out DIR --runs '[["1f1b", 8, "float32", 2, 5]]' \\
        --depth 8 --width 1024 --batch 2048          # with MASTER_ADDR / MASTER_PORT set

Each rank takes its rank and the world size from PMI_RANK / PMI_SIZE (set by MPICH's
Hydra; also OMPI_COMM_WORLD_* or RANK / WORLD_SIZE) and joins a gloo process group.
A run is [schedule, microbatches, dtype, warm-up steps, timed steps]. The model is
built exactly as pipeline_ref builds it (``preflight.build_model``: same seed, same
init, same data), split by ``partition.uniform``; each rank wraps its slice, an
``nn.Sequential``, in a manually built ``PipelineStage``. Loss scaling is the same as
pipeline_ref's: each microbatch's mean loss times 1/m, and ``scale_grads=False``,
so the accumulated gradients are those of the mean loss over the whole batch.

A timed step: zero the gradients, barrier, ``schedule.step(...)``; its time is the
slowest rank's. Then plain SGD (lr 0.05), as pipeline_ref does. A timed step during
which other processes used more than 5% of the machine (from /proc/stat, minus our
ranks' own CPU time) is not kept: the ranks sleep until the machine is idle and play
another (at most 10 times per run), unless ``--keep-disturbed`` (vs_torch.py's loaded
conditions, where the load is what is measured). Each rank writes
DIR/torch_rank<r>.pt: [{"schedule", "microbatches", "dtype", "step_s": [...],
"loss": mean loss of the first step (last rank), "grads": {name: tensor} of the
first step, named as nn.Sequential(*layers).named_parameters() names them}].
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from pipeline_ref.front import partition
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}
REPLAY_DISTURBED = True     # --keep-disturbed: measure under load (vs_torch.py's conditions), replay nothing


def _rank_and_size() -> tuple[int, int]:
    for rank_key, size_key in (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                               ("RANK", "WORLD_SIZE")):
        if rank_key in os.environ:
            return int(os.environ[rank_key]), int(os.environ[size_key])
    raise RuntimeError("start this under mpiexec (PMI_RANK/PMI_SIZE) or torchrun (RANK/WORLD_SIZE)")


def one_run(rank: int, world: int, schedule_name: str, m: int, dtype: str, warmup: int, steps: int,
            model_kwargs: dict) -> dict:
    cfg = RunConfig(schedule=schedule_name, pp=world, microbatches=m, model="mlp", model_kwargs=model_kwargs,
                    dtype=dtype)
    layers, loss_fn, (inputs, targets) = build_model(cfg)
    mine = partition.uniform(len(layers), world)[rank]
    module = nn.Sequential(*layers[mine.start:mine.stop])
    # Global names, as pipeline_ref saves them: local "1.0.weight" of a slice starting at layer 4 is "5.0.weight".
    names = {id(p): f"{mine.start + int(n.split('.', 1)[0])}.{n.split('.', 1)[1]}"
             for n, p in module.named_parameters()}
    stage = PipelineStage(module, rank, world, torch.device("cpu"))
    scale = 1.0 / m

    def scaled_loss(output, target):            # pipeline_ref's Stage: loss * (1 / num_microbatches)
        return loss_fn(output, target) * scale

    schedule = SCHEDULES[schedule_name](stage, n_microbatches=m, loss_fn=scaled_loss, scale_grads=False)
    optimizer = torch.optim.SGD(module.parameters(), lr=cfg.lr)
    times, grads, loss, step, replayed = [], None, None, 0, 0
    while len(times) < steps:
        module.zero_grad(set_to_none=True)
        losses: list = []
        dist.barrier()
        machine, cpu, began = _cpu_times(), time.process_time(), time.perf_counter()
        if rank == 0:
            schedule.step(inputs)
        elif rank == world - 1:
            schedule.step(target=targets, losses=losses)
        else:
            schedule.step()
        # [slowest rank's time, CPU time of all our ranks]: the step ends when its slowest rank is done.
        took = torch.tensor([time.perf_counter() - began, time.process_time() - cpu], dtype=torch.float64)
        dist.all_reduce(took[:1], op=dist.ReduceOp.MAX)
        dist.all_reduce(took[1:], op=dist.ReduceOp.SUM)
        if step == 0:
            grads = {names[id(p)]: p.grad.detach().clone() for p in module.parameters() if p.grad is not None}
            loss = float(sum(x.item() for x in losses)) if losses else None   # sum of loss/m = mean loss
        optimizer.step()
        step += 1
        if step <= warmup:
            continue
        # Gloo sleeps while it waits, so CPU share says nothing here; instead: did anyone else use the machine?
        disturbed = torch.tensor([REPLAY_DISTURBED and replayed < 10
                                  and _others_share(machine, _cpu_times(), took[1].item()) > 0.05])
        dist.broadcast(disturbed, src=0)
        if disturbed.item():
            replayed += 1
            _wait_until_quiet(rank)
        else:
            times.append(took[0].item())
    return {"schedule": schedule_name, "microbatches": m, "dtype": dtype, "step_s": times, "loss": loss,
            "grads": grads, "replayed": replayed}


def _cpu_times() -> tuple[int, int]:
    """(all, idle + iowait) CPU jiffies of the whole machine since boot (Linux)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


def _others_share(before, after, our_cpu_s: float) -> float:
    """Share of the machine's CPU time used by other processes between two _cpu_times() (0 if too short to tell)."""
    total, idle = after[0] - before[0], after[1] - before[1]
    tick = os.sysconf("SC_CLK_TCK")
    if total < 20:                          # a few clock ticks: too coarse to say anything
        return 0.0
    return max(0.0, (total - idle) / tick - our_cpu_s) / max(total / tick, 1e-9)


def _wait_until_quiet(rank: int, limit: float = 600, window: float = 2.0) -> None:
    """All ranks sleep until others use < 10% of the machine (or ``limit`` s passed)."""
    deadline = time.monotonic() + limit
    while True:
        before = _cpu_times()
        time.sleep(window)
        quiet = torch.tensor([_others_share(before, _cpu_times(), 0.0) < 0.1 or time.monotonic() > deadline])
        dist.broadcast(quiet, src=0)
        if quiet.item():
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", required=True, help="JSON list of [schedule, microbatches, dtype, warmup, steps]")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--keep-disturbed", action="store_true",
                        help="keep every timed step, also those another process disturbed (a load is the point)")
    args = parser.parse_args()
    global REPLAY_DISTURBED
    REPLAY_DISTURBED = not args.keep_disturbed
    torch.set_num_threads(1)
    rank, world = _rank_and_size()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = {"depth": args.depth, "width": args.width, "batch": args.batch}
    try:
        results = [one_run(rank, world, name, m, dtype, warmup, steps, model)
                   for name, m, dtype, warmup, steps in json.loads(args.runs)]
        torch.save(results, os.path.join(args.out, f"torch_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

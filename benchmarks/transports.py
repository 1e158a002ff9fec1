"""MPI against torch.distributed (gloo) as the pipeline's wire, side by side on local CPU ranks.

    .venv/bin/python benchmarks/transports.py [--repeats 3] [--out benchmarks/results/transports]

Two parts, both on 2 ranks, the two transports interleaved (A B A B ...) so that both see the same
machine, however busy it is:

1. **A message**: ping-pong of one boundary between the ranks through the Messenger (what the
   executor uses: pack, isend, irecv into a pooled buffer, wait), half a round trip, by size,
   from 64 B to 16 MiB: latency at the small end, bandwidth at the large end.
2. **A training step**: GPipe and 1F1B at p = 2, m = 8, on a communication-heavy MLP (width 256,
   microbatch 64: actions of ~0.1 ms, so messages weigh) and on the demo's compute-heavy one
   (width 1024: ~40 ms actions, messages vanish): median warm step and utilization.

Writes results.md into ``--out``, with the machine and its load before and after.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SIZES = [64, 1 << 10, 16 << 10, 256 << 10, 4 << 20, 16 << 20]
SMALL = {"depth": 8, "width": 256, "batch": 512}
DEMO = {"depth": 8, "width": 1024, "batch": 1024}


def pingpong_rank(comm, sizes, repeats: int, rounds: int):
    """Both transports, ``rounds`` times each, alternating; per size the median over rounds of the mean
    half round trip (seconds)."""
    import torch
    from pipeline_ref import schedules
    from pipeline_ref.engine import topology
    from pipeline_ref.engine.message import Messenger, TensorSpec
    from pipeline_ref.engine.mpi_transport import MPITransport
    from pipeline_ref.engine.torch_transport import open_transport
    topo = topology.grid(comm, 2, 1)
    mpi = MPITransport(topo.pipeline)
    gloo = open_transport(comm, topo, schedules.Schedule.of(schedules.build("1f1b", 2, 2)), torch.device("cpu"))
    me, peer = comm.Get_rank(), 1 - comm.Get_rank()
    times = {"mpi": {s: [] for s in sizes}, "torch": {s: [] for s in sizes}}
    for _ in range(rounds):
        for name, transport in (("mpi", mpi), ("torch", gloo)):
            messenger = Messenger(transport)
            for size in sizes:
                spec = (TensorSpec((size,), torch.uint8),)
                payload = (torch.ones(size, dtype=torch.uint8),)
                count = max(5, min(repeats, (64 << 20) // size))
                comm.Barrier()
                began = time.perf_counter()
                for i in range(count):
                    if me == 0:
                        messenger.isend(payload, peer, i)
                        messenger.finish_sends()
                        got = messenger.irecv(spec, peer, i)
                        got.wait()
                        messenger.release(got)
                    else:
                        got = messenger.irecv(spec, peer, i)
                        got.wait()
                        messenger.release(got)
                        messenger.isend(payload, peer, i)
                        messenger.finish_sends()
                times[name][size].append((time.perf_counter() - began) / count / 2)
    gloo.Free()
    return {name: {s: median(v) for s, v in by_size.items()} for name, by_size in times.items()} if me == 0 else None


def steps(repeats: int) -> list[dict]:
    from pipeline_ref.config import RunConfig
    from pipeline_ref.launch import launch
    configs = [RunConfig(schedule=s, pp=2, microbatches=8, steps=4, model="mlp", model_kwargs=model, transport=t)
               for _ in range(repeats) for name, model in (("small", SMALL), ("demo", DEMO))
               for s in ("gpipe", "1f1b") for t in ("mpi", "torch")]
    results = launch(2, "pipeline_ref.train:run_many", configs, timeout=1200, stall_timeout=300)[0]
    rows = {}
    for cfg, r in zip(configs, results):
        key = ("small" if cfg.model_kwargs == SMALL else "demo", cfg.schedule, cfg.transport)
        rows.setdefault(key, []).append((r.warm_step_seconds, r.warm_utilization))
    return [{"model": k[0], "schedule": k[1], "transport": k[2], "step_s": median(v[0] for v in vs),
             "utilization": median(v[1] for v in vs), "runs": len(vs)} for k, vs in rows.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each comparison (medians reported)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "transports")
    args = parser.parse_args(argv)
    from pipeline_ref.engine import machine
    from pipeline_ref.launch import launch
    info = machine.machine_info()
    print("part 1: ping-pong through the Messenger, MPI and gloo ...", flush=True)
    pings = launch(2, "transports:pingpong_rank", SIZES, 200, args.repeats, env={"PYTHONPATH": str(HERE)},
                   timeout=900, stall_timeout=300)[0]
    print("part 2: training steps ...", flush=True)
    rows = steps(args.repeats)
    import os
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    noisy = max(info["load_average"][0], info["load_average_after"][0]) > 0.5 * info["cores"] + 1
    lines = ["# MPI and torch.distributed (gloo) as the pipeline's transport, on CPU", "",
             machine.machine_markdown(info),
             "Both transports behind the same Messenger; the executor, the schedule and the model are the same. "
             "MPI is the `mpich` wheel (its shared-memory channel between local ranks); gloo goes over TCP on "
             "localhost. Rounds alternate MPI and gloo, and each number is the median of "
             f"{args.repeats} rounds." + (" **The machine was shared with other jobs during the run (load average "
             "above its cores), so these numbers are noisy**: compare the two columns of one row, measured "
             "together, rather than rows or runs. Small messages then take about a millisecond either way: that "
             "is the wait for a core, not the wire. MPICH spins on a core while it waits, gloo sleeps, which "
             "can favour gloo when ranks share cores with other jobs." if noisy else ""), "",
             "## 1. One message: half a ping-pong round trip through the Messenger", "",
             "| message | MPI | gloo | gloo / MPI | MPI bandwidth | gloo bandwidth |", "|---|---|---|---|---|---|"]
    for size in SIZES:
        a, b = pings["mpi"][size], pings["torch"][size]
        label = f"{size} B" if size < 1024 else f"{size >> 10} KiB" if size < 1 << 20 else f"{size >> 20} MiB"
        lines.append(f"| {label} | {a * 1e6:.1f} µs | {b * 1e6:.1f} µs | {b / a:.2f} | {size / a / 1e6:.1f} MB/s "
                     f"| {size / b / 1e6:.1f} MB/s |")
    lines += ["", "## 2. A training step at p = 2, m = 8 (median of the warm steps, then of the rounds)", "",
              "| model | schedule | MPI step | gloo step | gloo / MPI | MPI utilization | gloo utilization |",
              "|---|---|---|---|---|---|---|"]
    by = {(r["model"], r["schedule"], r["transport"]): r for r in rows}
    for model, kwargs in (("small", SMALL), ("demo", DEMO)):
        for schedule in ("gpipe", "1f1b"):
            a, b = by[(model, schedule, "mpi")], by[(model, schedule, "torch")]
            lines.append(f"| MLP width {kwargs['width']}, microbatch {kwargs['batch'] // 8} | {schedule} "
                         f"| {a['step_s'] * 1e3:.1f} ms | {b['step_s'] * 1e3:.1f} ms | {b['step_s'] / a['step_s']:.2f} "
                         f"| {a['utilization']:.3f} | {b['utilization']:.3f} |")
    lines += ["", "Written by `benchmarks/transports.py`.", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

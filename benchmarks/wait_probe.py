"""What a waiting rank costs its core: MPICH's Wait, pipeline_ref's yielding wait, and gloo's recv.

    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/wait_probe.py [--wait 0.3] [--kib 512] \\
        [--pingpongs 200]
        (vs_torch.py runs it in every condition and writes what rank 0 prints, one JSON line)

Rank 0 computes (matrix products) for ``--wait`` seconds, then sends a message of ``--kib`` KiB; rank 1 has
posted its receive and waits. Per way of waiting: rank 1's CPU time over the wait's wall time (1.0: it spun
on its core for the whole wait; near 0: it slept and left the core to others). Then the price of yielding
when nobody waits long: the mean round trip of ``--pingpongs`` messages of that size, there and back. MPICH and gloo both run here: MASTER_ADDR/MASTER_PORT as for torch_side.py.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from mpi4py import MPI

from pipeline_ref.engine import mpi_transport


def _compute(seconds: float) -> float:
    """Matrix products for about ``seconds`` of this core; returns the time they took."""
    a = torch.randn(256, 256)
    began = time.perf_counter()
    rounds = 0
    while time.perf_counter() - began < seconds:
        a = torch.tanh(a @ a)
        rounds += 1
    return time.perf_counter() - began


def one_wait(comm, way: str, seconds: float, buffer: torch.Tensor) -> dict:
    """Rank 0 works ``seconds`` then sends; rank 1 waits the way named: its CPU time over the wait's time."""
    rank = comm.Get_rank()
    comm.Barrier()
    if rank == 0:
        took = _compute(seconds)
        if way == "gloo recv":
            dist.send(buffer, dst=1)
        else:
            comm.Send([buffer.numpy(), MPI.BYTE], dest=1, tag=7)
        return {"sender_compute_s": took}
    wall, cpu = time.perf_counter(), time.process_time()
    if way == "gloo recv":
        dist.recv(buffer, src=0)
    else:
        request = comm.Irecv([buffer.numpy(), MPI.BYTE], source=0, tag=7)
        request.Wait() if way == "MPI Wait" else _yielding(request)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"waiter_cpu_per_wall": cpu / wall, "waited_s": wall}


def _yielding(request) -> None:
    saved, mpi_transport.WAIT = mpi_transport.WAIT, "yield"
    try:
        mpi_transport.wait_yielding(request)
    finally:
        mpi_transport.WAIT = saved


def pingpong(comm, way: str, count: int, buffer: torch.Tensor) -> float:
    """Mean round trip (s) of ``count`` messages there and back, the receiver ready and waiting."""
    rank, other = comm.Get_rank(), 1 - comm.Get_rank()
    view = [buffer.numpy(), MPI.BYTE]
    comm.Barrier()
    began = time.perf_counter()
    for i in range(count):
        if rank == 0:
            comm.Send(view, dest=other, tag=i)
        request = comm.Irecv(view, source=other, tag=i)
        request.Wait() if way == "MPI Wait" else _yielding(request)
        if rank == 1:
            comm.Send(view, dest=other, tag=i)
    return (time.perf_counter() - began) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wait", type=float, default=0.3, help="seconds rank 1 waits")
    parser.add_argument("--kib", type=int, default=512, help="message size")
    parser.add_argument("--pingpongs", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29519")
    dist.init_process_group("gloo", rank=comm.Get_rank(), world_size=comm.Get_size())
    buffer = torch.zeros(args.kib * 1024, dtype=torch.uint8)
    found = {}
    for way in ("MPI Wait", "yielding wait", "gloo recv"):
        one_wait(comm, way, 0.05, buffer)          # warm-up: connections, first touches
        parts = comm.allgather(one_wait(comm, way, args.wait, buffer))
        found[way] = {**parts[0], **parts[1]}
    for way in ("MPI Wait", "yielding wait"):
        pingpong(comm, way, 10, buffer)
        found[way]["round_trip_us"] = pingpong(comm, way, args.pingpongs, buffer) * 1e6
    if comm.Get_rank() == 0:
        print(json.dumps(found), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

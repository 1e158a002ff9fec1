"""Lesson 00, on the ranks: MPI point-to-point messages of torch tensors, deadlocks, communicators.

Each function runs on every rank through ``pipeline_ref.launch.launch(n, "lesson_code.l00_mpi:NAME", ...)``
and returns what that rank wants to show; the notebook gets one result per rank.

mpi4py has two families of calls. Lowercase ``send``/``recv`` pickle any Python object (handy for a
shape, slow for data). Uppercase ``Send``/``Recv`` move the raw bytes of a buffer (a numpy array; a CPU
tensor's ``.numpy()`` shares its memory), so the receiver must already hold a buffer of the right
shape and dtype: the two sides agree on it first.
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
from mpi4py import MPI

from pipeline_ref.faults import watchdog


def hello(comm):
    """Who am I? Every rank runs this same function; only its rank differs."""
    return {"rank": comm.Get_rank(), "size": comm.Get_size(), "pid": os.getpid(),
            "host": MPI.Get_processor_name()}


def send_tensor(comm):
    """Rank 0 sends a tensor to rank 1: first its shape and dtype (pickled), then its bytes (no copy)."""
    if comm.Get_rank() == 0:
        x = torch.arange(12, dtype=torch.float64).reshape(3, 4)
        comm.send((tuple(x.shape), x.dtype), dest=1, tag=0)   # small, pickled: what to expect
        comm.Send(x.numpy(), dest=1, tag=1)                   # the data: 12 float64 = 96 bytes
        return x
    shape, dtype = comm.recv(source=0, tag=0)
    x = torch.empty(shape, dtype=dtype)                       # a buffer of the agreed shape and dtype
    comm.Recv(x.numpy(), source=0, tag=1)
    return x


def send_tensor_wrong_dtype(comm):
    """The same 96 bytes, received into a float32 buffer of 24 elements: MPI checks sizes, not meaning."""
    if comm.Get_rank() == 0:
        x = torch.arange(12, dtype=torch.float64)
        comm.Send([x.numpy(), MPI.BYTE], dest=1)
        return x
    x = torch.empty(24, dtype=torch.float32)                 # 96 bytes too, but read as float32
    comm.Recv([x.numpy(), MPI.BYTE], source=0)
    return x


def ping_pong(comm, sizes, seconds_per_size: float = 0.05):
    """One-way time of a message of each size in bytes: half the fastest of many round trips 0 -> 1 -> 0.

    The fastest, not the mean: on a shared laptop anything else running slows some trips down, never up.
    """
    rank = comm.Get_rank()
    times = {}
    for size in sizes:
        buf = np.zeros(size, dtype=np.uint8)
        trips = []
        comm.Barrier()
        began = time.perf_counter()
        while True:
            t = time.perf_counter()
            if rank == 0:
                comm.Send(buf, dest=1)
                comm.Recv(buf, source=1)
            else:
                comm.Recv(buf, source=0)
                comm.Send(buf, dest=0)
            trips.append(time.perf_counter() - t)
            # Rank 0 decides when to stop, so both ranks make the same number of trips.
            done = comm.bcast(len(trips) >= 5 and time.perf_counter() - began > seconds_per_size, root=0)
            if done:
                break
        times[size] = min(trips[1:]) / 2                  # the first trip pays for setting up the path
    return times


def overlap(comm, nbytes: int = 16 * 2**20, reps: int = 5, work: int = 10):
    """Rank 0 sends ``nbytes`` to rank 1 while both compute; how long is the wait left at the end?

    Timed, median of ``reps``: the message alone (blocking Send/Recv); the computation alone; and
    Isend/Irecv posted before the computation and waited for after it, twice: once computing without
    touching MPI, once calling ``Test`` on the request between matrix products ("polling").
    """
    rank = comm.Get_rank()
    buf = np.ones(nbytes, dtype=np.uint8) if rank == 0 else np.empty(nbytes, dtype=np.uint8)
    a = torch.randn(512, 512)

    def compute(request=None):
        for _ in range(work):
            a @ a
            if request is not None:
                request.Test()

    rows = []
    for _ in range(reps + 1):                       # the first repetition warms up, and is dropped
        comm.Barrier()
        t = time.perf_counter()
        if rank == 0:
            comm.Send(buf, dest=1)
        else:
            comm.Recv(buf, source=0)
        message = time.perf_counter() - t
        comm.Barrier()
        t = time.perf_counter()
        compute()
        computation = time.perf_counter() - t
        row = {"message alone": message, "compute alone": computation}
        for poll in (False, True):
            comm.Barrier()
            t = time.perf_counter()
            request = comm.Isend(buf, dest=1) if rank == 0 else comm.Irecv(buf, source=0)
            posted = time.perf_counter() - t
            compute(request if poll else None)
            w = time.perf_counter()
            request.Wait()
            how = "polling" if poll else "no polling"
            row[f"in Isend/Irecv itself, {how}"] = posted
            row[f"wait after compute, {how}"] = time.perf_counter() - w
            row[f"whole exchange, {how}"] = time.perf_counter() - t
        rows.append(row)
    return {key: statistics.median(row[key] for row in rows[1:]) for key in rows[0]}


def both_send_first(comm, nbytes: int, synchronous: bool = False):
    """Both ranks Send to each other, then Recv: the textbook deadlock (unless MPI buffers the message)."""
    rank = comm.Get_rank()
    other = 1 - rank
    out = np.full(nbytes, rank, dtype=np.uint8)
    into = np.empty(nbytes, dtype=np.uint8)
    send = comm.Ssend if synchronous else comm.Send
    watchdog.beat(f"in {send.__name__} of {nbytes} bytes to rank {other}")    # what the time limit reports
    send(out, dest=other)
    watchdog.beat(f"in Recv from rank {other}")
    comm.Recv(into, source=other)
    return bool((into == other).all())


def exchange_sendrecv(comm, nbytes: int):
    """The fix, one call: Sendrecv lets MPI send and receive at once."""
    rank, other = comm.Get_rank(), 1 - comm.Get_rank()
    out = np.full(nbytes, rank, dtype=np.uint8)
    into = np.empty(nbytes, dtype=np.uint8)
    comm.Sendrecv(out, dest=other, recvbuf=into, source=other)
    return bool((into == other).all())


def exchange_nonblocking(comm, nbytes: int):
    """The fix, the way pipeline_ref does it: post the receive and the send, then wait for both."""
    rank, other = comm.Get_rank(), 1 - comm.Get_rank()
    out = np.full(nbytes, rank, dtype=np.uint8)
    into = np.empty(nbytes, dtype=np.uint8)
    requests = [comm.Irecv(into, source=other), comm.Isend(out, dest=other)]
    MPI.Request.Waitall(requests)
    return bool((into == other).all())


def fixes(comm, nbytes: int):
    return {"Sendrecv": exchange_sendrecv(comm, nbytes), "Isend/Irecv": exchange_nonblocking(comm, nbytes)}


def buffered_sizes(comm, sizes, patience: float = 0.05):
    """For each size: does a standard send complete before the receiver has posted its receive?

    Rank 0 starts an Isend and tests it for ``patience`` seconds while rank 1 is still waiting at a
    barrier; a send that completes anyway was copied into MPI's buffers (the "eager" protocol).
    """
    rank = comm.Get_rank()
    result = {}
    for size in sizes:
        buf = np.zeros(size, dtype=np.uint8)
        if rank == 0:
            request = comm.Isend(buf, dest=1)
            began = time.perf_counter()
            done = False
            while not done and time.perf_counter() - began < patience:
                done = request.Test()
            comm.Barrier()                    # only now does rank 1 post its receive
            request.Wait()
            result[size] = done
        else:
            comm.Barrier()
            comm.Recv(buf, source=0)
    return result


def small_messages(comm, nbytes: int, sizes):
    """The deadlock-prone code with a small message (it passes), then which sizes MPI buffers."""
    return {"both Send first": both_send_first(comm, nbytes), "buffered": buffered_sizes(comm, sizes)}


def split_grid(comm, pp: int = 2):
    """Split the world into pipelines (consecutive ranks) and data-parallel groups (same stage).

    ``Comm.Split(color, key)``: ranks with the same color land in one new communicator, ordered by key.
    Each rank then gathers the world ranks of both its groups (``allgather``), to show who talks to whom.
    """
    rank = comm.Get_rank()
    pipeline = comm.Split(color=rank // pp, key=rank)        # ranks 0,1 | 2,3 ...: one pipeline each
    data = comm.Split(color=rank % pp, key=rank)             # ranks 0,2 | 1,3 ...: the same stage
    out = {"world": rank, "pipeline": rank // pp, "stage": pipeline.Get_rank(),
           "data group": rank % pp, "replica": data.Get_rank(),
           "pipeline members": pipeline.allgather(rank), "data members": data.allgather(rank)}
    pipeline.Free()
    data.Free()
    return out

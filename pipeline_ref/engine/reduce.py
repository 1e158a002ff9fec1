"""All-reduce of gradients across ranks: data-parallel replicas, and stages sharing a tied weight.

Gradients are packed into a few flat buckets (``bucket_bytes`` each), so a step
sends a handful of large messages instead of one per parameter, as DDP does.
``start()`` posts the reductions without waiting (``Iallreduce``), so the runner
can begin a stage's all-reduce as soon as its last backward is done and let it
overlap the rest of the pipeline's cooldown; ``wait()`` finishes them and writes
the results back into ``.grad``.

Two uses, two communicators:
  * data parallel: the same stage in every replica, **averaged** (each replica's
    loss is a mean over its own slice of the batch);
  * tied weights: the stages of one replica that hold a copy of the same
    Parameter, **summed** (each copy received part of the gradient).
"""
from __future__ import annotations

import torch
from mpi4py import MPI

_MPI_TYPES = {torch.float32: MPI.FLOAT, torch.float64: MPI.DOUBLE}


class GradientReducer:
    def __init__(self, comm, params: list, average: bool, bucket_bytes: int = 4 << 20):
        self.comm, self.params, self.average = comm, params, average
        self.buckets: list[list] = []
        size = 0
        for p in params:
            if not self.buckets or size + p.numel() * p.element_size() > bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self._pending: list[tuple] = []

    def start(self) -> None:
        if self.comm.Get_size() == 1:
            return
        for bucket in self.buckets:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket]
            # The widest dtype of the bucket (mixed buckets lose nothing); bf16 has no MPI type.
            wire = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
            flat = torch.cat([g.detach().reshape(-1).to("cpu", wire) for g in grads])
            request = self.comm.Iallreduce(MPI.IN_PLACE, [flat.numpy(), _MPI_TYPES[wire]], op=MPI.SUM)
            self._pending.append((request, flat, bucket))

    def wait(self) -> None:
        for request, flat, bucket in self._pending:
            request.Wait()
            if self.average:
                flat /= self.comm.Get_size()
            offset = 0
            for p in bucket:
                value = flat[offset:offset + p.numel()].view_as(p).to(p.device, p.dtype)
                offset += p.numel()
                p.grad = value
        self._pending.clear()

    def allreduce(self) -> None:
        self.start()
        self.wait()


def tied_weight_reducers(comm, topo, tied: list, by_name: dict) -> list[GradientReducer]:
    """A sum over the stages of this replica holding each tied weight ``(name, pipeline ranks)``, for the ones
    this rank holds (``by_name``: its Parameters by name). ``Split`` is collective: every rank of ``comm``
    takes part in each, holder or not."""
    reducers = []
    for name, holders in tied:
        member = topo.stage in holders
        tie_comm = comm.Split(topo.replica if member else MPI.UNDEFINED, topo.stage)
        if member:
            reducers.append(GradientReducer(tie_comm, [by_name[name]], average=False))
    return reducers

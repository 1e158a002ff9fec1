"""The first wire: pipeline messages over MPI, the course's (``torch_transport.py`` is the second).

    transport = MPITransport(topo.pipeline, sync_sends=False)    # isend / irecv of byte buffers, with tags
    Messenger(transport, device)                                 # what the executor talks to (message.py)

A message to oneself goes through ``message.Loopback``, never through MPI. A wait polls and then sleeps
(``wait_yielding``), so a rank in a bubble gives its core to the ranks that compute. A CUDA-aware MPI
(``PIPELINE_REF_CUDA_AWARE=1``) is handed device memory; otherwise the Messenger stages through the host.

Layer: engine.
"""
from __future__ import annotations

import os
import time

import torch

from pipeline_ref.engine.message import Loopback, cuda_aware


class MPITransport:
    """Bytes between the ranks of one MPI communicator."""

    def __init__(self, comm, sync_sends: bool = False):
        from mpi4py import MPI
        self.comm, self.sync_sends = comm, sync_sends
        self._BYTE, self._memory = MPI.BYTE, MPI.buffer.fromaddress
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.max_tag = comm.Get_attr(MPI.TAG_UB)
        self.reads_device_memory = cuda_aware()   # else the Messenger stages GPU messages through the host
        self._loopback = Loopback()

    def _view(self, buffer: torch.Tensor):
        # CPU: the bytes at the tensor's address (no copy; the Messenger keeps the tensor alive until the
        # request completes), cheaper than a numpy view; CUDA (a CUDA-aware MPI): the tensor itself.
        if buffer.is_cuda:
            return [buffer, self._BYTE]
        return [self._memory(buffer.data_ptr(), buffer.numel() * buffer.element_size()), self._BYTE]

    def isend(self, buffer: torch.Tensor, dest: int, tag: int):
        if dest == self.rank:
            return self._loopback.send(buffer, tag)
        send = self.comm.Issend if self.sync_sends else self.comm.Isend
        return _MPIRequest(send(self._view(buffer), dest=dest, tag=tag))

    def irecv(self, buffer: torch.Tensor, source: int, tag: int):
        if source == self.rank:
            return self._loopback.recv(buffer, tag)
        return _MPIRequest(self.comm.Irecv(self._view(buffer), source=source, tag=tag))

    def send_object(self, obj, dest: int, tag: int) -> None:
        self.comm.send(obj, dest=dest, tag=tag)

    def recv_object(self, source: int, tag: int):
        return self.comm.recv(source=source, tag=tag)


# A rank that waits for a message gives its core to the ranks that compute (DESIGN.md). MPICH's Wait polls
# without ever sleeping: a rank in a bubble burns its core, and where processes outnumber cores (a laptop,
# a shared node, 4 ranks on 2 cores) that core was wanted by a rank that computes (benchmarks/README.md,
# "What load does"). So a wait polls with Test for SPIN_SECONDS (a message that is nearly there costs no
# sleep), then sleeps between Tests: an eighth of the time waited so far, within NAP_SECONDS, so a long wait
# wakes rarely and a message is noticed at most ~1/8 of its wait late. PIPELINE_REF_WAIT=spin restores
# MPI's own Wait (to measure the difference).
SPIN_SECONDS = 50e-6
NAP_SECONDS = (50e-6, 1e-3)
WAIT = os.environ.get("PIPELINE_REF_WAIT", "yield")


def wait_yielding(request) -> None:
    """Complete an MPI request, sleeping between polls once it has taken longer than SPIN_SECONDS."""
    if WAIT == "spin":
        request.Wait()
        return
    began = time.perf_counter()
    shortest, longest = NAP_SECONDS
    while not request.Test():
        waited = time.perf_counter() - began
        if waited > SPIN_SECONDS:
            time.sleep(min(longest, max(shortest, waited / 8)))


class _MPIRequest:
    __slots__ = ("request",)

    def __init__(self, request):
        self.request = request

    def test(self) -> bool:
        return self.request.Test()

    def wait(self) -> None:
        wait_yielding(self.request)

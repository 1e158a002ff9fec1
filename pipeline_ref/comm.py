"""Point-to-point messages of torch tensors over MPI, for the pipeline executor.

Every message is one tensor whose shape and dtype both sides agreed at set-up
(``executor.agree_specs``), so only raw bytes cross the wire: no pickling, no size
header, any dtype (bfloat16 included). CPU tensors are sent straight from their
memory (``tensor.numpy()`` shares it).

CUDA tensors: when the MPI library is CUDA-aware (say so with
``PIPELINE_REF_CUDA_AWARE=1``; MPICH and Open MPI builds differ and cannot be
asked portably), MPI reads device memory directly. Otherwise each message is
staged through pinned host memory: a send copies device -> host on a side stream
and posts the MPI send once that copy is done (``progress`` checks), so the copy
overlaps the next action's compute; a receive lands in pinned memory and is
copied to the device on the compute stream, ahead of the kernels that use it.

Sends are non-blocking and kept until completed; with ``sync_sends=True`` they
are *synchronous* (``Issend``): they complete only once the receiver has posted
the matching receive, so no send order can pass a test merely because MPI
buffered a small message eagerly. Tags name (direction, microbatch, chunk), so
messages match by meaning, not by arrival order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from mpi4py import MPI

ACTIVATION, GRADIENT = 0, 1   # direction of a message: forward or backward


def message_tag(direction: int, microbatch: int, chunk: int, num_chunks: int) -> int:
    return (microbatch * num_chunks + chunk) * 2 + direction


def check_tag_range(comm: MPI.Comm, num_microbatches: int, num_chunks: int) -> None:
    """Fail at set-up, not mid-step, if the largest tag does not fit this MPI's limit."""
    largest = message_tag(GRADIENT, num_microbatches - 1, num_chunks - 1, num_chunks)
    upper = comm.Get_attr(MPI.TAG_UB)
    if largest > upper:
        raise ValueError(f"{num_microbatches} microbatches x {num_chunks} chunks need MPI tags up "
                         f"to {largest}, but this MPI allows only {upper}")


def cuda_aware() -> bool:
    return os.environ.get("PIPELINE_REF_CUDA_AWARE", "0") == "1"


def _staged(device: torch.device) -> bool:
    return device.type == "cuda" and not cuda_aware()


def _as_bytes(tensor: torch.Tensor):
    """A byte view of a contiguous tensor (no copy), for MPI.BYTE buffers.

    CPU: a numpy view; CUDA: the tensor itself (MPI reads its __cuda_array_interface__).
    """
    flat = tensor.reshape(-1).view(torch.uint8)
    return flat.numpy() if tensor.device.type == "cpu" else flat


@dataclass
class PendingRecv:
    """A posted receive; ``wait()`` returns the tensor on the target device."""
    request: MPI.Request
    buffer: torch.Tensor
    device: torch.device

    def wait(self) -> torch.Tensor:
        self.request.Wait()
        if self.buffer.device == self.device:
            return self.buffer
        # From pinned memory, asynchronously, on the stream the next kernels run on.
        return self.buffer.to(self.device, non_blocking=True)


class Messenger:
    """Non-blocking sends and receives of tensors between ranks of one communicator."""

    def __init__(self, comm: MPI.Comm, sync_sends: bool = False):
        self.comm = comm
        self.sync_sends = sync_sends
        self._sends: list[tuple[MPI.Request, torch.Tensor]] = []   # keep buffers alive until done
        self._staging: list[tuple] = []                            # (copy done event, host buffer, dest, tag)
        self._copy_stream = None

    def _post(self, buf: torch.Tensor, dest: int, tag: int) -> None:
        send = self.comm.Issend if self.sync_sends else self.comm.Isend
        self._sends.append((send([_as_bytes(buf), MPI.BYTE], dest=dest, tag=tag), buf))

    def isend(self, tensor: torch.Tensor, dest: int, tag: int) -> None:
        tensor = tensor.detach()
        if not _staged(tensor.device):
            if tensor.device.type == "cuda":
                torch.cuda.current_stream(tensor.device).synchronize()   # MPI reads it right away
            self._post(tensor.contiguous(), dest, tag)
            return
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(tensor.device)
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self._copy_stream.wait_stream(torch.cuda.current_stream(tensor.device))   # after the kernels that made it
        with torch.cuda.stream(self._copy_stream):
            host.copy_(tensor, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        tensor.record_stream(self._copy_stream)      # its memory is not reused before the copy is done
        self._staging.append((done, host, dest, tag))

    def irecv(self, shape, dtype: torch.dtype, device: torch.device, source: int, tag: int) -> PendingRecv:
        if _staged(device):
            buf = torch.empty(shape, dtype=dtype, pin_memory=True)
        else:
            buf = torch.empty(shape, dtype=dtype, device=device)
        return PendingRecv(self.comm.Irecv([_as_bytes(buf), MPI.BYTE], source=source, tag=tag), buf, device)

    def _post_staged(self, wait: bool) -> None:
        waiting = []
        for done, host, dest, tag in self._staging:
            if wait:
                done.synchronize()
            if wait or done.query():
                self._post(host, dest, tag)
            else:
                waiting.append((done, host, dest, tag))
        self._staging = waiting

    def progress(self) -> None:
        """Post the sends whose staging copy is done; let MPI move messages; drop completed sends."""
        if self._staging:
            self._post_staged(wait=False)
        self._sends = [(req, buf) for req, buf in self._sends if not req.Test()]

    def finish_sends(self) -> None:
        self._post_staged(wait=True)
        MPI.Request.Waitall([req for req, _ in self._sends])
        self._sends.clear()

    @property
    def pending_sends(self) -> int:
        return len(self._sends) + len(self._staging)

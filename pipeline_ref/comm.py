"""Point-to-point messages of torch tensors over MPI, for the pipeline executor.

Every message is one tensor whose shape and dtype both sides agreed at set-up
(``Link``), so only raw bytes cross the wire: no pickling, no size header.
CPU tensors are sent straight from their memory (``tensor.numpy()`` shares it).
CUDA tensors go directly when the MPI library is CUDA-aware (set
``PIPELINE_REF_CUDA_AWARE=1``) and otherwise are staged through host memory.

Sends are non-blocking and kept until completed; with ``sync_sends=True`` they
are *synchronous* (``Issend``): they complete only once the receiver has posted
the matching receive, so no send order can pass a test merely because MPI
buffered a small message eagerly.

Tags name (direction, microbatch, chunk), so messages match by meaning, not by
arrival order.
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


def _as_bytes(tensor: torch.Tensor):
    """A byte view of a contiguous tensor (no copy), for MPI.BYTE buffers.

    Bytes, not typed elements, so every dtype (bfloat16 included) travels the same way.
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
        return self.buffer.to(self.device, non_blocking=False)

    def done(self) -> bool:
        return self.request.Test()


class Messenger:
    """Non-blocking sends and receives of tensors between ranks of one communicator."""

    def __init__(self, comm: MPI.Comm, sync_sends: bool = False):
        self.comm = comm
        self.sync_sends = sync_sends
        self._sends: list[tuple[MPI.Request, torch.Tensor]] = []  # keep buffers alive until done

    def _wire(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type == "cuda" and not cuda_aware():
            return tensor.detach().to("cpu")    # staged through host memory
        if tensor.device.type == "cuda":
            torch.cuda.current_stream().synchronize()   # the kernels that wrote it must be done
        return tensor.detach().contiguous()

    def isend(self, tensor: torch.Tensor, dest: int, tag: int) -> None:
        buf = self._wire(tensor)
        payload = [_as_bytes(buf), MPI.BYTE]
        send = self.comm.Issend if self.sync_sends else self.comm.Isend
        self._sends.append((send(payload, dest=dest, tag=tag), buf))

    def irecv(self, shape, dtype: torch.dtype, device: torch.device, source: int, tag: int) -> PendingRecv:
        on_wire = device if device.type == "cuda" and cuda_aware() else torch.device("cpu")
        buf = torch.empty(shape, dtype=dtype, device=on_wire)
        payload = [_as_bytes(buf), MPI.BYTE]
        return PendingRecv(self.comm.Irecv(payload, source=source, tag=tag), buf, device)

    def progress(self) -> None:
        """Let MPI move pending messages and drop the sends that are done (frees their buffers)."""
        self._sends = [(req, buf) for req, buf in self._sends if not req.Test()]

    def finish_sends(self) -> None:
        MPI.Request.Waitall([req for req, _ in self._sends])
        self._sends.clear()

    @property
    def pending_sends(self) -> int:
        return len(self._sends)

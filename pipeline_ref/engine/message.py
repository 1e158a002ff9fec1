"""What crosses a stage boundary, and how it travels: a tuple of tensors, moved by a Transport.

A boundary is a tuple of tensors of any dtype: hidden states, an attention mask, integer
positions, a skip connection. Its :class:`TensorSpec` s (shape, dtype, and whether the tensor
gets a gradient back: only floating tensors that need one) are agreed once at set-up
(``executor.agree_specs``), so a message is raw bytes: no pickling, no size header. One
boundary is one message: several tensors are packed into one byte buffer (each at an aligned
offset), a single tensor is sent straight from its own memory.

The :class:`Messenger` does what the executor needs: non-blocking sends kept until completed,
non-blocking receives into buffers taken from a small pool (a step of a schedule receives the
same shapes every time, so after the first step no receive allocates; a buffer is pooled by its
specs together with its tensor views, so a reused receive unpacks nothing), and GPU staging. The
wire itself is a :class:`Transport`, one small interface: ``isend``/``irecv`` of a byte
buffer with a tag, returning a request with ``test()``/``wait()``, plus ``send_object`` /
``recv_object`` for the set-up, and ``max_tag``. ``mpi_transport.MPITransport`` is MPI's (the course's);
``torch_transport.TorchTransport`` is torch.distributed's (gloo, NCCL), chosen by ``RunConfig.transport``.

CUDA tensors: when the transport reads device memory (NCCL; an MPI library that is CUDA-aware:
``PIPELINE_REF_CUDA_AWARE=1``, since MPICH and Open MPI builds differ and cannot be asked portably),
device buffers go to it directly. Otherwise each message is staged through pinned host memory
(``device.CudaStaging``): a send copies device -> host on a side stream and is posted once that
copy is done (``progress`` checks), so the copy overlaps the next action's compute; a receive lands
in pinned memory and is copied to the device on the compute stream, ahead of the kernels that use it.

Synchronous sends (``mpi_transport.MPITransport(sync_sends=True)``, ``Issend``) complete only once the
receiver has posted the matching receive, so no send order passes a test merely because MPI
buffered a small message eagerly. Tags name (direction, microbatch, chunk): messages match by
meaning, not by arrival order.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

ACTIVATION, GRADIENT = 0, 1   # direction of a message: forward or backward
ALIGN = 64                    # byte offset of each packed tensor: any dtype's alignment, a cache line


def message_tag(direction: int, microbatch: int, chunk: int, num_chunks: int) -> int:
    """The tag of a message to ``chunk`` (the receiving chunk) about ``microbatch``."""
    return (microbatch * num_chunks + chunk) * 2 + direction


def tag_of(message, num_chunks: int) -> int:
    """The tag of a ``geometry.Message``: the one rule the executor and the torch transport share."""
    direction = ACTIVATION if message.what == "activation" else GRADIENT
    return message_tag(direction, message.microbatch, message.chunk, num_chunks)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a boundary: its shape, dtype, and whether a gradient for it comes back."""
    shape: tuple
    dtype: torch.dtype
    requires_grad: bool = False

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def specs_of(tensors: tuple) -> tuple[TensorSpec, ...]:
    """The specs of a boundary's tensors; a gradient comes back for floating tensors that require one."""
    return tuple(TensorSpec(tuple(t.shape), t.dtype, bool(t.requires_grad and t.is_floating_point()))
                 for t in tensors)


def gradient_specs(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    """The specs of the gradient message that answers a boundary: one per tensor that requires grad."""
    return tuple(TensorSpec(s.shape, s.dtype) for s in specs if s.requires_grad)


def _offsets(specs) -> tuple[tuple[int, ...], int]:
    """Where each tensor starts in the packed bytes (aligned), and the message's exact size."""
    return _aligned_offsets(tuple(specs))


@functools.lru_cache(maxsize=1024)
def _aligned_offsets(specs: tuple) -> tuple[tuple[int, ...], int]:
    # Cached: a run has a handful of boundary specs, and every message asks (it was a tenth of a receive's
    # cost).
    offsets, end = [], 0
    for spec in specs:
        start = -(-end // ALIGN) * ALIGN
        offsets.append(start)
        end = start + spec.nbytes
    return tuple(offsets), max(end, 1)


def unpack(buffer: torch.Tensor, specs) -> tuple:
    """Views of a flat byte buffer as the boundary's tensors (no copy)."""
    offsets, _ = _offsets(specs)
    return tuple(buffer[o:o + s.nbytes].view(s.dtype).view(s.shape) for o, s in zip(offsets, specs))


def pack(tensors: tuple) -> torch.Tensor:
    """The boundary's tensors as one flat byte tensor: a view of a lone contiguous tensor, else a copy."""
    if len(tensors) == 1:
        t = tensors[0].detach()
        return (t if t.is_contiguous() else t.contiguous()).view(-1).view(torch.uint8)
    offsets, size = _offsets(specs_of(tensors))
    buffer = torch.empty(size, dtype=torch.uint8, device=tensors[0].device)
    for offset, t in zip(offsets, tensors):
        flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
        buffer[offset:offset + flat.numel()].copy_(flat)
    return buffer


def cuda_aware() -> bool:
    return os.environ.get("PIPELINE_REF_CUDA_AWARE", "0") == "1"


# --------------------------------------------------------------------------- the wire

class Loopback:
    """Messages from a rank to itself, matched by tag in memory.

    The wire has no pair to itself (torch.distributed), and MPICH moves a message to oneself through its
    shared-memory cells, one cell per progress call: a 512 KiB message takes 66 Test calls, so a wait that
    sleeps between Tests would take tens of milliseconds for what a copy does in microseconds.
    """

    def __init__(self):
        self.unmatched_sends: dict[int, torch.Tensor] = {}
        self.unmatched_recvs: dict[int, "_Done"] = {}

    def send(self, buffer: torch.Tensor, tag: int):
        if tag in self.unmatched_recvs:
            request = self.unmatched_recvs.pop(tag)
            request.buffer.copy_(buffer)
            request.done = True
        else:
            self.unmatched_sends[tag] = buffer.clone()    # the sender may reuse its buffer at once
        return _Done(None, True)

    def recv(self, buffer: torch.Tensor, tag: int):
        if tag in self.unmatched_sends:
            buffer.copy_(self.unmatched_sends.pop(tag))
            return _Done(buffer, True)
        request = self.unmatched_recvs[tag] = _Done(buffer, False)
        return request


class _Done:
    def __init__(self, buffer, done: bool):
        self.buffer, self.done = buffer, done

    def test(self) -> bool:
        return self.done

    def wait(self) -> None:
        if not self.done:   # a valid schedule produces a rank's own message before it waits for it
            raise RuntimeError("a rank waited for a message to itself that it has not sent")



def check_tag_range(transport, num_microbatches: int, num_chunks: int) -> None:
    """Fail at set-up, not mid-step, if the largest tag does not fit the transport's limit."""
    largest = message_tag(GRADIENT, num_microbatches - 1, num_chunks - 1, num_chunks)
    if largest > transport.max_tag:
        raise ValueError(f"{num_microbatches} microbatches x {num_chunks} chunks need message tags up "
                         f"to {largest}, but this transport allows only {transport.max_tag}")


# --------------------------------------------------------------------------- the executor's side

@dataclass
class PendingRecv:
    """A posted receive; ``wait()`` returns the boundary's tensors on the target device."""
    request: object
    buffer: torch.Tensor
    specs: tuple
    views: tuple                 # the boundary's tensors as views of ``buffer``, made once per pooled buffer
    staging: object = None       # set when the buffer is host memory staged for a GPU rank

    def wait(self) -> tuple:
        self.request.wait()
        return self.views if self.staging is None else self.staging.to_device(self.views)


class Messenger:
    """Non-blocking sends and receives of boundaries (tuples of tensors) over a :class:`Transport`.

    ``staging``: how GPU messages reach a transport that reads only host memory; by default
    ``device.CudaStaging`` on a CUDA device whose transport does not read device memory, else None.
    """

    def __init__(self, transport, device: torch.device = torch.device("cpu"), staging=None):
        self.transport, self.device = transport, device
        if staging is None and device.type == "cuda" and not getattr(transport, "reads_device_memory",
                                                                     cuda_aware()):
            from pipeline_ref.engine.device import CudaStaging
            staging = CudaStaging(device)
        self.staging = staging
        self._sends: list[tuple] = []            # (request, buffer): buffers live until the send is done
        self._staging: list[tuple] = []          # (copy done event, host buffer, dest, tag), in send order
        self._free: dict[tuple, list[tuple]] = {}   # (receive buffer, its views) by specs, for reuse

    def isend(self, tensors: tuple, dest: int, tag: int) -> None:
        buffer = pack(tensors)
        if self.staging is not None:
            done, host = self.staging.to_host(buffer)
            self._staging.append((done, host, dest, tag))
            return
        # A transport that orders itself after the compute stream (NCCL) needs no wait; MPI reads at once.
        if buffer.is_cuda and not getattr(self.transport, "stream_ordered", False):
            torch.cuda.current_stream(buffer.device).synchronize()
        self._sends.append((self.transport.isend(buffer, dest, tag), buffer))

    def irecv(self, specs: tuple, source: int, tag: int) -> PendingRecv:
        if self.staging is not None:
            buffer = self.staging.host_buffer(_offsets(specs)[1])
            views = unpack(buffer, specs)
        else:
            free = self._free.get(specs)
            if free:
                buffer, views = free.pop()
            else:
                buffer = torch.empty(_offsets(specs)[1], dtype=torch.uint8, device=self.device)
                views = unpack(buffer, specs)
        return PendingRecv(self.transport.irecv(buffer, source, tag), buffer, specs, views, self.staging)

    def release(self, received: PendingRecv) -> None:
        """Give a receive's buffer back once nothing reads its tensors any more (the executor knows when)."""
        # pooled with its views: the next message of these specs lands in it as they are
        if self.staging is None:
            self._free.setdefault(received.specs, []).append((received.buffer, received.views))

    def _post_staged(self, wait: bool) -> None:
        # In send order, stopping at the first copy not done: a transport that matches messages by
        # order (NCCL) must see them posted in the order the executor sent them.
        while self._staging:
            done, host, dest, tag = self._staging[0]
            if wait:
                done.synchronize()
            elif not done.query():
                return
            self._sends.append((self.transport.isend(host, dest, tag), host))
            self._staging.pop(0)

    def progress(self) -> None:
        """Post the sends whose staging copy is done; let the transport move messages; drop completed
        sends."""
        if self._staging:
            self._post_staged(wait=False)
        if self._sends:
            self._sends = [(request, buffer) for request, buffer in self._sends if not request.test()]

    def finish_sends(self) -> None:
        self._post_staged(wait=True)
        for request, _ in self._sends:
            request.wait()
        self._sends.clear()

    @property
    def pending_sends(self) -> int:
        return len(self._sends) + len(self._staging)

    @property
    def pooled_buffers(self) -> int:
        return sum(len(free) for free in self._free.values())

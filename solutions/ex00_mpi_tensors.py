"""Exercise 0 (lesson 00): send and receive torch tensors of any shape and dtype with mpi4py.

Pipeline stages talk in tensors: an activation goes downstream, its gradient comes back. MPI moves
bytes. These four functions are the bridge, and everything later in the course stands on them:

    send_tensor / recv_tensor      blocking; the receiver learns the shape and dtype from the sender
    isend_tensor / irecv_tensor    non-blocking; the receiver already knows the shape and dtype

mpi4py has two families of calls. Lowercase ``comm.send``/``comm.recv`` pickle any Python object:
fine for a small tuple, wasteful for megabytes of data. Uppercase ``comm.Send``/``comm.Recv`` move
the raw bytes of a buffer (a numpy array; ``tensor.numpy()`` shares a CPU tensor's memory, no copy),
into a buffer the receiver has already allocated with the right size. numpy has no bfloat16, so the
bytes travel as bytes: ``tensor.reshape(-1).view(torch.uint8).numpy()`` with ``MPI.BYTE`` works for
every dtype.

Grade it (the tests start 2 MPI ranks and send tensors between them):

    .venv/bin/python -m pytest tests/exercises/test_ex00_mpi_tensors.py --impl solutions
"""
from __future__ import annotations

import torch
from mpi4py import MPI


def _bytes_of(tensor: torch.Tensor):
    """A uint8 numpy view of a contiguous CPU tensor's memory: what MPI reads from or writes into."""
    return tensor.reshape(-1).view(torch.uint8).numpy()


def _wire(tensor: torch.Tensor) -> torch.Tensor:
    # detach: .numpy() refuses tensors that require grad; contiguous: MPI reads one block of memory.
    return tensor.detach().cpu().contiguous()


def send_tensor(comm, tensor: torch.Tensor, dest: int, tag: int = 0) -> None:
    """Send ``tensor`` to rank ``dest``: first its shape and dtype (pickled), then its raw bytes."""
    buf = _wire(tensor)
    comm.send((tuple(buf.shape), buf.dtype), dest=dest, tag=tag)
    # Same tag for both messages: MPI never lets two messages with the same (source, tag,
    # communicator) overtake each other, so the receiver gets the metadata first.
    comm.Send([_bytes_of(buf), MPI.BYTE], dest=dest, tag=tag)


def recv_tensor(comm, source: int, tag: int = 0) -> torch.Tensor:
    """Receive a tensor sent by :func:`send_tensor` from rank ``source``."""
    shape, dtype = comm.recv(source=source, tag=tag)
    tensor = torch.empty(shape, dtype=dtype)
    comm.Recv([_bytes_of(tensor), MPI.BYTE], source=source, tag=tag)
    return tensor


def isend_tensor(comm, tensor: torch.Tensor, dest: int, tag: int = 0):
    """Start sending ``tensor``'s bytes to rank ``dest`` and return at once, with the ``MPI.Request``.

    Only the bytes travel: the receiver knows the shape and dtype already. The buffer must stay
    untouched until ``request.Wait()``; mpi4py's Request keeps a reference to it, so a temporary
    contiguous copy is not freed under MPI's feet.
    """
    return comm.Isend([_bytes_of(_wire(tensor)), MPI.BYTE], dest=dest, tag=tag)


def irecv_tensor(comm, shape, dtype: torch.dtype, source: int, tag: int = 0):
    """Post a receive for a tensor of known ``shape`` and ``dtype``; return ``(request, tensor)``.

    ``tensor`` holds the data once ``request.Wait()`` has returned, not before.
    """
    tensor = torch.empty(tuple(shape), dtype=dtype)
    request = comm.Irecv([_bytes_of(tensor), MPI.BYTE], source=source, tag=tag)
    return request, tensor

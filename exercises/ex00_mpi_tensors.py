"""Exercise 0 (lesson 00): send and receive torch tensors of any shape and dtype with mpi4py.

Pipeline stages talk in tensors: an activation goes downstream, its gradient comes back. MPI moves
bytes. You write the bridge, and everything later in the course stands on it:

    0.1 send_tensor      blocking send; the receiver learns the shape and dtype from the sender
    0.2 recv_tensor      the matching blocking receive
    0.3 isend_tensor     non-blocking send of the bytes alone; returns an MPI.Request
    0.4 irecv_tensor     non-blocking receive of a tensor whose shape and dtype are known

What you need from lesson 00:

- Lowercase ``comm.send(obj, dest=, tag=)`` / ``comm.recv(source=, tag=)`` pickle any Python object:
  right for a small tuple like ``(shape, dtype)``, wasteful for megabytes of data.
- Uppercase ``comm.Send([buffer, MPI.BYTE], dest=, tag=)`` / ``comm.Recv([buffer, MPI.BYTE], source=,
  tag=)`` move the raw bytes of a buffer, and the receiver must already hold a buffer of the right
  size. ``Isend``/``Irecv`` are the same but return at once with an ``MPI.Request``; the data is there
  (or the buffer free again) only after ``request.Wait()``.
- A message matches a receive by its source and its tag: with several ranks and several messages in
  flight, receive exactly the one asked for (never ``MPI.ANY_SOURCE`` or ``MPI.ANY_TAG`` here).
- ``tensor.numpy()`` shares a CPU tensor's memory (no copy), but numpy has no bfloat16 and refuses
  tensors that require grad: send the tensor's *bytes*, as ``MPI.BYTE``.

Stuck? ``exercises/hints/ex00_mpi_tensors.md`` has longer hints, one section per function.
Grade it (the tests start 3 MPI ranks and send tensors between them):

    .venv/bin/python -m pytest tests/exercises/test_ex00_mpi_tensors.py
"""
from __future__ import annotations

import torch
from mpi4py import MPI  # noqa: F401  (MPI.BYTE: the datatype "just bytes")


def send_tensor(comm, tensor: torch.Tensor, dest: int, tag: int = 0) -> None:
    """Send ``tensor`` to rank ``dest``: first its shape and dtype (pickled), then its raw bytes.

    Any shape (a 0-d scalar, an empty tensor, a non-contiguous view) and any dtype (bfloat16 and
    bool too). The data must travel by ``comm.Send``, not pickled: the tests check.
    """
    raise NotImplementedError(
        "Exercise 0.1: send the tensor's (shape, dtype) with comm.send, then its bytes with comm.Send. "
        "Hint: a contiguous tensor viewed as uint8 is a numpy array of its bytes, whatever its dtype.")


def recv_tensor(comm, source: int, tag: int = 0) -> torch.Tensor:
    """Receive a tensor sent by :func:`send_tensor` from rank ``source``, with the same ``tag``."""
    raise NotImplementedError(
        "Exercise 0.2: receive the (shape, dtype), allocate the tensor, then comm.Recv its bytes into it. "
        "Hint: receive into a uint8 view of the new tensor: it shares the tensor's memory.")


def isend_tensor(comm, tensor: torch.Tensor, dest: int, tag: int = 0):
    """Start sending ``tensor``'s bytes to rank ``dest``; return the ``MPI.Request`` at once.

    Only the bytes travel: the receiver already knows the shape and dtype (pipeline stages agree on
    them once, before the first step). Nothing may block here: two ranks that both isend first and
    receive afterwards must not deadlock.
    """
    raise NotImplementedError(
        "Exercise 0.3: start a comm.Isend of the tensor's bytes and return its request. Hint: no metadata "
        "message and no Wait here: the caller waits on the request you return.")


def irecv_tensor(comm, shape, dtype: torch.dtype, source: int, tag: int = 0):
    """Post a receive for a tensor of the given ``shape`` and ``dtype``; return ``(request, tensor)``.

    ``tensor`` holds the data once ``request.Wait()`` has returned, not before.
    """
    raise NotImplementedError(
        "Exercise 0.4: allocate the tensor, post comm.Irecv into its bytes, return (request, tensor). Hint: "
        "the tensor is filled in place by MPI once request.Wait() returns.")

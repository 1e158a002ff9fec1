"""The rank side of the graded tests of exercise 0: tensors of any shape and dtype between MPI ranks.

The same machinery as rank_checks.py, which imports this module at its end so that these checks join
``CHECKS``. Nothing here imports mpi4py at import time.

Before a receive whose sender may have ignored its tag, the receiving rank asks (``Iprobe``) whether a
message with that source and tag has arrived: a mistagged send then fails its test at once, saying so,
instead of leaving a receive that never matches until the watchdog's STALL_SECONDS.
"""
from __future__ import annotations

import pickle
import time

import torch

from pipeline_ref.faults import watchdog
from tests.exercises.rank_checks import EX00, NONBLOCKING, SEND_RECV, _student, check



def payloads() -> dict[str, torch.Tensor]:
    """Every kind of tensor a pipeline may send, built the same way on the ranks and in pytest."""
    g = torch.Generator().manual_seed(0)
    cube = torch.randn(6, 5, 4, generator=g, dtype=torch.float64)
    return {
        "float64 (6, 5, 4)": cube,
        "float32 (3, 7)": torch.randn(3, 7, generator=g),
        "float16 (5, 4)": cube[0].to(torch.float16),
        "bfloat16 (5, 4)": cube[1].to(torch.bfloat16),
        "int64 (9,)": torch.randint(-10**12, 10**12, (9,), generator=g),
        "int8 (2, 3)": torch.randint(-128, 128, (2, 3), generator=g, dtype=torch.int8),
        "uint8 (11,)": torch.randint(0, 256, (11,), generator=g, dtype=torch.uint8),
        "bool (5, 4)": cube[2] > 0,
        "0-d scalar": torch.tensor(3.25),
        "empty (0, 5)": torch.empty(0, 5),
        "non-contiguous view (4, 6)": cube[:, 1, :].t(),
        "requires grad (2, 2)": torch.randn(2, 2, generator=g, requires_grad=True),
        "4 MB float32 (1000, 1000)": torch.randn(1000, 1000, generator=g),
    }


def big(dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    """1M elements: far above MPI's eager limit, so a send of it cannot complete before its receive is posted."""
    return torch.randn(1000, 1000, generator=torch.Generator().manual_seed(seed)).to(dtype)


@check("ex00.matrix", EX00, SEND_RECV)
def send_one_matrix(comm, impl):
    ex = _student(impl, EX00)
    if comm.Get_rank() == 0:
        ex.send_tensor(comm, payloads()["float32 (3, 7)"], dest=1, tag=3)
        return None
    missing = _arrived(comm, [(0, 3)])
    return _missing(comm, missing) if missing else ex.recv_tensor(comm, source=0, tag=3)


@check("ex00.every_kind", EX00, SEND_RECV)
def send_every_kind(comm, impl):
    ex = _student(impl, EX00)
    if comm.Get_rank() == 0:
        for tag, tensor in enumerate(payloads().values()):
            ex.send_tensor(comm, tensor, dest=1, tag=tag)
        return None
    received = {}
    for tag, name in enumerate(payloads()):
        missing = _arrived(comm, [(0, tag)])
        if missing:     # let rank 0's blocking sends of the rest complete (two messages each), then say so
            said = _missing(comm, missing)
            _drain(comm, 0, 2 * (len(payloads()) - tag))
            return said
        received[name] = ex.recv_tensor(comm, source=0, tag=tag)
    return received


class SpyComm:
    """Passes every call on to the real communicator and counts the bytes each kind of send carried."""

    BUFFER_SENDS = ("Send", "Ssend", "Bsend", "Rsend", "Isend", "Issend", "Ibsend", "Irsend")
    PICKLE_SENDS = ("send", "ssend", "bsend", "isend", "issend", "ibsend")

    def __init__(self, comm):
        self._comm = comm
        self.buffer_bytes = 0
        self.pickled_bytes = 0

    @staticmethod
    def _nbytes(message) -> int:
        data = message[0] if isinstance(message, (list, tuple)) else message
        if hasattr(data, "nbytes"):
            return int(data.nbytes)
        try:
            return memoryview(data).nbytes
        except TypeError:
            return 0

    def __getattr__(self, name):
        method = getattr(self._comm, name)
        if name in self.BUFFER_SENDS:
            def counted(message, *args, **kwargs):
                self.buffer_bytes += self._nbytes(message)
                return method(message, *args, **kwargs)
            return counted
        if name in self.PICKLE_SENDS:
            def pickled(obj, *args, **kwargs):
                self.pickled_bytes += len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
                return method(obj, *args, **kwargs)
            return pickled
        return method


@check("ex00.raw_bytes", EX00, SEND_RECV)
def send_raw_bytes(comm, impl):
    ex = _student(impl, EX00)
    if comm.Get_rank() == 0:
        spy = SpyComm(comm)
        ex.send_tensor(spy, big(), dest=1, tag=0)
        return {"buffer_bytes": spy.buffer_bytes, "pickled_bytes": spy.pickled_bytes}
    return ex.recv_tensor(comm, source=0, tag=0)


def _arrived(comm, wanted, seconds: float = 5.0) -> list:
    """The (source, tag) pairs of ``wanted`` for which no message has arrived within ``seconds`` (Iprobe).

    The grader asks before it receives: a send that ignored its tag fails at once, instead of leaving a
    receive that never matches (and a stall of STALL_SECONDS)."""
    missing = list(wanted)
    deadline = time.monotonic() + seconds
    while missing and time.monotonic() < deadline:
        missing = [(source, tag) for source, tag in missing if not comm.Iprobe(source=source, tag=tag)]
        if missing:
            time.sleep(0.01)
    return missing


def _drain(comm, source: int, count: int) -> None:
    """Receive ``count`` messages from ``source`` whatever their tags, so that its sends complete."""
    from mpi4py import MPI
    for _ in range(count):
        status = MPI.Status()
        comm.Probe(source=source, tag=MPI.ANY_TAG, status=status)
        comm.Recv([bytearray(max(status.Get_count(MPI.BYTE), 1)), MPI.BYTE], source=source, tag=status.Get_tag())


def _missing(comm, missing, wanted=()) -> dict:
    """What the test says about messages that did not come: sent with another tag (a message with a tag nobody
    asked for waits from that rank), or not sent yet (the sender is still inside a send: it blocked)."""
    from mpi4py import MPI
    asked = {tag for _, tag in (list(wanted) or missing)}
    strays = {}
    for source in dict.fromkeys(source for source, _ in missing):
        status = MPI.Status()
        if comm.Iprobe(source=source, tag=MPI.ANY_TAG, status=status) and status.Get_tag() not in asked:
            strays[source] = status.Get_tag()
    return {"missing": [f"no message from rank {source} with tag {tag}"
                        + (f" (one with tag {strays[source]} came instead)" if source in strays else "")
                        for source, tag in missing],
            "why": "tag" if strays else "blocked"}


@check("ex00.tags", EX00, NONBLOCKING)
def match_by_tag(comm, impl):
    """Rank 0 sends A (tag 5) then B (tag 7); rank 1 asks for B first. Both 4 MB: no eager buffering helps."""
    ex = _student(impl, EX00)
    a, b = big(seed=2), big(torch.float64, seed=3)
    if comm.Get_rank() == 0:
        requests = [ex.isend_tensor(comm, a, dest=1, tag=5), ex.isend_tensor(comm, b, dest=1, tag=7)]
        watchdog.beat("waiting for the sends your isend_tensor started (request.Wait())")
        for request in requests:
            request.Wait()
        return None
    missing = _arrived(comm, [(0, 5), (0, 7)])
    if missing:
        said = _missing(comm, missing, [(0, 5), (0, 7)])
        _drain(comm, 0, 2)
        return said
    request_b, got_b = ex.irecv_tensor(comm, b.shape, b.dtype, source=0, tag=7)
    watchdog.beat("waiting for the receive your irecv_tensor posted (request.Wait())")
    request_b.Wait()
    request_a, got_a = ex.irecv_tensor(comm, a.shape, a.dtype, source=0, tag=5)
    request_a.Wait()
    return {"A": got_a, "B": got_b}


def small(seed: int, dtype=torch.float32) -> torch.Tensor:
    """A few bytes: MPI delivers a message this small at once (eagerly), before its receive is posted."""
    return (torch.randn(3, 7, generator=torch.Generator().manual_seed(seed)) * 100).to(dtype)


# (source, tag) -> what ranks 0 and 2 send to rank 1, in this order; rank 1 receives them in ASKED order.
SENT = {(0, 10): small(20), (0, 20): small(21, torch.float64), (2, 10): small(22, torch.bfloat16),
        (2, 20): small(23, torch.int64)}
ASKED = ((2, 20), (0, 10), (2, 10), (0, 20))


@check("ex00.out_of_order", EX00, SEND_RECV, ranks=3)
def receive_out_of_order(comm, impl):
    """Ranks 0 and 2 send rank 1 two small tensors each (tags 10, 20); rank 1 asks for them in another order.

    A receive that ignores its source or its tag takes the wrong message; a send that ignores its tag is
    found by the probe before any receive."""
    ex = _student(impl, EX00)
    rank = comm.Get_rank()
    if rank != 1:
        for (source, tag), tensor in SENT.items():
            if source == rank:
                ex.send_tensor(comm, tensor, dest=1, tag=tag)
        comm.Barrier()
        return None
    comm.Barrier()
    missing = _arrived(comm, SENT)
    if missing:
        said = _missing(comm, missing, SENT)
        for source in (0, 2):
            while comm.Iprobe(source=source):
                _drain(comm, source, 1)
        return said
    return {"received": {key: ex.recv_tensor(comm, source=key[0], tag=key[1]) for key in ASKED}}


@check("ex00.sources", EX00, NONBLOCKING, ranks=3)
def match_by_source(comm, impl):
    """Ranks 0 and 2 both isend rank 1 a (3, 7) float32 with tag 3; rank 0's arrives first, rank 1 asks for
    rank 2's first. An irecv that ignores its source takes rank 0's."""
    ex = _student(impl, EX00)
    rank = comm.Get_rank()
    mine = small(30 + rank)
    if rank == 0:
        request = ex.isend_tensor(comm, mine, dest=1, tag=3)
        comm.Barrier()
        request.Wait()
        return None
    if rank == 2:
        comm.Barrier()                      # only once rank 0's message is at rank 1
        ex.isend_tensor(comm, mine, dest=1, tag=3).Wait()
        return None
    missing = _arrived(comm, [(0, 3)])
    comm.Barrier()
    if missing:
        said = _missing(comm, missing)
        _drain(comm, 2, 1)
        return said
    first, from_2 = ex.irecv_tensor(comm, mine.shape, mine.dtype, source=2, tag=3)
    watchdog.beat("waiting for the receive your irecv_tensor posted for rank 2's message (request.Wait())")
    first.Wait()
    second, from_0 = ex.irecv_tensor(comm, mine.shape, mine.dtype, source=0, tag=3)
    second.Wait()
    return {"from rank 2": from_2, "from rank 0": from_0}


@check("ex00.exchange", EX00, NONBLOCKING)
def exchange(comm, impl):
    """Both ranks send first, then receive: only non-blocking sends get through. A transposed bfloat16 view too."""
    ex = _student(impl, EX00)
    rank, other = comm.Get_rank(), 1 - comm.Get_rank()
    mine = big(torch.bfloat16, seed=10 + rank).t()          # a non-contiguous view
    sent = ex.isend_tensor(comm, mine, dest=other, tag=1)
    missing = _arrived(comm, [(other, 1)])
    if missing:                 # take the mistagged message, so that both sends complete, and say so
        said = _missing(comm, missing)
        _drain(comm, other, 1)
        sent.Wait()
        return said
    received, tensor = ex.irecv_tensor(comm, (1000, 1000), torch.bfloat16, source=other, tag=1)
    watchdog.beat("waiting for the receive your irecv_tensor posted (request.Wait())")
    received.Wait()
    sent.Wait()
    return tensor

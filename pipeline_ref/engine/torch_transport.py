"""The second wire: pipeline messages over torch.distributed (gloo on CPU, NCCL on GPUs).

    python -m pipeline_ref run --transport torch --schedule 1f1b --pp 2 -n 2        # gloo, CPU ranks
    mpiexec -n 4 python -m pipeline_ref run --transport torch --device cuda --pp 4   # NCCL, one GPU per rank

The ranks are still started by ``mpiexec``/``srun`` (or ``launch.py``), which give rank and world
size; MPI also carries the rendezvous: rank 0 of the run opens a ``TCPStore`` on a free port
(``MASTER_PORT`` if set) at ``MASTER_ADDR`` (if set; else localhost when every rank is on one
node, else rank 0's host name) and broadcasts the address, and every rank joins
``init_process_group`` with it. The process group lives as long as the run (``Free()`` destroys
it, as ``train.run_rank`` frees its MPI communicators), so ``run_many`` can play many runs, each
on its own ranks.

:class:`TorchTransport` has the Messenger's interface (``isend``/``irecv`` of byte buffers with a
tag, ``send_object``/``recv_object``, ``max_tag``); the executor and the Messenger do not know
which wire they use. Two ways to match a message with its receive:

* **by tag** (gloo): as MPI does; one process group.
* **by order** (NCCL, which has no tags; or gloo with ``PIPELINE_REF_TORCH_ORDERED=1``, so a CPU
  plays NCCL's rule): the k-th message a rank sends on a channel lands in the k-th receive its peer
  posts on it. NCCL also runs a group's sends and receives on one stream, where a send waits for
  its receive, so two ranks both sending first would block each other: each *channel* (source,
  dest, and what the tag says besides the microbatch: direction and chunk) gets its own two-rank
  group, its own NCCL communicator and stream. ZB-V needs the chunk: rank 0 sends rank 1 both
  chunk 0's activations and chunk 1's input gradients, interleaved in another order than rank 1
  takes them. :func:`check_order` proves before any message that the schedule sends every channel's
  messages in the order the peer receives them (all built-in schedules do).

A message to oneself (ZB-V's turn on the last rank) never touches the wire (:class:`message.Loopback`).
NCCL reads device memory, so the Messenger does not stage through the host; gloo is given CPU
tensors. NCCL also needs **one GPU per rank**: two ranks on one GPU are refused
(:func:`check_own_gpus`), while MPI with staging can share one.

The gradient all-reduces (``reduce.py``) stay on MPI for both transports: once per step, already
through host memory, and over communicators (data parallel, tied weights) that MPI's ``Split`` makes
for the run; this module carries the many per-microbatch messages, the part the two wires differ in.
"""
from __future__ import annotations

import datetime
import os
import socket

import torch

from pipeline_ref.faults import watchdog
from pipeline_ref.engine.message import Loopback, tag_of

MAX_TAG = 2 ** 31 - 1        # gloo takes a 32-bit signed tag; NCCL ignores it (matching by order)


class TransportError(ValueError):
    """This torch build, node or schedule cannot carry the run's messages; raised before any message."""
    refusal = True      # the rank entry ends a refused run with exit code 2 and this message alone


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def ordered_for(backend: str, env=None) -> bool:
    """Whether messages match by order: always on NCCL; on gloo when ``PIPELINE_REF_TORCH_ORDERED=1``."""
    env = os.environ if env is None else env
    return backend == "nccl" or env.get("PIPELINE_REF_TORCH_ORDERED", "0") == "1"


def check_available(backend: str) -> None:
    import torch.distributed as dist
    if not dist.is_available():
        raise TransportError("--transport torch needs torch.distributed, which this torch build lacks; use "
                             "--transport mpi")
    if backend == "gloo" and not dist.is_gloo_available():
        raise TransportError("--transport torch on CPU needs gloo, which this torch build lacks; use "
                             "--transport mpi")
    if backend == "nccl" and not dist.is_nccl_available():
        raise TransportError(f"--transport torch on GPUs needs NCCL, which torch {torch.__version__} lacks "
                             f"(a build without CUDA?); use --transport mpi")


def check_own_gpus(places: list) -> None:
    """NCCL's rule: one GPU per rank. ``places``: (host, device index) of each rank, by rank."""
    seen: dict = {}
    for rank, place in enumerate(places):
        seen.setdefault(tuple(place), []).append(rank)
    shared = [(place, ranks) for place, ranks in seen.items() if len(ranks) > 1]
    if shared:
        (host, index), ranks = shared[0]
        raise TransportError(f"ranks {', '.join(map(str, ranks))} would share GPU cuda:{index} on {host}, "
                             "and NCCL needs one GPU per rank (two ranks cannot share one): start at most "
                             "as many ranks per node as it has GPUs, or use --transport mpi, which stages "
                             "messages through host memory")


def channel(tag: int, num_chunks: int) -> int:
    """What a tag says besides the microbatch (``message.message_tag``): direction and chunk."""
    return tag % (2 * num_chunks)


def message_orders(schedule) -> tuple[dict, dict]:
    """(sent, received): for each (source rank, dest rank, channel), the tags in the order each side sends /
    receives them, with the action that sends or receives each."""
    pipe = schedule.pipeline
    key = lambda source, dest, tag: (source, dest, channel(tag, pipe.num_chunks))
    sent, received = {}, {}
    for rank in range(schedule.num_stages):
        for a in schedule[rank]:
            incoming, outgoing = pipe.messages(a, rank)
            if incoming is not None and incoming.peer.rank != rank:
                tag = tag_of(incoming, pipe.num_chunks)
                received.setdefault(key(incoming.peer.rank, rank, tag), []).append((tag, str(a)))
            if outgoing is not None and outgoing.peer.rank != rank:
                tag = tag_of(outgoing, pipe.num_chunks)
                sent.setdefault(key(rank, outgoing.peer.rank, tag), []).append((tag, str(a)))
    return sent, received


def check_order(schedule, name: str = "this schedule") -> None:
    """Refuse, before any message, a schedule that sends to a peer in another order than it receives."""
    sent, received = message_orders(schedule)
    for pair in sorted(set(sent) | set(received)):
        ours, theirs = sent.get(pair, []), received.get(pair, [])
        for k, (s, r) in enumerate(zip(ours, theirs)):
            if s[0] != r[0]:
                raise TransportError(
                    f"{name} cannot run over a transport that matches messages by order (NCCL): rank "
                    f"{pair[0]}'s message {k + 1} to rank {pair[1]} on channel {pair[2]} is the result of "
                    f"{s[1]}, but rank {pair[1]} receives message {k + 1} from rank {pair[0]} there for "
                    f"{r[1]}; use --transport mpi")


def store_address(hosts: list[str], env=None) -> str:
    """Where the TCPStore listens: MASTER_ADDR, else localhost on one node, else rank 0's host name."""
    env = os.environ if env is None else env
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    return "127.0.0.1" if len(set(hosts)) == 1 else hosts[0]


def _rendezvous(comm, timeout: datetime.timedelta):
    import torch.distributed as dist
    hosts = comm.allgather(socket.gethostname())
    address = None
    if comm.Get_rank() == 0:
        host = store_address(hosts)
        port = int(os.environ.get("MASTER_PORT", 0))          # 0: the store picks a free port
        store = dist.TCPStore(host, port, comm.Get_size(), True, timeout=timeout, wait_for_workers=False)
        address = (host, store.port)
    address = comm.bcast(address, root=0)
    if comm.Get_rank() != 0:
        store = dist.TCPStore(address[0], address[1], comm.Get_size(), False, timeout=timeout)
    return store, hosts


def channels(schedule, pipelines: list[list[int]]) -> list[tuple[int, int, int]]:
    """Every (source, dest, channel) a message of the run crosses, in one order all ranks agree on."""
    sent, _ = message_orders(schedule)
    return [(ranks[a], ranks[b], c) for ranks in pipelines for a, b, c in sorted(sent)]


class TorchTransport:
    """Bytes between the stages of one pipeline over torch.distributed; ``rank``/``size`` count its stages."""

    def __init__(self, ranks: list[int], rank_in_group: int, backend: str, groups: dict | None = None,
                 num_chunks: int = 1):
        # ranks[stage]: the stage's rank in the process group
        self.ranks, self.backend = ranks, backend
        self.rank, self.size = ranks.index(rank_in_group), len(ranks)
        self.groups = groups             # (source, dest, channel) -> its own group when ordered, else None
        self.num_chunks = num_chunks
        self.max_tag = MAX_TAG
        self.reads_device_memory = self.stream_ordered = backend == "nccl"
        self._loopback = Loopback()

    def _wire(self, peer: int, tag: int, sending: bool):
        if self.groups is None:
            return dict(group=None, tag=tag), self.ranks[peer]
        me, other = self.ranks[self.rank], self.ranks[peer]
        key = (me, other) if sending else (other, me)
        group = self.groups[key + (channel(tag, self.num_chunks),)]
        return dict(group=group, tag=0), other        # tags ignored: matched by order within the channel

    def isend(self, buffer: torch.Tensor, dest: int, tag: int):
        if dest == self.rank:
            return self._loopback.send(buffer, tag)
        import torch.distributed as dist
        options, peer = self._wire(dest, tag, sending=True)
        return _TorchRequest(dist.isend(buffer, dst=peer, **options))

    def irecv(self, buffer: torch.Tensor, source: int, tag: int):
        if source == self.rank:
            return self._loopback.recv(buffer, tag)
        import torch.distributed as dist
        options, peer = self._wire(source, tag, sending=False)
        return _TorchRequest(dist.irecv(buffer, src=peer, **options))

    # The set-up's few pickled objects go over the default (gloo) group, in order: agree_specs walks the
    # virtual stages in the same order on every rank, so each peer sends them in the order it receives them.
    def send_object(self, obj, dest: int, tag: int) -> None:
        import torch.distributed as dist
        dist.send_object_list([obj], dst=self.ranks[dest])

    def recv_object(self, source: int, tag: int):
        import torch.distributed as dist
        box = [None]
        dist.recv_object_list(box, src=self.ranks[source])
        return box[0]

    def Free(self) -> None:      # named as MPI's, so train.py frees it with the run's communicators
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


class _TorchRequest:
    def __init__(self, work):
        self.test, self.wait = work.is_completed, work.wait


def open_transport(comm, topo, schedule, device: torch.device, timeout_s: float = 120.0,
                   name: str = "this schedule") -> TorchTransport:
    """Every rank of ``comm`` calls this: checks, rendezvous, process group, and this pipeline's transport."""
    import torch.distributed as dist
    backend = backend_for(device)
    check_available(backend)
    ordered = ordered_for(backend)
    if ordered:
        check_order(schedule, name)
    if dist.is_initialized():
        raise TransportError("--transport torch opens its own process group for the run, but "
                             "torch.distributed is already initialized in this process; call "
                             "dist.destroy_process_group() first")
    timeout = datetime.timedelta(seconds=max(30.0, timeout_s))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    watchdog.beat(f"opening a torch.distributed ({backend}) process group")
    store, hosts = _rendezvous(comm, timeout)
    if backend == "nccl":
        check_own_gpus(comm.allgather((hosts[comm.Get_rank()], device.index)))
    # The default group is gloo in both cases: it carries the set-up's objects; NCCL carries the tensors.
    dist.init_process_group("gloo", store=store, rank=comm.Get_rank(), world_size=comm.Get_size(),
                            timeout=timeout)
    pipelines = [topo.grid.pipeline_ranks(r) for r in range(topo.grid.dp)]
    groups = None
    if ordered:
        groups = {}
        for key in channels(schedule, pipelines):   # new_group is collective: every rank, same order
            group = dist.new_group(list(key[:2]), backend=backend, timeout=timeout)
            if comm.Get_rank() in key[:2]:
                groups[key] = group
        _warm_up(groups, comm.Get_rank(), device)
    return TorchTransport(pipelines[topo.replica], comm.Get_rank(), backend, groups, schedule.num_chunks)


def _warm_up(groups: dict, me: int, device: torch.device) -> None:
    """One byte over each direction in one agreed order: NCCL builds a communicator on its first message,
    blocking until the peer joins, which the set-up does here rather than in the middle of a step."""
    import torch.distributed as dist
    for (source, dest, _), group in sorted(groups.items(), key=lambda item: item[0]):
        byte = torch.zeros(1, dtype=torch.uint8, device=device)
        (dist.isend(byte, dst=dest, group=group) if me == source else dist.irecv(byte, src=source,
                                                                                 group=group)).wait()

"""Which device a rank computes on, and how GPU messages are staged through host memory.

    from pipeline_ref.engine import device
    device.local_rank()                       # this rank's place on its node, as the launcher says
    device.choose("auto", local_rank=1)       # cuda:1 on a node with >= 2 GPUs, else the CPU

One rank per GPU on a node: each rank takes its *local* rank (its index among the ranks on its
node) from the launcher and uses that GPU. Launchers name it differently: MPICH's Hydra sets
``MPI_LOCALRANKID``, Open MPI ``OMPI_COMM_WORLD_LOCAL_RANK``, Slurm's ``srun`` ``SLURM_LOCALID``,
torchrun ``LOCAL_RANK``. Where none is set, MPI itself can tell: the rank's index in the
communicator of the ranks sharing its memory (``Split_type(COMM_TYPE_SHARED)``), which is what
``local_rank(comm)`` falls back to.

:class:`CudaStaging` is how a GPU message travels over an MPI that cannot read device memory (the
``mpich`` wheel): a send copies device -> pinned host memory on a side stream, so the copy overlaps
the next action's kernels, and is posted once the copy's event says it is done; a receive lands in
pinned memory and is copied to the device on the compute stream. The
:class:`~pipeline_ref.engine.message.Messenger` keeps the bookkeeping (which copies are done, which sends are
posted); the staging object only copies, so a unit test can swap in a CPU stand-in with the same three methods
and check that bookkeeping without a GPU (``tests/test_gpu_path.py``).

Pure functions (no CUDA call unless a GPU is asked for), so the CPU tests exercise them.
"""
from __future__ import annotations

import os

import torch

# In the order they are trusted: a launcher sets only its own.
LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK")


def local_rank(comm=None, env=None) -> int:
    """This rank's index on its node: from the launcher's variables, else from MPI (``comm``), else 0."""
    env = os.environ if env is None else env
    for name in LOCAL_RANK_VARIABLES:
        value = env.get(name)
        if value is not None and value.strip() != "":
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"the launcher set {name}={value!r}, which is not a local rank "
                                 f"(an integer)") from None
    if comm is not None:
        from mpi4py import MPI
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
        try:
            return node.Get_rank()
        finally:
            node.Free()
    return 0


def choose(kind: str, local_rank: int = 0, gpus: int | None = None) -> torch.device:
    """The device for ``kind`` ("cpu", "cuda", "auto"): GPU ``local_rank % gpus`` when CUDA is used.

    ``gpus`` defaults to ``torch.cuda.device_count()``; tests pass it to play a GPU node on a CPU.
    More ranks than GPUs on a node wrap around (two ranks share a GPU: correct over MPI, refused by
    NCCL, see ``torch_transport.check_own_gpus``).
    """
    if kind not in ("cpu", "cuda", "auto"):
        raise ValueError(f"unknown device {kind!r}; choose cpu, cuda or auto")
    if kind == "cpu":
        return torch.device("cpu")
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if gpus == 0:
        if kind == "auto":
            return torch.device("cpu")
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}, built for CUDA "
                         f"{torch.version.cuda or 'none: a CPU build'})")
    return torch.device("cuda", local_rank % gpus)


def for_rank(kind: str, comm=None) -> torch.device:
    """The device this rank uses: ``choose(kind)`` at its local rank (asked of MPI only when CUDA is used)."""
    if kind == "cpu" or (kind == "auto" and torch.cuda.device_count() == 0):
        return torch.device("cpu")
    return choose(kind, local_rank(comm))


class CudaStaging:
    """Device <-> pinned host copies for a transport that reads only host memory."""

    def __init__(self, device: torch.device):
        self.device = device
        # made on the first send: a rank that only receives needs none
        self._stream = None

    def to_host(self, buffer: torch.Tensor):
        """Start copying ``buffer`` to pinned host memory on the copy stream; returns (done event, host
        buffer)."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        host = torch.empty(buffer.shape, dtype=buffer.dtype, pin_memory=True)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))   # after the kernels that made it
        with torch.cuda.stream(self._stream):
            host.copy_(buffer, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        buffer.record_stream(self._stream)       # its memory is not reused before the copy is done
        return done, host

    def host_buffer(self, size: int) -> torch.Tensor:
        """A pinned buffer for a receive (not pooled: it may still feed an asynchronous copy to the
        device)."""
        return torch.empty(size, dtype=torch.uint8, pin_memory=True)

    def to_device(self, tensors: tuple) -> tuple:
        """From pinned memory, asynchronously, on the stream the next kernels run on."""
        return tuple(t.to(self.device, non_blocking=True) for t in tensors)

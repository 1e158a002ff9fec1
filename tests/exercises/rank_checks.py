"""The rank side of the graded tests that need MPI ranks (imported by the ranks as tests.exercises.rank_checks).

A test asks for a check by name (``on_ranks("ex00.exchange")``). conftest.py starts the ranks once, with
every check of the exercises whose tests the session runs:

    launch(n, "tests.exercises.rank_checks:run", impl, names, outdir)

Each check runs on the first ``ranks`` ranks, on a communicator of its own (a message a buggy check
leaves behind cannot match one of the next check's), and every rank saves what the check returned in
``outdir/<name>.rank<r>.pt`` before the next check starts. So when a check raises or hangs, the results
before it survive and conftest.py starts the ranks again with the checks after it: one broken function
costs the points of its own tests only. A student's module that does not import fails (on every rank
alike) just the checks that need it.

The pytest process imports this module too, to read ``CHECKS`` (which of the student's functions each
check needs, so that a stub is refused before any rank starts) and the data the ranks send: nothing
here imports mpi4py at import time.
"""
from __future__ import annotations

import importlib
import pickle
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pipeline_ref import partition, watchdog
from pipeline_ref.config import RunConfig, build_model


@dataclass(frozen=True)
class Check:
    name: str
    module: str                 # the exercise module whose tests ask for it
    needs: tuple                # (module, function) of the student's, own exercise first: a stub fails at once
    ranks: int
    function: Callable


CHECKS: dict[str, Check] = {}


def check(name: str, module: str, needs: tuple, ranks: int = 2):
    def register(function):
        CHECKS[name] = Check(name, module, needs, ranks, function)
        return function
    return register


def _student(impl: str, module: str):
    return importlib.import_module(f"{impl}.{module}")


def _first(comm, n: int):
    """A communicator of ranks 0..n-1 of ``comm`` (None on the others): a pipeline of n stages."""
    from mpi4py import MPI
    sub = comm.Split(0 if comm.Get_rank() < n else MPI.UNDEFINED, comm.Get_rank())
    return None if sub == MPI.COMM_NULL else sub


IMPORT_ERROR = "import error"     # the key of a check's result when a module it needs did not import


def run(comm, impl: str, names: list[str], outdir: str) -> None:
    rank = comm.Get_rank()
    broken = {}
    for module in dict.fromkeys(m for name in names for m, _ in CHECKS[name].needs):
        watchdog.beat(f"importing {impl}.{module}")
        try:
            _student(impl, module)
        except Exception as err:   # the same on every rank: its checks are skipped everywhere, the others run
            frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<")]
            broken[module] = "".join(traceback.format_list(frames[-3:]) + traceback.format_exception_only(err))
    for name in names:
        watchdog.beat(f"graded check {name}")
        Path(outdir, f"{name}.rank{rank}.started").touch()
        failed = [broken[m] for m, _ in CHECKS[name].needs if m in broken]
        own = None if failed else _first(comm, CHECKS[name].ranks)     # the check's own ranks; the others wait
        result = CHECKS[name].function(own, impl) if own is not None else None
        if own is not None:
            own.Free()
        if failed:
            result = {IMPORT_ERROR: failed[0]}
        partial = Path(outdir, f"{name}.rank{rank}.pt.partial")
        torch.save(result, partial)
        partial.replace(partial.with_suffix(""))             # complete, or not there at all
        watchdog.beat(f"graded check {name}: done, waiting for the other ranks")
        comm.Barrier()


# =========================================================================== exercise 0: tensors over MPI

EX00 = "ex00_mpi_tensors"
SEND_RECV = ((EX00, "send_tensor"), (EX00, "recv_tensor"))
NONBLOCKING = ((EX00, "isend_tensor"), (EX00, "irecv_tensor"))


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
    return ex.recv_tensor(comm, source=0, tag=3)


@check("ex00.every_kind", EX00, SEND_RECV)
def send_every_kind(comm, impl):
    ex = _student(impl, EX00)
    if comm.Get_rank() == 0:
        for tag, tensor in enumerate(payloads().values()):
            ex.send_tensor(comm, tensor, dest=1, tag=tag)
        return None
    return {name: ex.recv_tensor(comm, source=0, tag=tag) for tag, name in enumerate(payloads())}


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


@check("ex00.tags", EX00, NONBLOCKING)
def match_by_tag(comm, impl):
    """Rank 0 sends A (tag 5) then B (tag 7); rank 1 asks for B first. Both 4 MB: no eager buffering helps."""
    ex = _student(impl, EX00)
    a, b = big(seed=2), big(torch.float64, seed=3)
    if comm.Get_rank() == 0:
        requests = [ex.isend_tensor(comm, a, dest=1, tag=5), ex.isend_tensor(comm, b, dest=1, tag=7)]
        for request in requests:
            request.Wait()
        return None
    request_b, got_b = ex.irecv_tensor(comm, b.shape, b.dtype, source=0, tag=7)
    request_b.Wait()
    request_a, got_a = ex.irecv_tensor(comm, a.shape, a.dtype, source=0, tag=5)
    request_a.Wait()
    return {"A": got_a, "B": got_b}


@check("ex00.exchange", EX00, NONBLOCKING)
def exchange(comm, impl):
    """Both ranks send first, then receive: only non-blocking sends get through. A transposed bfloat16 view too."""
    ex = _student(impl, EX00)
    rank, other = comm.Get_rank(), 1 - comm.Get_rank()
    mine = big(torch.bfloat16, seed=10 + rank).t()          # a non-contiguous view
    sent = ex.isend_tensor(comm, mine, dest=other, tag=1)
    received, tensor = ex.irecv_tensor(comm, (1000, 1000), torch.bfloat16, source=other, tag=1)
    received.Wait()
    sent.Wait()
    return tensor


# =========================================================================== exercise 1: the naive split

EX01 = "ex01_naive_split"
# Uneven on purpose: 5 layers are 3 + 2 on two stages and 2 + 2 + 1 on three.
MODEL = RunConfig(model="mlp", model_kwargs={"depth": 5, "width": 6, "batch": 8}, dtype="float64")


def _pipeline_stage(comm, num_stages):
    """The model (the same on every rank) and this rank's stage of it, split the reference way."""
    layers, loss_fn, (inputs, targets) = build_model(MODEL)
    ranges = partition.uniform(len(layers), num_stages)
    stage = nn.Sequential(*layers[ranges[comm.Get_rank()].start:ranges[comm.Get_rank()].stop])
    names = {id(p): n for n, p in nn.Sequential(*layers).named_parameters()}
    return stage, names, loss_fn, inputs, targets


def _grads(stage, names):
    return {names[id(p)]: p.grad.detach().clone() if p.grad is not None else None for p in stage.parameters()}


@check("ex01.stage_layers", EX01, ((EX01, "stage_layers"),), ranks=1)
def split_layers(comm, impl):
    if comm.Get_rank() != 0:
        return None
    ex = _student(impl, EX01)
    cases = {}
    for num_layers, num_stages in ((6, 2), (7, 3), (5, 5), (4, 1), (10, 4)):
        layers = [nn.Linear(1, 1) for _ in range(num_layers)]
        where = {id(layer): index for index, layer in enumerate(layers)}
        stages = []
        for s in range(num_stages):
            got = ex.stage_layers(layers, num_stages, s)
            stages.append(type(got).__name__ if not isinstance(got, nn.Sequential)
                          else [where.get(id(m), "a copy, not the same layer object") for m in got])
        cases[(num_layers, num_stages)] = stages
    try:
        got = ex.stage_layers([nn.Linear(1, 1) for _ in range(3)], 4, 0)
        too_many = f"returned {got!r}"
    except ValueError:
        too_many = "ValueError"
    except Exception as err:    # the student's own bug: report it, don't crash the check
        too_many = f"{type(err).__name__}: {err}"
    return {"cases": cases, "too_many_stages": too_many}


@check("ex01.forward", EX01, ((EX01, "stage_forward"),) + SEND_RECV, ranks=3)
def forward(comm, impl):
    ex = _student(impl, EX01)
    results = {}
    for num_stages in (2, 3):
        sub = _first(comm, num_stages)
        if sub is None:
            continue
        stage, _, _, inputs, _ = _pipeline_stage(sub, num_stages)
        rank = sub.Get_rank()
        x, y = ex.stage_forward(sub, stage, inputs if rank == 0 else None)
        results[num_stages] = {"output": y.detach() if rank == num_stages - 1 else None,
                               "input_requires_grad": bool(x.requires_grad)}
        sub.Free()
    return results


@check("ex01.backward", EX01, ((EX01, "stage_forward"), (EX01, "stage_backward")) + SEND_RECV, ranks=3)
def backward(comm, impl):
    ex = _student(impl, EX01)
    results = {}
    for num_stages in (2, 3):
        sub = _first(comm, num_stages)
        if sub is None:
            continue
        stage, names, loss_fn, inputs, targets = _pipeline_stage(sub, num_stages)
        rank = sub.Get_rank()
        x, y = ex.stage_forward(sub, stage, inputs if rank == 0 else None)
        ex.stage_backward(sub, x, loss_fn(y, targets) if rank == num_stages - 1 else y)
        results[num_stages] = _grads(stage, names)
        sub.Free()
    return results


@check("ex01.naive_step", EX01, ((EX01, "naive_step"),) + SEND_RECV, ranks=3)
def naive_step(comm, impl):
    ex = _student(impl, EX01)
    results = {}
    for num_stages in (1, 2, 3):
        sub = _first(comm, num_stages)
        if sub is None:
            continue
        stage, names, loss_fn, inputs, targets = _pipeline_stage(sub, num_stages)
        rank = sub.Get_rank()
        loss = ex.naive_step(sub, stage, inputs if rank == 0 else None,
                             targets if rank == num_stages - 1 else None, loss_fn)
        results[num_stages] = {"loss": loss, "grads": _grads(stage, names)}
        sub.Free()
    return results


# =========================================================================== exercises 2 and 3: the executor

def schedule_runs(impl: str, spec: str, cases) -> list[RunConfig]:
    """Runs of the student's generator ``module:function`` by pipeline_ref's training loop, one per (stages, microbatches)."""
    return [RunConfig(schedule=f"{impl}.{spec}", pp=p, microbatches=m, model="mlp",
                      model_kwargs={"depth": 6, "width": 8, "batch": 12}, dtype="float64",
                      collect_grads=True, sync_sends=True, stall_timeout=30) for p, m in cases]


# Microbatches fewer than, as many as, and more than the stages (the simulator tests cover many more sizes).
GPIPE_CASES = ((2, 2), (3, 2), (3, 6))
ONE_F_ONE_B_CASES = ((2, 2), (3, 1), (3, 6))


def _executor(comm, impl, spec, cases):
    from pipeline_ref.train import run_many
    results = run_many(comm, schedule_runs(impl, spec, cases))
    return results if comm.Get_rank() == 0 else None


@check("ex02.executor", "ex02_gpipe", (("ex02_gpipe", "gpipe"),), ranks=3)
def gpipe_on_ranks(comm, impl):
    return _executor(comm, impl, "ex02_gpipe:gpipe", GPIPE_CASES)


@check("ex03.executor", "ex03_1f1b", (("ex03_1f1b", "one_f_one_b"),), ranks=3)
def one_f_one_b_on_ranks(comm, impl):
    return _executor(comm, impl, "ex03_1f1b:one_f_one_b", ONE_F_ONE_B_CASES)


# The checks of exercises 4 and 6 live in rank_checks_parallel.py; importing it registers them in CHECKS.
from tests.exercises import rank_checks_parallel  # noqa: E402,F401

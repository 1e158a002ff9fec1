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

import functools
import importlib
import inspect
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pipeline_ref.faults import watchdog


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
    """The student's module; each public function tells the watchdog it runs ("in your ex00_....send_tensor"),
    so a rank stuck in one (a deadlock, an endless loop) is reported by the function's name."""
    loaded = importlib.import_module(f"{impl}.{module}")
    names = {}
    for name, value in vars(loaded).items():
        if inspect.isfunction(value) and not name.startswith("_"):
            value = _announced(value, f"{module}.{name}")
        names[name] = value
    return types.SimpleNamespace(**names)


def _announced(function, name: str):
    @functools.wraps(function)
    def call(*args, **kwargs):
        before = watchdog.doing()
        watchdog.beat(f"in your {name}")
        try:
            return function(*args, **kwargs)
        finally:
            watchdog.beat(before)
    return call


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
        # Not watched: a rank that is done waits for as long as the others take; a stuck one reports itself.
        watchdog.beat(f"graded check {name}: done, waiting for the other ranks", watched=False)
        comm.Barrier()


EX00 = "ex00_mpi_tensors"
EX01 = "ex01_naive_split"       # imports mpi4py too: tested on ranks only (conftest.py)
SEND_RECV = ((EX00, "send_tensor"), (EX00, "recv_tensor"))
NONBLOCKING = ((EX00, "isend_tensor"), (EX00, "irecv_tensor"))


# The checks of exercise 0 live in rank_checks_tensors.py, of 1-3 in rank_checks_pipeline.py, of 4, 6 and 7 in
# rank_checks_parallel.py; importing them registers them in CHECKS.
from tests.exercises import rank_checks_tensors, rank_checks_pipeline, rank_checks_parallel  # noqa: E402,F401,I001

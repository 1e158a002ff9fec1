"""What this rank is doing right now, and a watchdog that ends a stuck run.

A rank is one process, so "what am I doing" is process state: the executor calls
``beat("B3 of step 0: waiting for the gradient from rank 2")`` before each thing
that can block. If nothing new is reported for ``stall_timeout`` seconds, the
watchdog thread prints the rank and its last report to stderr and exits the
process; ``mpiexec`` then ends every other rank. A run therefore fails with a
message that names the rank and what it was doing, instead of hanging.
(The thread can act while the main thread is blocked in MPI because mpi4py
releases the GIL during blocking calls.)
"""
from __future__ import annotations

import os
import sys
import threading
import time

_rank: int = -1
_doing: str = "starting"
_since: float | None = time.monotonic()
MARK = "[pipeline_ref]"   # launch.py finds the ranks' reports in stderr by this prefix


def beat(doing: str, watched: bool = True) -> None:
    """Report what this rank does now; ``watched=False`` for waits that may rightly last (an idle rank)."""
    global _doing, _since
    _doing, _since = doing, time.monotonic() if watched else None


def doing() -> str:
    return _doing


def report(message: str) -> None:
    # One write per report, so two ranks' lines do not interleave.
    sys.stderr.write(f"{MARK} rank {_rank}: {message}\n")
    sys.stderr.flush()


def abort_all(comm, code: int) -> None:
    """End every rank of ``comm`` now, this one included; never returns.

    MPICH's ``MPI_Abort`` may return before the kill it asks for arrives (seen with MPICH 5),
    so this process leaves by itself: nothing after the failure runs, no traceback is printed.
    """
    sys.stdout.flush()      # os._exit below drops what is still buffered
    sys.stderr.flush()
    comm.Abort(code)
    os._exit(code)


def start(rank: int, stall_timeout: float | None) -> None:
    """Remember this process's rank; if ``stall_timeout`` is set, watch for stalls."""
    global _rank
    _rank = rank
    if not stall_timeout:
        return

    def watch():
        while True:
            time.sleep(min(1.0, stall_timeout / 4))
            since = _since
            stalled = 0.0 if since is None else time.monotonic() - since
            if stalled > stall_timeout:
                report(f"stuck for {stalled:.0f} s while {_doing}; ending the run")
                os._exit(124)

    threading.Thread(target=watch, name="pipeline_ref-watchdog", daemon=True).start()

"""What this rank is doing right now, and a watchdog that ends a stuck or orphaned rank.

A rank is one process, so "what am I doing" is process state: the executor calls
``beat("B3 of step 0: waiting for the gradient of microbatch 3 from rank 2")`` before
each thing that can block. A thread of the rank (``start``) then watches two things:

* **stalls**: if nothing new is reported for ``stall_timeout`` seconds, it prints the rank
  and its last report to stderr and exits the process; ``mpiexec`` then ends every other
  rank. A run fails with a message naming the rank and what it was doing, instead of
  hanging. A report that says "waiting for" (or "all-reducing", a collective that waits for
  the other replicas) gets a little longer (a quarter more, at least 1 s), so when one rank
  hangs computing and its neighbour waits for it, the one that hangs is the one named first.
* **its launcher**: the processes between this rank and the one that started the run
  (``launch()``'s Python, or just the rank's parent under a plain ``mpiexec``/``srun``).
  If any of them goes (killed, interrupted, a Jupyter kernel restarted), the rank exits
  within about half a second, so no rank outlives its launcher whatever ended it. A process
  that goes has its children handed to another parent, so "my parent is no longer the one
  I started with" is the one test, for every cause (Linux ``/proc``; elsewhere only the
  rank's own parent is watched).

Every report also goes to a heartbeat file (``rank<r>.beat`` in the run's folder, a small
memory-mapped file, so a report costs a memory copy, not a system call). The kernel keeps
what was written even when the rank is killed with SIGKILL, so the launcher can say what
a rank that vanished was doing, and what every other rank was doing (``read_heartbeat``).

How long is a stall (``STALL_SECONDS``, the defaults of ``launch()`` and of ``run``): on a CPU,
20 s. Every action of the lessons' and tests' models takes milliseconds, so 20 s is a margin of
thousands and still ends a hung notebook cell in seconds; the ranks' imports of torch, seconds
apart on a busy machine, are not counted (``_rank`` waits for every rank before watching). On a
GPU, 120 s: a first step there pays for CUDA's context, cuBLAS handles and loading kernels, and
a real model's checkpoint being saved keeps the other ranks waiting. Lessons that show a
deadlock on purpose pass 2 or 3 s. A rank's stall report names what it waited for ("... from
rank 2"), and the launcher lists what every other rank was doing.

(The thread can act while the main thread is blocked in MPI because mpi4py releases the
GIL during blocking calls.)
"""
from __future__ import annotations

import mmap
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

MARK = "[pipeline_ref]"   # launch.py finds the ranks' reports in stderr by this prefix
STALL_SECONDS = {"cpu": 20.0, "cuda": 120.0}   # default stall limits, by device (see above)
STALLED, ORPHANED = 124, 125          # this module's exit codes
_HEADER = struct.Struct("<d?H")       # wall time of the report, watched?, length of the text in bytes
HEARTBEAT_BYTES = 512
_POLL = 0.5                           # seconds between looks: a lost launcher is noticed this fast

_rank: int = -1
_where: str = ""          # " (stage 1, replica 1)" with data parallelism: the rank's place, in its reports
_doing: str = "starting"
_since: float | None = time.monotonic()
_board: mmap.mmap | None = None


def beat(doing: str, watched: bool = True) -> None:
    """Report what this rank does now; ``watched=False`` for waits that may rightly last (an idle rank)."""
    global _doing, _since
    _doing, _since = doing, time.monotonic() if watched else None
    if _board is not None:
        _write(_board, doing, watched)


def doing() -> str:
    return _doing


def locate(where: str) -> None:
    """Say where this rank sits (``"stage 1, replica 1"``) in its reports, beside its world rank."""
    global _where
    _where = f" ({where})" if where else ""


def report(message: str) -> None:
    # One write per report, so two ranks' lines do not interleave.
    try:
        sys.stderr.write(f"{MARK} rank {_rank}{_where}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):     # nobody reads our stderr any more (the launcher is gone)
        pass


def abort_all(comm, code: int) -> None:
    """End every rank of ``comm`` now, this one included; never returns.

    MPICH's ``MPI_Abort`` may return before the kill it asks for arrives (seen with MPICH 5),
    so this process leaves by itself: nothing after the failure runs, no traceback is printed.
    """
    sys.stdout.flush()      # os._exit below drops what is still buffered
    sys.stderr.flush()
    comm.Abort(code)
    os._exit(code)


# --- heartbeat files
# --------------------------------------------------------------------------------------------

def _write(board: mmap.mmap, doing: str, watched: bool) -> None:
    text = doing.encode("utf-8", "replace")[:HEARTBEAT_BYTES - _HEADER.size]
    board[_HEADER.size:_HEADER.size + len(text)] = text
    _HEADER.pack_into(board, 0, time.time(), watched, len(text))


def read_heartbeat(path) -> tuple[str, float, bool] | None:
    """(last report, seconds since it was made, watched?) from a rank's heartbeat file; None if it has
    none."""
    try:
        data = Path(path).read_bytes()
        when, watched, length = _HEADER.unpack_from(data)
    except (OSError, struct.error):
        return None
    if when == 0:
        return None
    text = data[_HEADER.size:_HEADER.size + length].decode("utf-8", "replace")
    return text, max(0.0, time.time() - when), watched


def _open_board(path: Path) -> mmap.mmap:
    with open(path, "wb+") as f:
        f.truncate(HEARTBEAT_BYTES)
        return mmap.mmap(f.fileno(), HEARTBEAT_BYTES)


# --- who started us
# ---------------------------------------------------------------------------------------------

def _parent_of(pid: int) -> int | None:
    try:   # the name in (...) may hold spaces and parentheses: the fields after its last ")" do not
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _lineage(launcher: tuple[int, str] | None) -> list[tuple[int, int]] | None:
    """(pid, parent) of each process from this rank up to the launcher's child.

    Only the rank's own parent without a launcher (or on another host, or without /proc);
    None when the launcher should be an ancestor and is not: it is already gone.
    """
    own = [(os.getpid(), os.getppid())]
    if launcher is None or launcher[1] != socket.gethostname() or not Path("/proc/self/stat").exists():
        return own
    chain, pid = [], os.getpid()
    for _ in range(32):
        parent = _parent_of(pid)
        if parent is None or parent <= 1:
            return None
        chain.append((pid, parent))
        if parent == launcher[0]:
            return chain
        pid = parent
    return None


def _lost(chain: list[tuple[int, int]]) -> int | None:
    """The first process of ``chain`` whose parent changed (that parent is gone), or None if all are there."""
    for pid, parent in chain:
        now = os.getppid() if pid == os.getpid() else _parent_of(pid)
        if now is None and Path(f"/proc/{pid}").exists():
            continue            # could not read it this time, but it is there: not a loss
        if now != parent:
            return parent
    return None


def start(rank: int, stall_timeout: float | None, heartbeat_dir: str | None = None,
          launcher: tuple[int, str] | None = None) -> None:
    """Remember this process's rank and watch it: for stalls (if ``stall_timeout``), and for its launcher.

    ``launcher`` is (pid, host name) of the process that started the run; ``heartbeat_dir`` a folder for
    this rank's heartbeat file (none without it).
    """
    global _rank, _board
    _rank = rank
    if heartbeat_dir is not None:
        _board = _open_board(Path(heartbeat_dir) / f"rank{rank}.beat")
        _write(_board, _doing, True)
    chain = _lineage(launcher)
    if chain is None:
        report(f"the launcher (pid {launcher[0]}) was gone before this rank started; ending it")
        os._exit(ORPHANED)
    poll = min(_POLL, stall_timeout / 4) if stall_timeout else _POLL

    def watch():
        while True:
            time.sleep(poll)
            gone = _lost(chain)
            # asked twice: a loss is for good, a misread is not
            if gone is not None and _lost(chain) == gone:
                ours = launcher and gone == launcher[0]
                who = "the launcher" if ours else "a process that started this rank"
                report(f"{who} (pid {gone}) is gone; ending this rank while {_doing}")
                os._exit(ORPHANED)
            since = _since
            if not stall_timeout or since is None:
                continue
            stalled = time.monotonic() - since
            waits = "waiting for" in _doing or "all-reducing" in _doing    # a collective waits for the others
            limit = stall_timeout + (max(1.0, stall_timeout / 4) if waits else 0.0)
            if stalled > limit:
                report(f"stuck for {stalled:.0f} s while {_doing}; ending the run")
                sys.stdout.flush()
                os._exit(STALLED)

    threading.Thread(target=watch, name="pipeline_ref-watchdog", daemon=True).start()

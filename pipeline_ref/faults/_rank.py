"""The program each rank runs when ``launch.py`` starts ranks (not for direct use).

    mpiexec -n N python -m mpi4py -m pipeline_ref.faults._rank PAYLOAD OUTDIR

PAYLOAD is a pickle of (target "pkg.module:function", args, kwargs, stall_timeout, launcher), where launcher
is the (pid, host name) of the process that called ``launch()``. The rank starts its watchdog first (before
importing torch or the target, which takes seconds), so it leaves at once if its launcher goes; it writes its
pid and a heartbeat file into OUTDIR (so the launcher can make sure it is gone, and say what it was doing),
then calls
``function(MPI.COMM_WORLD, *args, **kwargs)`` and saves what it returns to OUTDIR/rank<r>.pt. If it raises,
the rank prints one line naming itself, what it was doing, the error and the line of the user's code it came
from (launch.py reads it), then the exception propagates and ``python -m mpi4py`` aborts every rank (a refused
configuration aborts at once, without a traceback: the one line is the whole story). A rank that leaves before
its target returns, with exit code 0 (``sys.exit(0)``, ``os._exit(0)``), says so the same way, with its last
action: the others cannot go on without it, and MPI would otherwise show it as a success, or blame a rank it
killed while cleaning up.
"""
import importlib
import os
import pickle
import sys
import sysconfig
import time
import traceback

from mpi4py import MPI

from pipeline_ref.faults import watchdog

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # pipeline_ref/
_LIBRARIES = {os.path.abspath(sysconfig.get_path(p)) for p in ("stdlib", "platstdlib", "purelib", "platlib")}


def _where(err: BaseException) -> str:
    """" (at exercises/ex03_1f1b.py:42)": the deepest frame of the user's code (not the standard library, an
    installed package or pipeline_ref itself), looked for first in the innermost exception of a chain (an
    error re-raised with more words keeps the user's line in its cause); "" when the error is pipeline_ref's
    own (a NaN it found, a refused configuration: the message says it all, and the traceback follows)."""
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    frames = [f for e in reversed(chain) for f in reversed(traceback.extract_tb(e.__traceback__))]
    ours = [f for f in frames
            if not any(os.path.abspath(f.filename).startswith(lib + os.sep) for lib in _LIBRARIES)]
    users = [f for f in ours if not os.path.abspath(f.filename).startswith(_PACKAGE + os.sep)]
    frame = (users or [None])[0]
    if frame is None:
        return ""
    path = os.path.abspath(frame.filename)
    shown = os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path
    return f" (at {shown}:{frame.lineno})"


def _left_early(how: str) -> str:
    """Report that this rank leaves before its target returned (the others would wait for it); the message."""
    message = f"left the run early ({how}) while {watchdog.doing()}"
    watchdog.beat(message, watched=False)      # the heartbeat keeps it if stderr is cut short
    watchdog.report(message)
    return message


def _reporting_exit(real_exit):
    """``os._exit`` that first reports an exit with code 0 (a success, to MPI) in the middle of the run."""
    def leave(code: int):
        if code == 0:
            _left_early("os._exit(0), exit code 0")
        real_exit(code)
    return leave


def _wait_sleeping(comm, poll: float = 0.001) -> None:
    """A barrier that sleeps between polls (as ``machine.wait_quietly``, a layer above): MPICH's blocking
    Barrier spins, and a rank that has started would take a core from the ranks still importing torch."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll)


def main(payload_path: str, outdir: str) -> None:
    with open(payload_path, "rb") as f:
        target, args, kwargs, stall_timeout, launcher = pickle.load(f)
    rank = MPI.COMM_WORLD.Get_rank()
    with open(f"{outdir}/rank{rank}.pid", "w") as f:   # so the launcher can make sure we are gone
        f.write(str(os.getpid()))
    watchdog.start(rank, stall_timeout, heartbeat_dir=outdir, launcher=launcher)
    try:
        # Not watched: ranks import torch seconds apart on a busy machine, and that is not a stall.
        watchdog.beat(f"importing {target}", watched=False)
        module_name, _, function_name = target.partition(":")
        function = getattr(importlib.import_module(module_name), function_name)
        watchdog.beat("waiting for the other ranks to start", watched=False)
        _wait_sleeping(MPI.COMM_WORLD)
        watchdog.beat(f"starting {target}")
        real_exit, os._exit = os._exit, _reporting_exit(os._exit)
        try:
            result = function(MPI.COMM_WORLD, *args, **kwargs)
        finally:
            os._exit = real_exit
    except SystemExit as err:     # sys.exit() inside the target: not a failure to MPI if its code is 0
        _left_early(f"sys.exit({err.code!r}), exit code {0 if err.code is None else err.code}")
        watchdog.abort_all(MPI.COMM_WORLD, 1)
    except BaseException as err:
        detail = traceback.format_exception_only(type(err), err)[-1].strip()
        refused = getattr(err, "refusal", False)    # a ConfigError or TransportError: the request refused
        message = f"failed while {watchdog.doing()}: {detail}{'' if refused else _where(err)}"
        # kept in the heartbeat file too: an abort can cut stderr short
        watchdog.beat(message, watched=False)
        watchdog.report(message)
        if refused:
            watchdog.abort_all(MPI.COMM_WORLD, 2)   # the user's request, refused: the line above says it all
        raise
    watchdog.beat("saving the result", watched=False)   # importing torch can take seconds on a busy machine
    import torch   # only now: a target that needs no torch starts in a fraction of a second
    torch.save(result, f"{outdir}/rank{rank}.pt")
    watchdog.beat("finished", watched=False)


if __name__ == "__main__":
    main(*sys.argv[1:3])

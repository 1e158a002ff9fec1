"""Start N MPI ranks from Python (a script, pytest, a notebook) and collect what they return.

    from pipeline_ref import launch
    results = launch.launch(2, "pipeline_ref.train:run_rank", RunConfig(pp=2), timeout=120)
    results[0]          # what rank 0 returned

Under the hood: ``mpiexec -n N python -m mpi4py -m pipeline_ref.faults._rank ...``, with
``mpiexec`` taken from this Python's own environment (the ``mpich`` wheel puts it
next to the interpreter), never from PATH. ``python -m mpi4py`` makes an uncaught
exception on one rank abort them all. What can go wrong, and what ends it:

* a rank raises, or stops progressing for ``stall_timeout`` seconds (its watchdog), or is
  killed: :class:`LaunchError`, whose first line names the rank, what it was doing and why
  it ended (``rank 1 died (signal 9, SIGKILL) while B3 of step 2: computing``), followed by
  what every other rank was doing (their heartbeat files, ``watchdog.read_heartbeat``);
* the whole run takes longer than ``timeout``: mpiexec and everything below it is killed;
* this process is interrupted (KeyboardInterrupt: Ctrl-C, a notebook's "interrupt kernel")
  or sent SIGTERM: the ranks and mpiexec are killed first, then the KeyboardInterrupt goes on
  (a notebook shows the usual interrupt) and SIGTERM does what it would have done;
* this process dies some other way (SIGKILL, a kernel restart): every rank's watchdog sees
  its launcher gone and exits within a second, and mpiexec follows its ranks.

``stall_timeout`` defaults to 20 s (``STALL_SECONDS``): the lessons' and tests' CPU models take
milliseconds an action, so a hung cell ends in seconds; pass more for real training on GPUs
(``run --device cuda`` defaults to 120 s: a first GPU step pays for CUDA's start). ``None`` turns
stall detection off. watchdog.py says why these numbers.

This module does not import MPI: the calling process stays an ordinary Python.
"""
from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline_ref.faults import diagnosis, watchdog

MARK = watchdog.MARK      # the prefix of the ranks' own reports
STALL_SECONDS = watchdog.STALL_SECONDS["cpu"]    # CPU ranks; run --device cuda gives 120 s


class LaunchError(RuntimeError):
    """The ranks failed, hung or could not start; the first line of the message says which rank and why."""


class _Terminated(BaseException):
    """SIGTERM arrived while the ranks ran (raised by our handler, so the ranks are cleaned up first)."""


def mpiexec() -> Path:
    for candidate in (Path(sys.prefix) / "bin" / "mpiexec", Path(sys.executable).parent / "mpiexec"):
        if candidate.exists():
            return candidate
    raise LaunchError(f"no mpiexec next to {sys.executable}; install MPI into this environment "
                      f"with `pip install mpi4py mpich` (or run `make env`)")


def _pump(stream, sink: list, echo) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        if echo is not None:
            echo.write(line)
            echo.flush()


def _drain(pumps: list, limit: float = 60.0) -> None:
    """Read the ranks' output to its end before going on. On a loaded machine the pumps can lag seconds behind
    mpiexec's exit (a rank still holding the pipe, or no core free to read it); lines left unread would be
    lost, and a run would end without its steps and without a word. If the output is still open after
    ``limit`` s, say so."""
    deadline = time.monotonic() + limit
    for t in pumps:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in pumps):
        sys.stderr.write(f"{MARK} launch: the ranks' output was still open {limit:g} s after mpiexec ended "
                         f"(a process it started holds it); lines printed after this are not shown\n")
        sys.stderr.flush()


@contextmanager
def _sigterm_raises():
    """SIGTERM raises _Terminated here for the duration (only the main thread may set handlers; a SIGTERM that
    is ignored stays ignored). Without this, SIGTERM would end this process at once and leave mpiexec
    running."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield
        return

    def handler(signum, frame):
        raise _Terminated(signum, previous)
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def handed_on(value):
    """``value`` if it pickles, else None: what ``launch`` can hand its ranks (they receive their arguments
    pickled). A run's preflight may not pickle (a user's factory may return a lambda as its loss): then each
    rank prepares for itself."""
    try:
        pickle.dumps(value)
    except (pickle.PicklingError, AttributeError, TypeError):
        return None
    return value


def launch(num_ranks: int, target: str, *args, timeout: float = 300,
           stall_timeout: float | None = STALL_SECONDS,
           echo: bool = False, threads_per_rank: int = 1, env: dict | None = None, **kwargs) -> list:
    """Run ``target(comm, *args, **kwargs)`` on ``num_ranks`` ranks; return each rank's result.

    ``echo`` streams the ranks' output here as it comes (progress of long runs);
    otherwise it is kept and shown only if the run fails.
    """
    if not isinstance(num_ranks, int) or num_ranks < 1:
        raise LaunchError(f"num_ranks must be a positive integer, got {num_ranks!r}")
    with tempfile.TemporaryDirectory(prefix="pipeline_ref-") as tmp:
        payload = Path(tmp) / "payload.pkl"
        launcher = (os.getpid(), socket.gethostname())    # each rank's watchdog watches this process
        payload.write_bytes(pickle.dumps((target, args, kwargs, stall_timeout, launcher)))
        command = [str(mpiexec()), "-n", str(num_ranks), sys.executable, "-m", "mpi4py",
                   "-m", "pipeline_ref.faults._rank", str(payload), tmp]
        full_env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_rank),
                    "MKL_NUM_THREADS": str(threads_per_rank), **(env or {})}
        out, err = [], []
        with _sigterm_raises():
            try:
                # One thread per rank by default: ranks sharing cores would otherwise fight over them.
                # A session of its own: a Ctrl-C in a terminal reaches only us, and we end the ranks.
                process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                           env=full_env, start_new_session=True)
                pumps = [threading.Thread(target=_pump,
                                          args=(process.stdout, out, sys.stdout if echo else None),
                                          daemon=True),
                         threading.Thread(target=_pump,
                                          args=(process.stderr, err, sys.stderr if echo else None),
                                          daemon=True)]
                for t in pumps:
                    t.start()
                try:
                    code, timed_out = process.wait(timeout=timeout), False
                except subprocess.TimeoutExpired:
                    _kill_tree(process.pid)
                    process.wait()
                    code, timed_out = process.returncode, True
                _drain(pumps)
                if timed_out or code != 0:
                    _kill_ranks(Path(tmp), str(payload))
                    raise LaunchError(diagnosis.failure(num_ranks, code, timed_out, timeout, out, err,
                                                        Path(tmp)))
                results, missing = _results(Path(tmp), num_ranks)
            except (KeyboardInterrupt, _Terminated) as stop:   # also while the results are read: harmless
                _interrupted(stop, locals().get("process"), Path(tmp), str(payload), num_ranks)
                if isinstance(stop, KeyboardInterrupt):
                    raise
                previous = stop.args[1]           # then SIGTERM does what it would have done without us
                if callable(previous):
                    previous(signal.SIGTERM, None)
                else:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    os.kill(os.getpid(), signal.SIGTERM)
                raise LaunchError("the run was ended by SIGTERM") from None
        if missing:       # e.g. a rank left early with code 0 and MPI ended the others
            raise LaunchError(diagnosis.missing_result(missing[0], num_ranks, code, timeout, out, err,
                                                       Path(tmp)))
        return results



def _results(tmp: Path, num_ranks: int) -> tuple[list, list[int]]:
    """(what each rank returned, in rank order; the ranks that left no result)."""
    import torch   # only now: a failed launch should not pay for it
    paths = [tmp / f"rank{rank}.pt" for rank in range(num_ranks)]
    missing = [rank for rank, path in enumerate(paths) if not path.exists()]
    return [torch.load(path, weights_only=False) for path in paths if path.exists()], missing


def _interrupted(stop: BaseException, process, tmp: Path, payload: str, num_ranks: int) -> None:
    """Kill mpiexec, its proxies and the ranks, then say on stderr what the ranks were doing."""
    doing = diagnosis.last_actions(tmp, num_ranks)
    if process is not None:
        _kill_tree(process.pid)
    _kill_ranks(tmp, payload)
    if process is not None:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    why = "KeyboardInterrupt" if isinstance(stop, KeyboardInterrupt) else "SIGTERM"
    lines = "".join(f"\n  {line}" for line in doing)
    sys.stderr.write(f"{MARK} launch: {why}; stopped mpiexec and its {num_ranks} rank(s), which were "
                     f"doing:{lines}\n")
    sys.stderr.flush()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``. Hydra starts its proxy and each rank in a session of their own,
    so killing mpiexec's process group would leave the ranks running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL mpiexec and everything it started: nothing is left behind."""
    victims = [pid] + (_descendants(pid) if Path("/proc").is_dir() else [])
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_ranks(tmp: Path, payload: str, grace: float = 5.0) -> None:
    """After a failure, end any rank still alive: mpiexec may exit before its ranks are gone.

    Waits (up to ``grace`` s) until each is gone: a killed process on a loaded machine can take a moment
    to leave, and the launcher's caller is promised that no rank outlives it.
    """
    killed = []
    for pid_file in tmp.glob("rank*.pid"):
        try:
            pid = int(pid_file.read_text())
            if payload in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        except (OSError, ValueError):
            pass    # already gone, or the pid file half written
    deadline = time.monotonic() + grace
    while killed and time.monotonic() < deadline:
        killed = [pid for pid in killed if _running(pid)]
        if killed:
            time.sleep(0.01)


def _running(pid: int) -> bool:
    """Whether ``pid`` is still a live process (a zombie has run its course: only its parent's wait is
    left)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False

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
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline_ref.faults import watchdog

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
    is ignored stays ignored). Without this, SIGTERM would end this process at once and leave mpiexec running."""
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


def launch(num_ranks: int, target: str, *args, timeout: float = 300, stall_timeout: float | None = STALL_SECONDS,
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
                pumps = [threading.Thread(target=_pump, args=(process.stdout, out, sys.stdout if echo else None),
                                          daemon=True),
                         threading.Thread(target=_pump, args=(process.stderr, err, sys.stderr if echo else None),
                                          daemon=True)]
                for t in pumps:
                    t.start()
                try:
                    code, timed_out = process.wait(timeout=timeout), False
                except subprocess.TimeoutExpired:
                    _kill_tree(process.pid)
                    process.wait()
                    code, timed_out = process.returncode, True
            except (KeyboardInterrupt, _Terminated) as stop:
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
        _drain(pumps)
        if timed_out or code != 0:
            _kill_ranks(Path(tmp), str(payload))
            raise LaunchError(_failure(num_ranks, code, timed_out, timeout, out, err, Path(tmp)))
        import torch   # only now: a failed launch should not pay for it
        results = []
        for rank in range(num_ranks):
            path = Path(tmp) / f"rank{rank}.pt"
            if not path.exists():     # a rank left early with code 0 and MPI ended the others: it said so
                said = (any(line.startswith(MARK) for line in err)
                        or _beats(Path(tmp), num_ranks, "left the run"))
                raise LaunchError(_failure(num_ranks, code, False, timeout, out, err, Path(tmp)) if said
                                  else f"rank {rank} exited without a result\n" + _tail(out, err))
            results.append(torch.load(path, weights_only=False))
        return results


def _interrupted(stop: BaseException, process, tmp: Path, payload: str, num_ranks: int) -> None:
    """Kill mpiexec, its proxies and the ranks, then say on stderr what the ranks were doing."""
    doing = watchdog.last_actions(tmp, num_ranks)
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
    sys.stderr.write(f"{MARK} launch: {why}; stopped mpiexec and its {num_ranks} rank(s), which were doing:{lines}\n")
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


def _kill_ranks(tmp: Path, payload: str) -> None:
    """After a failure, end any rank still alive: mpiexec may exit before its ranks are gone."""
    for pid_file in tmp.glob("rank*.pid"):
        try:
            pid = int(pid_file.read_text())
            if payload in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass    # already gone, or the pid file half written


def _tail(out: list, err: list, lines: int = 30) -> str:
    text = "".join(out[-lines:]) + "".join(err[-lines:])
    return f"--- last lines the ranks printed ---\n{text}" if text.strip() else ""


def _merge_reports(reports: list[str]) -> list[str]:
    """"rank 0: X" and "rank 1: X" become "ranks 0, 1: X" (a refused configuration fails every rank alike),
    in the order the first of each was reported."""
    ranks_by_message: dict[str, list[int]] = {}
    for report in reports:
        head, _, message = report.partition(": ")
        if head.startswith("rank ") and head[5:].isdigit():
            ranks_by_message.setdefault(message, []).append(int(head[5:]))
        else:
            ranks_by_message.setdefault(report, [])
    merged = []
    for message, ranks in ranks_by_message.items():
        ranks = sorted(set(ranks))
        if not ranks:
            merged.append(message)
        else:
            merged.append(f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {message}")
    return merged


def _cause_first(report: str) -> int:
    """Which report is the cause: a failure, then a rank stuck on its own work, then one stuck waiting for another,
    then a rank that left because its launcher went."""
    if ": failed while " in report or ": left the run early " in report or " left the run early: " in report:
        return 0
    if ": stuck for " in report:
        return 2 if "waiting for" in report.split(" while ", 1)[-1] else 1
    return 3


def _ranks_named(report: str) -> set[int]:
    """The ranks a report is about: "rank 3 (stage 1, replica 1): ..." -> {3}, "ranks 0, 1: ..." -> {0, 1}."""
    head = re.match(r"ranks? ([\d, ]+)", report)
    return {int(r) for r in re.findall(r"\d+", head[1])} if head else set()


def _beats(tmp: Path, num_ranks: int, prefix: str) -> list[tuple[int, str]]:
    """(rank, last report) of the ranks whose heartbeat file's last report starts with ``prefix``."""
    beats = [(r, watchdog.read_heartbeat(tmp / f"rank{r}.beat")) for r in range(num_ranks)]
    return [(r, b[0]) for r, b in beats if b and b[0].startswith(prefix)]


def _returned_early(reports: list[str], tmp: Path) -> list[str]:
    """A rank whose target returned (exit code 0) while another was stuck waiting for it: the cause."""
    for report in reports:
        waited = re.match(r"ranks? (\d+).*: stuck for .* waiting for .* from rank (\d+)", report)
        if waited:
            beat = watchdog.read_heartbeat(tmp / f"rank{waited[2]}.beat")
            if beat and beat[0] in ("saving the result", "finished"):     # its target has returned
                return [f"rank {waited[2]} left the run early: its target returned (exit code 0) while rank "
                        f"{waited[1]} still waited for it"]
    return []


def _died(out: list, tmp: Path) -> tuple[int, str] | None:
    """(rank, how) of the process MPICH's mpiexec reports as ended badly ("BAD TERMINATION ... PID n"), if any."""
    text = "".join(out)
    found = re.search(r"PID (\d+) RUNNING AT .*\n=\s*EXIT CODE: (\d+)", text)
    if not found:
        return None
    pids = {}
    for pid_file in tmp.glob("rank*.pid"):
        try:
            pids[int(pid_file.read_text())] = int(pid_file.stem[4:])
        except ValueError:
            pass
    rank = pids.get(int(found.group(1)))
    if rank is None:
        return None
    by_signal = re.search(r"EXIT STRING: .*\(signal (\d+)\)", text)
    if by_signal:
        number = int(by_signal.group(1))
        try:
            return rank, f"signal {number}, {signal.Signals(number).name}"
        except ValueError:
            return rank, f"signal {number}"
    return rank, f"exit code {found.group(2)}"


def _failure(num_ranks, code, timed_out, timeout, out, err, tmp: Path) -> str:
    reports = _merge_reports([line.strip()[len(MARK):].strip() for line in err if line.startswith(MARK)])
    reports.sort(key=_cause_first)      # stable: among equals, the first reported first
    if not reports:     # MPI_Abort may kill the proxy before it forwards a rank's last stderr line
        reports = _merge_reports([f"rank {r}: {text}" for r, text in _beats(tmp, num_ranks, "failed while")
                                  + _beats(tmp, num_ranks, "left the run")])
    reports = _returned_early(reports, tmp) + reports
    named = set().union(*(_ranks_named(report) for report in reports))
    died = None if reports else _died(out, tmp)
    if died is not None:
        rank, how = died
        beat = watchdog.read_heartbeat(tmp / f"rank{rank}.beat")
        reports = [f"rank {rank} died ({how}) while {beat[0] if beat else 'starting'}"]
        named = {rank}
    limit = f"the run on {num_ranks} ranks did not finish within {timeout:.0f} s and was stopped"
    if timed_out:
        reports.insert(0, limit)
    elif code is not None and code < 0 and not reports:
        reports = [f"mpiexec (the MPI launcher) was killed by signal {-code} ({signal.Signals(-code).name})"]
    elif not reports:
        reports = [f"the run on {num_ranks} ranks failed (exit code {code}) and no rank said why"]
    others = watchdog.last_actions(tmp, num_ranks, skip=frozenset(named))
    body = "".join(f"\n  {r}" for r in reports[1:])
    if others:
        body += f"\n{'what the other ranks were doing' if named else 'what the ranks were doing'}:"
        body += "".join(f"\n  {line}" for line in others)
    return f"{reports[0]}{body}\n{_tail(out, err)}"

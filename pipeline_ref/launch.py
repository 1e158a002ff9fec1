"""Start N MPI ranks from Python (a script, pytest, a notebook) and collect what they return.

    from pipeline_ref import launch
    results = launch.launch(2, "pipeline_ref.train:run_rank", RunConfig(pp=2), timeout=120)
    results[0]          # what rank 0 returned

Under the hood: ``mpiexec -n N python -m mpi4py -m pipeline_ref._rank ...``, with
``mpiexec`` taken from this Python's own environment (the ``mpich`` wheel puts it
next to the interpreter), never from PATH. ``python -m mpi4py`` makes an uncaught
exception on one rank abort them all. Two limits stop a run that goes wrong:
each rank's watchdog ends it when nothing progresses for ``stall_timeout``
seconds, and ``timeout`` bounds the whole run (then the process group is killed,
so nothing is left behind). Either way :class:`LaunchError` names the ranks and
what they were doing.

This module does not import MPI: the calling process stays an ordinary Python.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

MARK = "[pipeline_ref]"   # the prefix of the ranks' own reports (watchdog.MARK)


class LaunchError(RuntimeError):
    """The ranks failed, hung or could not start; the message says which rank and why."""


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


def launch(num_ranks: int, target: str, *args, timeout: float = 300, stall_timeout: float | None = 60,
           echo: bool = False, threads_per_rank: int = 1, env: dict | None = None, **kwargs) -> list:
    """Run ``target(comm, *args, **kwargs)`` on ``num_ranks`` ranks; return each rank's result.

    ``echo`` streams the ranks' output here as it comes (progress of long runs);
    otherwise it is kept and shown only if the run fails.
    """
    if not isinstance(num_ranks, int) or num_ranks < 1:
        raise LaunchError(f"num_ranks must be a positive integer, got {num_ranks!r}")
    with tempfile.TemporaryDirectory(prefix="pipeline_ref-") as tmp:
        payload = Path(tmp) / "payload.pkl"
        payload.write_bytes(pickle.dumps((target, args, kwargs, stall_timeout)))
        command = [str(mpiexec()), "-n", str(num_ranks), sys.executable, "-m", "mpi4py",
                   "-m", "pipeline_ref._rank", str(payload), tmp]
        full_env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_rank),
                    "MKL_NUM_THREADS": str(threads_per_rank), **(env or {})}
        # One thread per rank by default: ranks sharing cores would otherwise fight over them.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=full_env, start_new_session=True)
        out, err = [], []
        pumps = [threading.Thread(target=_pump, args=(process.stdout, out, sys.stdout if echo else None)),
                 threading.Thread(target=_pump, args=(process.stderr, err, sys.stderr if echo else None))]
        for t in pumps:
            t.daemon = True
            t.start()
        try:
            code = process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_tree(process.pid)
            process.wait()
            code, timed_out = process.returncode, True
        for t in pumps:
            t.join(timeout=5)
        if timed_out or code != 0:
            _kill_ranks(Path(tmp), str(payload))
            raise LaunchError(_failure(num_ranks, code, timed_out, timeout, out, err))
        import torch   # only now: a failed launch should not pay for it
        results = []
        for rank in range(num_ranks):
            path = Path(tmp) / f"rank{rank}.pt"
            if not path.exists():
                raise LaunchError(f"rank {rank} exited without a result\n" + _tail(out, err))
            results.append(torch.load(path, weights_only=False))
        return results


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
        pid = int(pid_file.read_text())
        try:
            if payload in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass    # already gone


def _tail(out: list, err: list, lines: int = 30) -> str:
    text = "".join(out[-lines:]) + "".join(err[-lines:])
    return f"--- last lines the ranks printed ---\n{text}" if text.strip() else ""


def _merge_reports(reports: list[str]) -> list[str]:
    """"rank 0: X" and "rank 1: X" become "ranks 0, 1: X" (a refused configuration fails every rank alike)."""
    ranks_by_message: dict[str, list[int]] = {}
    for report in reports:
        head, _, message = report.partition(": ")
        if head.startswith("rank ") and head[5:].isdigit():
            ranks_by_message.setdefault(message, []).append(int(head[5:]))
        else:
            ranks_by_message.setdefault(report, [])
    merged = []
    for message, ranks in ranks_by_message.items():
        ranks.sort()
        if not ranks:
            merged.append(message)
        else:
            merged.append(f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {message}")
    return sorted(merged)


def _failure(num_ranks, code, timed_out, timeout, out, err) -> str:
    reports = _merge_reports(sorted({line.strip()[len(MARK):].strip() for line in err if line.startswith(MARK)}))
    if timed_out:
        head = f"the run on {num_ranks} ranks did not finish within {timeout:.0f} s and was stopped"
    else:
        head = f"the run on {num_ranks} ranks failed (exit code {code})"
    body = "\n".join("  " + r for r in reports) or "  (no rank reported what it was doing)"
    return f"{head}:\n{body}\n{_tail(out, err)}"

"""The machine a measurement ran on: free cores, how busy they are, and what to write beside the numbers.

Timings of ranks that share a core measure the OS scheduler, not the pipeline, so
the benchmarks (and the demo) warn when asked for more ranks than free cores, can
wait until other processes leave the cores, and record the CPU, versions and load
beside every table they write.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux /proc; None elsewhere): what a leak would grow."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def core_warning(num_ranks: int, free_cores: int) -> str | None:
    if num_ranks <= free_cores:
        return None
    return (f"{num_ranks} ranks on {free_cores} free core(s): ranks share cores, so these timings mean "
            f"little (utilization measures the OS scheduler, not the pipeline)")


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]          # all, idle + iowait (Linux)


def scheduler_clock() -> tuple[float, float] | None:
    """(seconds this process's main thread ran on a core, seconds it was ready but waited for one) so far.

    Linux's /proc/self/schedstat; None elsewhere. The second number is what contention costs: a rank that
    sleeps in a wait does not add to it, one that is ready to compute while another process holds its
    core does.
    """
    try:
        running, waiting = Path("/proc/self/schedstat").read_text().split()[:2]
        return int(running) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return None


class ShareMeter:
    """This process's share of the time it wanted a core, over an interval: 1.0 when nothing took its core.

    From ``scheduler_clock`` (running over running + waiting for a core). Where that is missing, CPU time
    over wall time, which also drops when the process sleeps (a yielding wait), so it reads low there.
    """

    def __init__(self):
        self.clock, self.wall, self.cpu = scheduler_clock(), time.perf_counter(), time.process_time()

    def share(self) -> float:
        now = scheduler_clock()
        if self.clock is not None and now is not None:
            running, waiting = now[0] - self.clock[0], now[1] - self.clock[1]
            return running / (running + waiting) if running + waiting > 0 else 1.0
        wall = time.perf_counter() - self.wall
        return (time.process_time() - self.cpu) / wall if wall > 0 else 1.0


def wait_until_quiet(comm, limit: float, window: float = 2.0, threshold: float = 0.1) -> None:
    """All ranks sleep until others use < ``threshold`` of the machine (or ``limit`` s passed; Linux only)."""
    from pipeline_ref.faults import watchdog
    deadline = time.monotonic() + limit
    while Path("/proc/stat").exists():
        watchdog.beat("waiting for other processes to leave the cores")
        before = _cpu_times()
        time.sleep(window)                  # while every rank sleeps, whatever runs is someone else
        (total, idle), (total0, idle0) = _cpu_times(), before
        busy = 1.0 - (idle - idle0) / max(1, total - total0)
        if comm.bcast(busy < threshold or time.monotonic() > deadline, root=0):
            return


def machine_info() -> dict:
    """Where numbers came from: CPU, cores, versions, date and how busy the machine was."""
    import datetime
    import importlib.metadata as metadata
    import platform
    import torch
    cpu = platform.processor() or "unknown"
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    versions = {}
    for package in ("mpi4py", "mpich"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"cpu": cpu, "cores": cores(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, **versions,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def machine_markdown(info: dict) -> str:
    return (f"Machine: {info['cpu']}, {info['cores']} free core(s) of {info['cpu_count']}; "
            f"{info['platform']}; Python {info['python']}, torch {info['torch']}, mpi4py {info['mpi4py']}, "
            f"MPICH {info['mpich']}; {info['date']}; load average before the run {info['load_average']}"
            + (f", after {info['load_average_after']}" if info.get("load_average_after") else "") + ".\n")


def wait_quietly(comm, poll: float = 0.0005) -> None:
    """A barrier that sleeps between polls. MPICH's blocking calls spin on a core; a rank idling in
    one would slow down the ranks that work when they share cores (a laptop, this course's CI)."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll)

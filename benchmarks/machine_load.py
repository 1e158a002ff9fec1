"""Loads to measure under: nothing, busy processes, or a mixed load of test runs and small pipeline runs.

    from machine_load import CONDITIONS, loaded
    with loaded("busy2"):          # two processes that spin on the CPU beside whatever runs inside
        ...

vs_torch.py measures both pipelines under each (``--conditions``). A condition is a load started beside
the measurement and ended after it (every process it started, by its process group id; nothing else):

    quiet           nothing started (other users of the machine still count: the load average is recorded)
    busy1, busy2    one or two Python processes spinning on a core each
    oversubscribed  nothing started; the measurement itself runs 4 ranks on 2 cores (vs_torch.py)
    mixed           what a course machine sees: a loop of a test run (pytest of the simulator's tests,
                    imports and short bursts) and a small pipeline_ref run of 2 ranks (a notebook's cell)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDITIONS = ("quiet", "busy1", "busy2", "oversubscribed", "mixed")
SPIN = [sys.executable, "-c", "while True: pass"]
MIXED = ("while :; do "
         f"{sys.executable} -m pytest -q -p no:cacheprovider tests/test_simulate.py >/dev/null 2>&1; "
         f"{sys.executable} -m pipeline_ref run -n 2 --schedule 1f1b --pp 2 --microbatches 4 --steps 20 "
         ">/dev/null 2>&1; done")


def ranks_for(condition: str, stages: int) -> int:
    """The ranks the measurement runs: 4 on 2 cores for "oversubscribed", else one per stage asked for."""
    return 4 if condition == "oversubscribed" else stages


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


@contextmanager
def loaded(condition: str):
    """Run the body with the condition's load beside it; the load's processes end when the body does."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    commands = {"busy1": [SPIN], "busy2": [SPIN, SPIN], "mixed": [["bash", "-c", MIXED]]}.get(condition, [])
    started = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True) for c in commands]
    try:
        yield started
    finally:
        for process in started:       # each load is its own process group: this ends it and its children
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()

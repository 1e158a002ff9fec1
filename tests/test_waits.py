"""What a loaded machine must not do to a run: a waiting rank gives its core away (mpi_transport.wait_yielding), and
the launcher reads its ranks' output to the end or says it could not (launch._drain). Pure, with stand-ins.

    .venv/bin/python -m pytest -q tests/test_waits.py
"""
import threading

import pytest

from pipeline_ref import launch
from pipeline_ref.engine import mpi_transport


class LateRequest:
    """An MPI request whose Test is true after ``polls`` calls."""

    def __init__(self, polls: int):
        self.polls, self.tests, self.waited = polls, 0, False

    def Test(self) -> bool:
        self.tests += 1
        return self.tests > self.polls

    def Wait(self) -> None:
        self.waited = True


@pytest.fixture
def clock(monkeypatch):
    """perf_counter and sleep of mpi_transport.py on a fake clock (1 µs per reading); records every sleep."""
    now, naps = [0.0], []

    def perf_counter():
        now[0] += 1e-6
        return now[0]
    monkeypatch.setattr(mpi_transport.time, "perf_counter", perf_counter)

    def sleep(seconds):
        naps.append(seconds)
        now[0] += seconds
    monkeypatch.setattr(mpi_transport.time, "sleep", sleep)
    return now, naps


def test_a_late_message_is_waited_for_asleep_with_naps_that_grow_with_the_wait(clock, monkeypatch):
    now, naps = clock
    monkeypatch.setattr(mpi_transport, "WAIT", "yield")
    request = LateRequest(polls=200)
    mpi_transport.wait_yielding(request)
    assert request.tests == 201 and not request.waited
    shortest, longest = mpi_transport.NAP_SECONDS
    assert naps and all(shortest <= nap <= longest for nap in naps)
    assert naps == sorted(naps) and naps[-1] == longest        # a long wait wakes rarely
    assert naps[0] == shortest and now[0] > mpi_transport.SPIN_SECONDS + sum(naps)   # it spun first
    assert naps[-2] == pytest.approx(min(longest, (now[0] - 2e-6 - naps[-1]) / 8), rel=0.01)


def test_a_message_already_there_costs_no_sleep(clock, monkeypatch):
    _, naps = clock
    monkeypatch.setattr(mpi_transport, "WAIT", "yield")
    mpi_transport.wait_yielding(LateRequest(polls=0))
    assert naps == []


def test_spin_keeps_mpis_own_wait(clock, monkeypatch):
    _, naps = clock
    monkeypatch.setattr(mpi_transport, "WAIT", "spin")
    request = LateRequest(polls=5)
    mpi_transport.wait_yielding(request)
    assert request.waited and request.tests == 0 and naps == []


def test_the_launcher_waits_for_output_that_lags_behind_and_says_when_it_gives_up(capsys):
    late_lines, release = [], threading.Event()

    def lagging_pump():                 # a reader still busy 1 s after mpiexec ended (5 s and more under load)
        release.wait(1.0)
        late_lines.append("  step 3/3  loss 0.1\n")
    pump = threading.Thread(target=lagging_pump, daemon=True)
    pump.start()
    launch._drain([pump], limit=10)
    assert late_lines and capsys.readouterr().err == ""

    stuck = threading.Thread(target=release.wait, args=(30,), daemon=True)   # a pipe nobody closes
    stuck.start()
    launch._drain([stuck], limit=0.2)
    release.set()
    err = capsys.readouterr().err
    assert "output was still open 0.2 s after mpiexec ended" in err and "not shown" in err

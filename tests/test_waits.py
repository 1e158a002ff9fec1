"""A rank that waits for a message gives its core away (message.wait_yielding): pure, with a stand-in request.

    .venv/bin/python -m pytest -q tests/test_waits.py
"""
import pytest

from pipeline_ref import message


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
    """perf_counter and sleep of message.py on a fake clock (1 µs per reading); records every sleep."""
    now, naps = [0.0], []

    def perf_counter():
        now[0] += 1e-6
        return now[0]
    monkeypatch.setattr(message.time, "perf_counter", perf_counter)

    def sleep(seconds):
        naps.append(seconds)
        now[0] += seconds
    monkeypatch.setattr(message.time, "sleep", sleep)
    return now, naps


def test_a_late_message_is_waited_for_asleep_with_naps_that_grow_with_the_wait(clock, monkeypatch):
    now, naps = clock
    monkeypatch.setattr(message, "WAIT", "yield")
    request = LateRequest(polls=200)
    message.wait_yielding(request)
    assert request.tests == 201 and not request.waited
    shortest, longest = message.NAP_SECONDS
    assert naps and all(shortest <= nap <= longest for nap in naps)
    assert naps == sorted(naps) and naps[-1] == longest        # a long wait wakes rarely
    assert naps[0] == shortest and now[0] > message.SPIN_SECONDS + sum(naps)   # it spun first
    assert naps[-2] == pytest.approx(min(longest, (now[0] - 2e-6 - naps[-1]) / 8), rel=0.01)


def test_a_message_already_there_costs_no_sleep(clock, monkeypatch):
    _, naps = clock
    monkeypatch.setattr(message, "WAIT", "yield")
    message.wait_yielding(LateRequest(polls=0))
    assert naps == []


def test_spin_keeps_mpis_own_wait(clock, monkeypatch):
    _, naps = clock
    monkeypatch.setattr(message, "WAIT", "spin")
    request = LateRequest(polls=5)
    message.wait_yielding(request)
    assert request.waited and request.tests == 0 and naps == []

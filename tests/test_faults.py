"""Fault injection: every way a run goes wrong ends it within seconds, names the rank and what it was doing, and
leaves no process behind.

    .venv/bin/python -m pytest -q tests/test_faults.py        # about a minute on 2 cores

Each fault's run carries a marker of its own in its environment, which every process of the run inherits
(mpiexec, its proxy, the ranks); "nothing left" means no process in /proc carries it any more. The runs of one
kind are started together, so the ranks' imports of torch (seconds each) overlap: the faults inside ranks from
this process's threads, the faults of the launching process from small launcher scripts (their ranks import no
torch). A rank that leaves with exit code 0 mid-run is a fault too, and with data parallelism a rank is named by its
world rank (the one mpiexec shows) and its place in the grid. Requests refused before any rank starts are
tests/test_failures.py's; NaN and inf, tests/test_nonfinite.py's.
"""
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline_ref.config import RunConfig
from pipeline_ref.launch import LaunchError, launch

ROOT = Path(__file__).resolve().parents[1]
RUN = uuid.uuid4().hex          # this test session's runs, told apart from anyone else's
MARKER = "PIPELINE_REF_FAULT_CASE"
BOUND = 30                      # seconds any fault may take to end its run


def _left(case: str) -> list[str]:
    """The processes of ``case``'s run still alive (zombies, which hold nothing, aside)."""
    wanted = f"{MARKER}={RUN}-{case}".encode()
    left = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted in environ.read_bytes().split(b"\0"):
                left.append(f"{environ.parent.name}: {(environ.parent / 'cmdline').read_bytes()[:150]}")
        except OSError:        # ended while we looked, or not ours to read
            pass
    return left


def _gone_within(case: str, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := _left(case)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _train(model: str, **options):
    return ("pipeline_ref.train:run_rank", RunConfig(pp=2, microbatches=options.pop("microbatches", 2), model=model),
            options)


# name: (target, argument, launch options), the message's first line, a line about another rank
IN_RANKS = {
    "exception": (_train("tests.rank_targets:raising_model", microbatches=4),
                  r"rank 1: failed while F1 of step 0: computing: RuntimeError: trap sprung on purpose "
                  r"\(at tests/rank_targets\.py:\d+\)", r"rank 0: \S+ of step 0: "),
    "sigkill": (_train("tests.fault_targets:killed_in_compute"),
                r"rank 1 died \(signal 9, SIGKILL\) while F1 of step 0: computing", r"rank 0: \S+ of step 0: "),
    "hang in compute": (_train("tests.rank_targets:hanging_model", stall_timeout=4),
                        r"rank 1: stuck for \d+ s while F0 of step 0: computing; ending the run",
                        r"rank 0: B0 of step 0: waiting for the gradient of microbatch 0 from rank 1 \(for "),
    "hang in a receive": (("tests.fault_targets:never_sends", None, {"stall_timeout": 4}),
                          r"rank 1: stuck for \d+ s while F0 of step 0: waiting for the activation of "
                          r"microbatch 0 from rank 0; ending the run", r"rank 0: thinking about something else \(not watched\)"),
    "crash in set-up": (_train("tests.fault_targets:crash_in_setup"),
                        r"rank 1: failed while agreeing on tensor shapes with the neighbouring stages: ValueError: "
                        r"this layer refuses its input shape \(at tests/fault_targets\.py:\d+\)", r"rank 0: "),
    "crash in the all-reduce": (("tests.fault_targets:crash_in_allreduce", RunConfig(pp=1, dp=2, microbatches=2), {}),
                                r"rank 1 died \(signal 11, SIGSEGV\) while step 0: all-reducing gradients",
                                r"rank 0: step 0: all-reducing gradients"),
    "time limit": (_train("tests.rank_targets:hanging_model", stall_timeout=None, timeout=20),
                   r"the run on 2 ranks did not finish within 20 s and was stopped",
                   r"rank 1: F0 of step 0: computing \(for "),
}


def _launch_case(case: str, num_ranks: int, target: str, arguments: list, options: dict):
    """Run ``case`` with its marker: (the launcher's message or None, seconds to the end, processes left)."""
    options = {"timeout": 60, **options, "env": {MARKER: f"{RUN}-{case}"}}
    started = time.monotonic()
    try:
        launch(num_ranks, target, *arguments, **options)
        error = None
    except LaunchError as err:
        error = str(err)
    return error, time.monotonic() - started, _gone_within(case, 1.0)


def _ends_naming(outcome, case: str, first_line: str, other_line: str) -> None:
    """The run failed within BOUND, its message's first line reads ``first_line`` and a later line (before the
    ranks' last lines) ``other_line``, and nothing was left running."""
    error, seconds, left = outcome
    assert error is not None, f"{case}: the run succeeded"
    head, _, rest = error.partition("\n")
    assert re.fullmatch(first_line, head), f"{case}: the first line is {head!r}\n{error}"
    assert re.search(other_line, rest.split("\n--- last lines")[0]), f"{case}: no line like {other_line}\n{error}"
    assert seconds < BOUND, f"{case} took {seconds:.0f} s"
    assert not left, f"{case}: processes left behind: {left}"


def _run_in_ranks(case: str):
    target, argument, options = IN_RANKS[case][0]
    return _launch_case(case, 2, target, [] if argument is None else [argument], options)


@pytest.fixture(scope="module")
def in_ranks():
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(IN_RANKS, pool.map(_run_in_ranks, IN_RANKS)))


@pytest.mark.mpi
@pytest.mark.parametrize("case", IN_RANKS)
def test_a_fault_in_a_rank_ends_the_run_naming_rank_and_action(in_ranks, case):
    _, first_line, other_rank = IN_RANKS[case]
    _ends_naming(in_ranks[case], case, first_line, other_rank)


# --- a rank that leaves with exit code 0 mid-run, and ranks named by world rank with data parallelism ----------

def _exit_train(model: str, **options):
    cfg = RunConfig(pp=2, dp=options.pop("dp", 1), microbatches=2, model=model)
    return 2 * cfg.dp, "pipeline_ref.train:run_rank", [cfg], options


# name: (ranks, target, arguments, launch options), the message's first line, another line it must hold
EXITS = {
    "os._exit(0)": (_exit_train("tests.exit_targets:os_exit_in_compute"),
                    r"rank 1: left the run early \(os\._exit\(0\), exit code 0\) while F1 of step 0: "
                    r"computing",
                    r"rank 0: "),
    "sys.exit(0)": (_exit_train("tests.exit_targets:sys_exit_in_compute"),
                    r"rank 1: left the run early \(sys\.exit\(0\), exit code 0\) while F1 of step 0: "
                    r"computing",
                    r"rank 0: "),
    "target returned": ((2, "tests.exit_targets:returns_early", [], {"stall_timeout": 4}),
                        r"rank 1 left the run early: its target returned \(exit code 0\) while rank 0 still "
                        r"waited for it",
                        r"rank 0: stuck for \d+ s while F0 of step 0: waiting for the activation of "
                        r"microbatch 0 from rank 1"),
    "dp 2": (_exit_train("tests.exit_targets:hangs_on_world_rank_3", dp=2, stall_timeout=4),
             r"rank 3 \(stage 1, replica 1\): stuck for \d+ s while F0 of step 0: computing; ending the run",
             r"rank 2\b.*waiting for the gradient of microbatch 0 from rank 3 \(stage 1\)"),
}


@pytest.fixture(scope="module")
def exits():
    with ThreadPoolExecutor(max_workers=len(EXITS)) as pool:
        return dict(zip(EXITS, pool.map(lambda case: _launch_case(case, *EXITS[case][0]), EXITS)))


@pytest.mark.mpi
@pytest.mark.parametrize("case", EXITS)
def test_a_rank_that_leaves_is_named_with_its_last_action(exits, case):
    _, first_line, other_line = EXITS[case]
    _ends_naming(exits[case], case, first_line, other_line)


# --- the launching process: interrupted, terminated, killed, or its mpiexec killed -----------------------------

LAUNCHER = """
import signal, sys
# A shell's background job starts with SIGINT ignored, and Python then installs no KeyboardInterrupt: give the
# launcher the handler an interactive Python (a terminal, a notebook kernel) has.
signal.signal(signal.SIGINT, signal.default_int_handler)
from pipeline_ref.launch import LaunchError, launch
try:
    launch(2, "tests.fault_targets:idle", 300, timeout=300, echo=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt came through", flush=True)
    sys.exit(130)
except LaunchError as err:
    print(err, flush=True)
    sys.exit(1)
"""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


def _start_launcher(case: str) -> subprocess.Popen:
    env = {**os.environ, MARKER: f"{RUN}-{case}", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", LAUNCHER], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


LAUNCHER_FAULTS = {     # what is done to the launcher, what it exits with
    "KeyboardInterrupt": (lambda p: p.send_signal(signal.SIGINT), 130),
    "SIGTERM": (lambda p: p.send_signal(signal.SIGTERM), -signal.SIGTERM),
    "SIGKILL": (lambda p: p.send_signal(signal.SIGKILL), -signal.SIGKILL),
    "mpiexec killed": (lambda p: os.kill(_children(p.pid)[0], signal.SIGKILL), 1),
}


@pytest.fixture(scope="module")
def launcher_faults():
    started = {case: _start_launcher(case) for case in LAUNCHER_FAULTS}
    outcomes = {}
    for case, process in started.items():
        seen = []
        for line in process.stdout:         # rank 0 echoes "all ranks ready" once they are up
            seen.append(line)
            if "all ranks ready" in line:
                break
        begun = time.monotonic()
        try:
            LAUNCHER_FAULTS[case][0](process)
            left = _gone_within(case, 5.0)
        except (IndexError, ProcessLookupError) as err:    # the launcher had already ended: say how
            left = [f"could not do {case} ({err!r}): the launcher's run ended by itself"]
        gone_after = time.monotonic() - begun
        out, err = process.communicate(timeout=BOUND)
        out = "".join(line for line in seen if "all ranks ready" not in line) + out
        outcomes[case] = (process.returncode, out, err, gone_after, left)
    return outcomes


@pytest.mark.mpi
@pytest.mark.parametrize("case", LAUNCHER_FAULTS)
def test_no_rank_outlives_its_launcher(launcher_faults, case):
    code, out, err, seconds, left = launcher_faults[case]
    assert not left, f"{case}: processes left 5 s after: {left}\n{err}"
    assert code == LAUNCHER_FAULTS[case][1], f"{case}: exit code {code}\n{out}\n{err}"
    if case in ("KeyboardInterrupt", "SIGTERM"):    # said on stderr, after the cleanup
        assert "KeyboardInterrupt came through" in out or case == "SIGTERM"
        assert f"launch: {case}; stopped mpiexec and its 2 rank(s)" in err, err
        assert "rank 1: waiting, as the test asked" in err, err
    if case == "mpiexec killed":
        assert out.startswith("mpiexec (the MPI launcher) was killed by signal 9 (SIGKILL)\n"), out
        assert "rank 1: waiting, as the test asked" in out, out


# --- the parts, without MPI ----------------------------------------------------------------------------------------

def test_a_heartbeat_survives_its_writer(tmp_path):
    program = ("import os, time\n"
               "from pipeline_ref.faults import watchdog\n"
               f"watchdog.start(3, None, heartbeat_dir={str(tmp_path)!r})\n"
               "watchdog.beat('W7 of step 4: computing ' + 'x' * 1000)\n"
               "os.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, timeout=60)
    assert done.returncode == -signal.SIGKILL
    from pipeline_ref.faults.watchdog import read_heartbeat
    text, age, watched = read_heartbeat(tmp_path / "rank3.beat")
    assert text.startswith("W7 of step 4: computing xxx") and len(text) < 512 and watched and 0 <= age < 30


def test_the_rank_mpich_reports_killed_is_found_by_its_pid(tmp_path):
    from pipeline_ref.faults.diagnosis import rank_that_died
    (tmp_path / "rank0.pid").write_text("4100")
    (tmp_path / "rank1.pid").write_text("4101")
    mpich = ["\n", "=" * 83 + "\n", "=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n",
             "=   PID 4101 RUNNING AT node7\n", "=   EXIT CODE: 9\n", "=   CLEANING UP REMAINING PROCESSES\n",
             "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)\n"]
    assert rank_that_died(mpich, tmp_path) == (1, "signal 9, SIGKILL")
    assert rank_that_died(mpich[:-1], tmp_path) == (1, "exit code 9")
    assert rank_that_died(["nothing of the sort\n"], tmp_path) is None


def test_a_failure_whose_stderr_was_cut_short_is_read_from_its_heartbeat(tmp_path):
    """MPI_Abort can kill the proxy before it forwards a rank's last line: the heartbeat file still says it."""
    from pipeline_ref.faults import diagnosis
    from pipeline_ref.faults import watchdog
    board = watchdog._open_board(tmp_path / "rank1.beat")
    watchdog._write(board, "failed while checking the configuration: ConfigError: too few layers", watched=False)
    board.flush()
    message = diagnosis.failure(2, 2, False, 60, [], [], tmp_path)
    assert message.startswith("rank 1: failed while checking the configuration: ConfigError: too few layers")
    assert "no rank said why" not in message

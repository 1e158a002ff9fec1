"""Bad requests are refused before any communication, in one line that says what to change.

Faults once ranks run (a rank that raises, hangs, is killed; the launcher interrupted) are tests/test_faults.py's.
"""
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.preflight import check_config, check_fits
from pipeline_ref.launch import LaunchError, launch


def test_world_size_must_equal_pp_times_dp():
    with pytest.raises(ConfigError, match=r"3 ranks but --pp 2 x --dp 1 needs 2"):
        check_config(RunConfig(pp=2), world_size=3)


def test_more_stages_than_layers():
    with pytest.raises(ConfigError, match=r"--pp 9 stages but the model has only 8 layers"):
        check_fits(RunConfig(pp=9), num_layers=8, batch_size=32)


def test_batch_not_divided_by_microbatches():
    with pytest.raises(ConfigError, match=r"batch of 10 samples does not split into 1 replica\(s\) x 4"):
        check_fits(RunConfig(microbatches=4), num_layers=8, batch_size=10)


def test_unknown_schedule():
    with pytest.raises(ConfigError, match=r"unknown schedule 'zigzag'; choose one of naive, gpipe, 1f1b, interleaved, zb-h1, zb-h2, zbv, .*or give your own"):
        check_config(RunConfig(schedule="zigzag"))


def test_model_factory_that_does_not_import():
    with pytest.raises(ConfigError, match="no_such_package.models:factory"):
        check_config(RunConfig(model="no_such_package.models:factory"))


@pytest.mark.parametrize("argv, message", [
    (["--schedule", "zigzag"], "unknown schedule 'zigzag'"),
    (["--pp", "2", "-n", "3"], "the run has 3 ranks but --pp 2 x --dp 1 needs 2"),
    (["--model", "nowhere:factory"], "nowhere:factory"),
    # these two need the model: the CLI builds it before starting ranks
    (["--pp", "2", "-n", "2", "--microbatches", "5"], "the global batch of 32 samples does not split into 1 replica(s) x 5"),
    (["--pp", "9", "-n", "9"], "--pp 9 stages but the model has only 8 layers"),
])
def test_cli_refuses_before_starting_ranks(argv, message):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline_ref", "run", *argv], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert "mpiexec" not in done.stderr and time.monotonic() - started < 30


MARK = f"PIPELINE_REF_TEST_RUN={uuid.uuid4()}"   # only this test run's ranks carry it in their environment


def _launch(*args, **kwargs):
    return launch(*args, env={"PIPELINE_REF_TEST_RUN": MARK.split("=", 1)[1]}, **kwargs)


def _marked() -> list[str]:
    left = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if MARK.encode() in environ.read_bytes().split(b"\0"):
                left.append(environ.parent.name)
        except OSError:      # the process ended while we looked, or is not ours to read
            pass
    return left


def _no_rank_left(grace: float = 5.0):
    # A process already killed can take a moment to leave a loaded machine; one alive after grace is a leak.
    deadline = time.monotonic() + grace
    while (left := _marked()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {left}"


@pytest.mark.mpi
def test_config_refused_inside_ranks_names_the_problem():
    with pytest.raises(LaunchError, match=r"--pp 2 stages but the model has only 1 layers") as failure:
        _launch(2, "pipeline_ref.train:run_rank",
               RunConfig(pp=2, model="pipeline_ref.models:mlp", model_kwargs={"depth": 1}), timeout=60)
    # one line per rank that got to say it, not a traceback per rank
    assert "failed while checking the configuration: pipeline_ref.config.ConfigError" in str(failure.value)
    assert "Traceback" not in str(failure.value)
    _no_rank_left()


def test_abort_all_never_returns_even_when_mpi_abort_does():
    # MPICH 5's MPI_Abort returned before its kill arrived, and the rank went on to print a traceback.
    program = ("import sys\n"
               "from pipeline_ref.faults import watchdog\n"
               "class ReturningComm:\n"
               "    def Abort(self, code): print('asked to abort with', code, flush=True)\n"
               "watchdog.abort_all(ReturningComm(), 3)\n"
               "print('went on after the abort', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "asked to abort with 3\n"


def test_identical_rank_reports_are_merged_in_the_order_first_reported():
    from pipeline_ref.faults.diagnosis import merge_reports
    assert merge_reports(["rank 2: failed X", "rank 1: stuck Y", "rank 0: failed X"]) == \
        ["ranks 0, 2: failed X", "rank 1: stuck Y"]
    assert merge_reports(["rank 0: failed X"]) == ["rank 0: failed X"]


def test_the_cause_comes_first():
    from pipeline_ref.faults.diagnosis import cause_first
    reports = ["rank 0: the launcher (pid 7) is gone; ending this rank while B0 of step 0: computing",
               "rank 0: stuck for 4 s while B0 of step 0: waiting for the gradient of microbatch 0 from rank 1",
               "rank 1: stuck for 3 s while F0 of step 0: computing",
               "rank 1: failed while F0 of step 0: computing: RuntimeError: x"]
    assert sorted(reports, key=cause_first) == reports[::-1]

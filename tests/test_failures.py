"""Bad requests are refused before any communication; a failing or hung rank ends the run quickly, named."""
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipeline_ref.config import ConfigError, RunConfig, check_config, check_fits
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
    with pytest.raises(ConfigError, match=r"unknown schedule 'zigzag'; choose one of naive, gpipe, 1f1b, interleaved, zb-h1, zb-h2, zbv, or give your own"):
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


def _no_rank_left():
    left = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if MARK.encode() in environ.read_bytes().split(b"\0"):
                left.append(environ.parent.name)
        except OSError:      # the process ended while we looked, or is not ours to read
            pass
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
               "from pipeline_ref import watchdog\n"
               "class ReturningComm:\n"
               "    def Abort(self, code): print('asked to abort with', code, flush=True)\n"
               "watchdog.abort_all(ReturningComm(), 3)\n"
               "print('went on after the abort', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "asked to abort with 3\n"


def test_identical_rank_reports_are_merged():
    from pipeline_ref.launch import _merge_reports
    assert _merge_reports(["rank 2: failed X", "rank 0: failed X", "rank 1: stuck Y"]) == \
        ["rank 1: stuck Y", "ranks 0, 2: failed X"]
    assert _merge_reports(["rank 0: failed X"]) == ["rank 0: failed X"]


@pytest.mark.mpi
def test_a_rank_that_raises_ends_the_run_naming_it():
    with pytest.raises(LaunchError) as failure:
        _launch(2, "pipeline_ref.train:run_rank", RunConfig(pp=2, microbatches=4, model="tests.rank_targets:raising_model"),
               timeout=60)
    assert "rank 1: failed while F1 of step 0: computing: RuntimeError: trap sprung on purpose" in str(failure.value)
    _no_rank_left()


@pytest.mark.mpi
def test_a_rank_that_hangs_ends_the_run_naming_it():
    started = time.monotonic()
    with pytest.raises(LaunchError) as failure:
        _launch(2, "pipeline_ref.train:run_rank", RunConfig(pp=2, microbatches=2, model="tests.rank_targets:hanging_model"),
               timeout=60, stall_timeout=3)
    message = str(failure.value)
    assert "rank 1: stuck for" in message and "while F0 of step 0: computing" in message
    assert time.monotonic() - started < 30
    _no_rank_left()


@pytest.mark.mpi
def test_the_launcher_time_limit_kills_every_rank():
    started = time.monotonic()
    with pytest.raises(LaunchError, match=r"did not finish within 8 s"):
        _launch(2, "pipeline_ref.train:run_rank", RunConfig(pp=2, microbatches=2, model="tests.rank_targets:hanging_model"),
               timeout=8, stall_timeout=None)
    assert time.monotonic() - started < 20
    _no_rank_left()


"""The fault suite reports every exit: a rank that leaves with code 0 mid-run is named with its last action,
and with data parallelism a rank is named by its world rank (the one mpiexec shows) and its place in the grid.

    .venv/bin/python -m pytest -q tests/test_rank_exits.py       # the four runs start together

Each run carries a marker in its environment, which every process of the run inherits; "nothing left" means
no process in /proc carries it any more (as in tests/test_faults.py).
"""
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline_ref.config import RunConfig
from pipeline_ref.launch import LaunchError, launch

RUN = uuid.uuid4().hex
MARKER = "PIPELINE_REF_EXIT_CASE"
BOUND = 30                      # seconds any case may take to end its run


def _train(model: str, **options):
    cfg = RunConfig(pp=2, dp=options.pop("dp", 1), microbatches=2, model=model)
    return 2 * cfg.dp, "pipeline_ref.train:run_rank", (cfg,), options


# name: (ranks, target, arguments, launch options), the message's first line, another line it must hold
CASES = {
    "os._exit(0)": (_train("tests.exit_targets:os_exit_in_compute"),
                    r"rank 1: left the run early \(os\._exit\(0\), exit code 0\) while F1 of step 0: "
                    r"computing",
                    r"rank 0: "),
    "sys.exit(0)": (_train("tests.exit_targets:sys_exit_in_compute"),
                    r"rank 1: left the run early \(sys\.exit\(0\), exit code 0\) while F1 of step 0: "
                    r"computing",
                    r"rank 0: "),
    "target returned": ((2, "tests.exit_targets:returns_early", (), {"stall_timeout": 4}),
                        r"rank 1 left the run early: its target returned \(exit code 0\) while rank 0 still "
                        r"waited for it",
                        r"rank 0: stuck for \d+ s while F0 of step 0: waiting for the activation of "
                        r"microbatch 0 from rank 1"),
    "dp 2": (_train("tests.exit_targets:hangs_on_world_rank_3", dp=2, stall_timeout=4),
             r"rank 3 \(stage 1, replica 1\): stuck for \d+ s while F0 of step 0: computing; ending the run",
             r"rank 2\b.*waiting for the gradient of microbatch 0 from rank 3 \(stage 1\)"),
}


def _left(case: str) -> list[str]:
    wanted = f"{MARKER}={RUN}-{case}".encode()
    left = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted in environ.read_bytes().split(b"\0"):
                left.append(environ.parent.name)
        except OSError:        # ended while we looked, or not ours to read
            pass
    return left


def _run(case: str):
    ranks, target, arguments, options = CASES[case][0]
    started = time.monotonic()
    try:
        launch(ranks, target, *arguments, timeout=60, **options, env={MARKER: f"{RUN}-{case}"})
        error = None
    except LaunchError as err:
        error = str(err)
    seconds = time.monotonic() - started
    deadline = time.monotonic() + 1.0
    while (left := _left(case)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return error, seconds, left


@pytest.fixture(scope="module")
def outcomes():
    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        return dict(zip(CASES, pool.map(_run, CASES)))


@pytest.mark.mpi
@pytest.mark.parametrize("case", CASES)
def test_a_rank_that_leaves_is_named_with_its_last_action(outcomes, case):
    error, seconds, left = outcomes[case]
    _, first_line, other_line = CASES[case]
    assert error is not None, f"{case}: the run succeeded"
    head, _, rest = error.partition("\n")
    assert re.fullmatch(first_line, head), f"{case}: the first line is {head!r}\n{error}"
    others = rest.split("\n--- last lines")[0]
    assert re.search(other_line, others), f"{case}: no line like {other_line}\n{error}"
    assert seconds < BOUND, f"{case} took {seconds:.0f} s"
    assert not left, f"{case}: processes left behind: {left}"

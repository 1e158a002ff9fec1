"""Fixtures of the graded tests: the implementation under test, and its checks on MPI ranks.

    impl("ex02_gpipe")           the module exercises.ex02_gpipe (or solutions.ex02_gpipe with --impl solutions)
    on_ranks("ex00.exchange")    what each rank returned from that check of tests/exercises/rank_checks.py

The options (--impl, --grade-json), the points and the score table live in grading_plugin.py.
A stub fails its tests at once, with its own "Exercise N.k: ..." message, and starts no rank.
"""
from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

from pipeline_ref.launch import LaunchError, launch
from tests import one_device
from tests.exercises import rank_checks
from tests.exercises.answers import refuse_borrowed, timed
from tests.exercises.grading_plugin import module_path, stub_message

ROOT = Path(__file__).resolve().parents[2]
STALL_SECONDS = 20      # a check whose ranks make no progress this long is stopped (a deadlock)
BUDGET_SECONDS = 180    # all launches together, well within pytest-timeout's 300 s for the test that waits


@pytest.fixture(scope="session")
def impl_name(request) -> str:
    return request.config.getoption("impl")


@pytest.fixture(scope="session")
def impl(impl_name):
    """``impl("ex02_gpipe")``: the module under test, its functions limited in CPU time (answers.py).

    Refused (the test fails) if it borrows pipeline_ref's answer instead of writing its own.
    """
    def load(module: str):
        __tracebackhide__ = True
        if module in (rank_checks.EX00, rank_checks.EX01):
            raise RuntimeError(f"{module} imports mpi4py: test it on ranks with the on_ranks fixture")
        refuse_borrowed(module_path(impl_name, module))
        return timed(importlib.import_module(f"{impl_name}.{module}"))
    return load


def raise_if_stub(impl: str, needs) -> None:
    """NotImplementedError with the stub's own message if any function the test needs is still a stub;
    ValueError if a module it needs borrows pipeline_ref's answer (answers.py)."""
    __tracebackhide__ = True
    for module in dict.fromkeys(m for m, _ in needs):
        refuse_borrowed(module_path(impl, module))
    for module, function in needs:
        message = stub_message(module_path(impl, module), function)
        if message is not None:
            if module != needs[0][0]:
                message += f" ({needs[0][0]} calls your {module}.{function}: that exercise comes first)"
            raise NotImplementedError(message)


class RankChecks:
    """Runs the rank checks of the session's exercises in one launch, and hands each test its check's results.

    A check that raises or hangs fails its own test (with the ranks' report); the checks after it
    get fresh ranks. The stubbed ones never run: their tests fail before any rank starts.
    """

    def __init__(self, impl: str, modules: set[str]):
        self.impl = impl
        self.modules = modules          # the exercises whose tests this session runs: one launch for all
        self.outcomes: dict[str, tuple[bool, object]] = {}     # name -> (passed, per-rank results or message)

    def __call__(self, name: str) -> list:
        __tracebackhide__ = True
        check = rank_checks.CHECKS[name]
        raise_if_stub(self.impl, check.needs)
        if name not in self.outcomes:
            self._run(self.modules | {check.module})
        passed, value = self.outcomes[name]
        if not passed:
            pytest.fail(value, pytrace=False)
        if isinstance(value[0], dict) and rank_checks.IMPORT_ERROR in value[0]:
            pytest.fail(f"a module this test needs does not import on the ranks:\n{value[0][rank_checks.IMPORT_ERROR]}",
                        pytrace=False)
        return value

    def _stubbed(self, check) -> bool:
        try:
            raise_if_stub(self.impl, check.needs)
        except Exception:     # a stub, a borrowed answer or a module that fails to import: its own test says which
            return True
        return False

    def _run(self, modules: set[str]) -> None:
        # Starting ranks costs seconds (each imports torch), a check milliseconds: one launch runs them all.
        pending = [c for c in rank_checks.CHECKS.values()
                   if c.module in modules and c.name not in self.outcomes and not self._stubbed(c)]
        num_ranks = max(c.ranks for c in pending)
        # Ranks import exercises/, solutions/ and tests/ from the repository root, wherever pytest started.
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        deadline = time.monotonic() + BUDGET_SECONDS
        while pending:
            left = deadline - time.monotonic()
            if left < 30:
                for c in pending:
                    self.outcomes[c.name] = (False, f"{c.name} did not run: the checks before it (that hung or "
                                                    f"failed) used up the {BUDGET_SECONDS} s the ranks get")
                break
            outdir = tempfile.mkdtemp(prefix="graded-")
            try:
                launch(num_ranks, "tests.exercises.rank_checks:run", self.impl, [c.name for c in pending], outdir,
                       timeout=min(60 + 10 * len(pending), left), stall_timeout=STALL_SECONDS,
                       env={"PYTHONPATH": path})
                failure = None
            except LaunchError as err:
                failure = str(err)
            done = 0
            for c in pending:
                files = [Path(outdir, f"{c.name}.rank{r}.pt") for r in range(num_ranks)]
                if not all(f.exists() for f in files):
                    break
                self.outcomes[c.name] = (True, [torch.load(f, weights_only=False) for f in files])
                done += 1
            if done < len(pending):
                broken = pending[done]
                failure = failure or f"the ranks finished without the results of {broken.name}"
                if any(Path(outdir, f"{broken.name}.rank{r}.started").exists() for r in range(num_ranks)):
                    self.outcomes[broken.name] = (False, _explain(broken.name, failure))
                    pending = pending[done + 1:]      # the checks after it get fresh ranks
                elif done == 0:                       # the ranks failed before any check: all of them fail
                    for c in pending:
                        self.outcomes[c.name] = (False, _explain(c.name, failure))
                    pending = []
                else:                                 # failed between two checks: try the rest again
                    pending = pending[done:]
            else:
                pending = []
            shutil.rmtree(outdir, ignore_errors=True)


def _cause(failure: str) -> str:
    """The one line that says why the ranks failed.

    launch.py puts the cause first ("rank 1: failed while ...", "rank 0: stuck for 20 s while ..."); an
    older message starts "the run on N ranks failed" with the ranks' reports indented below it.
    """
    lines = failure.strip().splitlines() or ["the ranks failed"]
    candidates = [lines[0]] + [line.strip() for line in lines[1:] if line.startswith("  rank")]
    for kind in ("failed while", "stuck for", "rank"):
        for line in candidates:
            if kind in line:
                if "stuck for" in line:
                    line = line.removesuffix("; ending the run") + " (a deadlock?)"
                return line
    return lines[0]


def _explain(name: str, failure: str) -> str:
    hint = ""
    if "stuck for" in failure:
        hint = (f"\n(A rank made no progress for {STALL_SECONDS} s: a deadlock? e.g. a blocking send that "
                f"waits for a receive the other rank has not posted, or a receive nobody sends to; or an "
                f"endless loop in the function named above.)")
    check = rank_checks.CHECKS.get(name)
    where = check.function.__module__.replace(".", "/") + ".py" if check else "tests/exercises/rank_checks.py"
    return f"{_cause(failure)}\n(on the ranks of check {name!r}, {where})\n{failure}{hint}"


@pytest.fixture(scope="session")
def assert_equals_one_device():
    """``assert_equals_one_device(cfg, result)``: a run of pipeline_ref's training loop gave the unsplit model's step."""
    def check(cfg, result):
        __tracebackhide__ = True
        one_device.assert_equals_one_device(result, *one_device.reference(cfg),
                                            where=f"{cfg.pp} stages, {cfg.microbatches} microbatches")
    return check


@pytest.fixture(scope="session")
def on_ranks(request, impl_name):
    """``on_ranks(name)``: the list of what each rank returned from check ``name``; fails the test if it failed.

    The ranks start once, for the checks of every exercise this session has tests of (test_exNN_*.py).
    """
    modules = {item.path.stem[len("test_"):] for item in request.session.items
               if item.path.parent == Path(__file__).parent and item.path.stem.startswith("test_ex")}
    return RankChecks(impl_name, modules)

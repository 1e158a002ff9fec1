"""The grading machinery of tests/exercises: ``--impl``, points, the score table, the Gradescope JSON.

A pytest plugin, loaded by ``tests/conftest.py`` (``pytest_plugins``): pytest reads command-line
options only from plugins and from the conftest files it finds before collecting, and
``tests/exercises/conftest.py`` is not one of those when the whole suite runs.

    pytest tests/exercises                       grade exercises/ (yours): the default
    pytest tests/exercises --impl solutions      grade solutions/ (the reference answers)
    pytest tests/exercises --grade-json out.json also write {"score", "max_score", "tests": [...]}

A graded test carries ``@pytest.mark.points(n)``: n points if it passes, 0 otherwise. After the run,
a table of every graded test's points is printed (only when graded tests ran).

``stub_message`` is here too, because two sides need it: conftest.py (to refuse a stub before
starting any MPI rank) and tests/test_stubs_fail.py.
"""
from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest

_RECORDS = pytest.StashKey[dict]()


def pytest_addoption(parser):
    group = parser.getgroup("grading", "grading the course's exercises (tests/exercises)")
    group.addoption("--impl", default="exercises", metavar="PACKAGE",
                    help="the package whose exNN_*.py modules the graded tests take: exercises (yours, "
                         "the default) or solutions (the reference answers)")
    group.addoption("--grade-json", default=None, metavar="PATH",
                    help="write the graded tests' scores to PATH, Gradescope style: "
                         '{"score", "max_score", "tests": [{"name", "score", "max_score", "output"}]}')


def pytest_configure(config):
    config.addinivalue_line("markers", "points(n): what a graded test (tests/exercises) is worth if it passes")
    config.stash[_RECORDS] = {}


# --------------------------------------------------------------------------- recording

def _points(item) -> float | None:
    marker = item.get_closest_marker("points")
    return None if marker is None else float(marker.args[0])


def _name(nodeid: str) -> str:
    return nodeid.split("tests/exercises/", 1)[-1]


def _output(report) -> str:
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        return f"skipped: {reason}"
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else report.longreprtext
    return text if len(text) <= 4000 else text[:4000] + " [...]"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    points = _points(item)
    if points is not None:
        records = item.config.stash[_RECORDS]
        record = records.setdefault(item.nodeid, {"name": _name(item.nodeid), "score": points,
                                                  "max_score": points, "output": ""})
        if not report.passed and record["score"]:    # the first phase that fails or skips decides
            record["score"] = 0.0
            where = "" if report.when == "call" else f"(in {report.when}) "
            record["output"] = where + _output(report)
    return report


# --------------------------------------------------------------------------- the table and the JSON

def _fmt(x: float) -> str:
    return f"{x:g}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    records = list(config.stash.get(_RECORDS, {}).values())
    if not records:
        return
    tr = terminalreporter
    score = sum(r["score"] for r in records)
    total = sum(r["max_score"] for r in records)
    tr.section(f"grade: --impl {config.getoption('impl')}")
    by_file: dict[str, list[dict]] = {}
    for r in records:
        by_file.setdefault(r["name"].split("::")[0], []).append(r)
    width = max(len(r["name"].split("::", 1)[-1]) for r in records)
    for file, rows in by_file.items():
        got, worth = sum(r["score"] for r in rows), sum(r["max_score"] for r in rows)
        tr.write_line(f"{file}  {_fmt(got)}/{_fmt(worth)}", bold=True)
        for r in rows:
            ok = r["score"] == r["max_score"]
            why = "" if ok else "  " + r["output"].strip().splitlines()[0][:90] if r["output"].strip() else ""
            line = (f"  {'PASS' if ok else 'FAIL'}  {r['name'].split('::', 1)[-1]:<{width}}  "
                    f"{_fmt(r['score']):>2}/{_fmt(r['max_score']):<2}{why}")
            tr.write_line(line.rstrip(), green=ok, red=not ok)
    tr.write_line(f"total: {_fmt(score)}/{_fmt(total)} points", bold=True, green=score == total, red=score < total)
    path = config.getoption("grade_json")
    if path:
        data = {"score": score, "max_score": total, "tests": records}
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
        tr.write_line(f"wrote {path}")


# --------------------------------------------------------------------------- stubs

def module_path(package: str, module: str) -> Path:
    """Where ``package.module`` lives, found without executing the module itself."""
    spec = importlib.util.find_spec(f"{package}.{module}")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no module {package}.{module} (is --impl {package} right?)")
    return Path(spec.origin)


def stub_message(path: Path, function: str) -> str | None:
    """The NotImplementedError message of ``function`` in the file at ``path`` if it is still a stub, else None.

    A stub is a function whose first statement after its docstring raises NotImplementedError. Read from
    the source, not run: exercises 0 and 1 import mpi4py, which the pytest process never does.
    """
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]
            if not body or not isinstance(body[0], ast.Raise) or body[0].exc is None:
                return None
            exc = body[0].exc
            call_name = exc.func if isinstance(exc, ast.Call) else exc
            if not (isinstance(call_name, ast.Name) and call_name.id == "NotImplementedError"):
                return None
            if isinstance(exc, ast.Call) and exc.args:
                try:
                    return str(ast.literal_eval(exc.args[0]))
                except ValueError:
                    return ast.unparse(exc.args[0])
            return f"{function} is not implemented yet"
    return None

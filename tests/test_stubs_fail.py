"""The exercises as shipped: stubs with the solutions' API, and every graded test fails on them, quickly.

The graded tests themselves (tests/exercises) run in the normal suite against solutions/ (``--impl
solutions``); this file checks the other half: on exercises/ as the course ships it, every graded test
fails with the NotImplementedError of its own exercise ("Exercise N.k: ...") and starts no MPI rank.

Once you have started the exercises, the checks of the files you changed are skipped: they are about
the stubs the course ships, not about your work (grade that with ``make grade``).
"""
import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.exercises.grading_plugin import stub_message

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_exercises", ROOT / "tools" / "make_exercises.py")
make_exercises = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_exercises)
MODULES = sorted(p.stem for p in (ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))


def public_functions(path: Path) -> dict[str, str]:
    """name -> its signature as written, for every public top-level function of a file."""
    tree = ast.parse(path.read_text())
    return {node.name: ast.unparse(node.args) for node in tree.body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}


def number(module: str) -> int:
    return int(module[2:4])


def worked_on(module: str) -> list[str]:
    """The functions of exercises/<module>.py that are no longer stubs."""
    path = ROOT / "exercises" / f"{module}.py"
    return [f for f in public_functions(path) if stub_message(path, f) is None]


def test_every_lesson_has_an_exercise_and_a_solution():
    assert [number(m) for m in MODULES] == list(range(len(MODULES))), (
        f"exercises/ holds {MODULES}: expected ex00_*.py, ex01_*.py, ... with none missing or doubled")
    for module in MODULES:
        assert (ROOT / "solutions" / f"{module}.py").exists(), f"solutions/{module}.py is missing"
        assert (ROOT / "tests" / "exercises" / f"test_{module}.py").exists(), f"no graded tests for {module}"


@pytest.mark.parametrize("module", MODULES)
def test_exercise_and_solution_have_the_same_api(module):
    exercise = public_functions(ROOT / "exercises" / f"{module}.py")
    solution = public_functions(ROOT / "solutions" / f"{module}.py")
    assert exercise == solution, f"exercises/{module}.py and solutions/{module}.py differ in their functions"


@pytest.mark.parametrize("module", MODULES)
def test_exercise_is_generated_from_its_solution(module):
    """exercises/<module>.py is exactly what tools/make_exercises.py makes of solutions/<module>.py.

    So the two differ only inside the solution's marked regions: docstrings, signatures and imports
    cannot drift. After editing a solution, run `make exercises`.
    """
    if worked_on(module):
        pytest.skip(f"exercises/{module}.py has been worked on ({', '.join(worked_on(module))})")
    solution = ROOT / "solutions" / f"{module}.py"
    made = make_exercises.exercise_source(solution.read_text(), f"solutions/{module}.py")
    committed = (ROOT / "exercises" / f"{module}.py").read_text()
    assert made == committed, (f"exercises/{module}.py differs from what solutions/{module}.py generates; run "
                               f"`make exercises` (python tools/make_exercises.py --check shows the diff)")


def test_generator_refuses_malformed_markers():
    """Markers that would silently cut the wrong lines are errors naming the line."""
    good = ("def f():\n    \"\"\"Doc.\"\"\"\n    # BEGIN EXERCISE 2.1: do it\n    # HINT: like this\n"
            "    return 1\n    # END EXERCISE\n")
    made = make_exercises.exercise_source(good, "ex02_x.py")
    assert 'raise NotImplementedError(\n        "Exercise 2.1: do it. Hint: like this.")' in made, made
    assert "return 1" not in made
    bad = {"no hint": good.replace("    # HINT: like this\n", ""),
           "no end": good.replace("    # END EXERCISE\n", ""),
           "wrong lesson": good.replace("2.1", "3.1"),
           "out of order": good.replace("2.1", "2.2"),
           "empty": good.replace("    return 1\n", "")}
    for what, source in bad.items():
        with pytest.raises(make_exercises.MarkerError):
            make_exercises.exercise_source(source, "ex02_x.py")
            pytest.fail(f"{what}: accepted")


@pytest.mark.parametrize("module", MODULES)
def test_solutions_hold_no_stub(module):
    source = (ROOT / "solutions" / f"{module}.py").read_text()
    assert "NotImplementedError" not in source, f"solutions/{module}.py still raises NotImplementedError"


@pytest.mark.parametrize("module", MODULES)
def test_every_function_is_a_stub_naming_its_exercise(module):
    if worked_on(module):
        pytest.skip(f"exercises/{module}.py has been worked on ({', '.join(worked_on(module))})")
    path = ROOT / "exercises" / f"{module}.py"
    functions = public_functions(path)
    assert functions, f"exercises/{module}.py has no function to write"
    parts = []
    for function in functions:
        message = stub_message(path, function)
        found = re.match(rf"Exercise {number(module)}\.(\d+): \S", message)
        assert found, f"{module}.{function}: a stub's message starts 'Exercise {number(module)}.k: ', not {message!r}"
        assert "Hint:" in message, f"{module}.{function}: the stub's message gives no hint"
        parts.append(int(found.group(1)))
    assert parts == list(range(1, len(parts) + 1)), f"{module}: exercises numbered {parts}, expected 1, 2, ... in order"
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and f"lesson {number(module):02d}" in doc and f"tests/exercises/test_{module}.py" in doc, (
        f"exercises/{module}.py: the module docstring should name its lesson and the command that grades it")


@pytest.fixture(scope="module")
def graded_on_stubs(tmp_path_factory):
    """Every graded test run on exercises/ in a pytest of its own: (Gradescope JSON, output).

    On the stubs no rank starts, so it takes seconds; the time limit only turns a regression that
    waits for ranks' time-outs into a failure instead of a slow pass.
    """
    report = tmp_path_factory.mktemp("grade") / "grade.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/exercises", "--impl", "exercises", "-q",
                           "-p", "no:cacheprovider", "--grade-json", str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert report.exists(), f"the graded run wrote no score:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(report.read_text()), done.stdout


def test_graded_tests_fail_quickly_on_the_stubs(graded_on_stubs):
    """Each fails with its own exercise's NotImplementedError, raised before any rank starts.

    (A check that reached the ranks would fail with "the ranks failed ..." instead.)
    """
    grades, output = graded_on_stubs
    tests = grades["tests"]
    assert {t["name"].split("::")[0] for t in tests} == {f"test_{m}.py" for m in MODULES}, output[-3000:]
    assert all(t["max_score"] > 0 for t in tests)
    assert grades["max_score"] == sum(t["max_score"] for t in tests)
    checked = 0
    for module in MODULES:
        if worked_on(module):
            continue
        for t in (t for t in tests if t["name"].startswith(f"test_{module}.py::")):
            assert t["score"] == 0, f"{t['name']} passes on the stubs"
            assert t["output"].startswith(f"NotImplementedError: Exercise {number(module)}."), (
                f"{t['name']} should fail with its exercise's NotImplementedError, got:\n{t['output'][:2000]}")
            checked += 1
    if not checked:
        pytest.skip("every exercise has been worked on")


def test_pytest_without_impl_collects():
    """The whole suite collects without --impl (the graded tests then take exercises/)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    text = done.stdout + done.stderr
    assert "tests/exercises/test_ex02_gpipe.py::test_gpipe_is_valid_and_all_forwards_first" in done.stdout, text[-3000:]
    # Judge only what is ours: a collection error elsewhere in the suite is that file's own test's business.
    ours = [line for line in text.splitlines() if "ERROR" in line and ("exercises" in line or "--impl" in line)]
    assert not ours and "unrecognized arguments" not in text, text[-3000:]

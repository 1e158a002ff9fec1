"""The grader itself: hints apart from the stubs, no answer in a stub, borrowed answers refused, loops ended.

*No answer in a stub.* What the student reads before trying (the stub file: docstrings and each raise's
message; the first level of each hints section, before its first ``<details>``) may not hold a line of the
answer, nor a formula of it (an expression of two or more operators, names read as the lessons write them:
``num_stages`` as p, ``stage_index`` as s, ...), nor one of its calls (a method called on a constant or an
expression, like ``Allreduce(MPI.IN_PLACE, ...)``). The contract may state a formula on purpose (the last rank
of a grid); ``STATED`` lists those, with why.

    .venv/bin/python -m pytest -q tests/test_grader.py

The graded tests (tests/exercises) judge a student's answers; these check the grading machinery they
stand on, in the pytest process alone (no MPI rank): the hints files (exercises/hints/), the stubs that
tools/make_exercises.py generates, tests/exercises/answers.py (borrowed answers, the CPU-time limit),
the first line of a ranks' failure (conftest.py), and that every entry of tools/grader_catalogue.py
still applies to its solution. The catalogue itself is graded by ``make grader-check`` (minutes, not
part of this suite: see tools/grader_check.py).
"""
import ast
import importlib.util
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.exercises import answers
from tests.exercises.grading_plugin import stub_message

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


make_exercises = _load("make_exercises", ROOT / "tools" / "make_exercises.py")


def functions(path: Path) -> list[ast.FunctionDef]:
    return [n for n in ast.parse(path.read_text()).body
            if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]


def answer_lines(module: str) -> set[str]:
    """The code lines of the solution's marked regions (what the student writes), long enough to be telling."""
    lines, inside = set(), False
    for line in (ROOT / "solutions" / f"{module}.py").read_text().splitlines():
        if make_exercises.BEGIN.match(line) or make_exercises.ONLY_BEGIN.match(line):
            inside = True
        elif make_exercises.END.match(line) or make_exercises.ONLY_END.match(line):
            inside = False
        elif inside and line.strip() and not line.strip().startswith("#") and len(line.strip()) >= 24:
            lines.add(line.strip())
    return lines


# What the lessons call the solutions' names: a formula written with either reads the same.
CANON = {"num_stages": "p", "num_microbatches": "m", "stage_index": "s", "stage": "s", "rank": "s", "r": "s",
         "microbatch": "j", "chunks": "v"}
# Formulas and calls a contract states on purpose (what the function is asked, not how to compute it).
STATED = {"ex04_data_parallel": {"pp*dp-1"}}          # the last rank of the grid: grid_coords' valid range


def normalized(text: str) -> str:
    text = text.replace("`", "").replace("$", "").replace("'", '"')
    text = re.sub(r"\b(" + "|".join(CANON) + r")\b", lambda found: CANON[found.group(1)], text)
    return re.sub(r"\s+", "", text)


def answer_regions(source: str) -> list[str]:
    """The code inside each marked region of a solution file (what the student writes, and its helpers)."""
    regions, lines, inside = [], [], False
    for line in source.splitlines():
        if make_exercises.BEGIN.match(line) or make_exercises.ONLY_BEGIN.match(line):
            inside, lines = True, []
        elif make_exercises.END.match(line) or make_exercises.ONLY_END.match(line):
            inside = False
            regions.append(textwrap.dedent("\n".join(lines)))
        elif inside and not make_exercises.HINT.match(line):
            lines.append(line)
    return regions


def telling(module: str, source: str | None = None) -> set[str]:
    """The answer's formulas (two operators or more) and calls (a method on a non-name first argument),
    normalized, and calls of two or more computed arguments written whole: what a stub or a first hint may
    not show."""
    found = set()
    source = source if source is not None else (ROOT / "solutions" / f"{module}.py").read_text()
    for code in answer_regions(source):
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and sum(isinstance(n, ast.BinOp) for n in ast.walk(node)) >= 2:
                found.add(normalized(ast.unparse(node)))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
                  and len(node.args) + len(node.keywords) >= 2 and not isinstance(node.args[0], ast.Name)):
                found.add(normalized(f"{node.func.attr}({ast.unparse(node.args[0])}"))
            if (isinstance(node, ast.Call) and len(node.args) >= 2
                    and not any(isinstance(a, (ast.Name, ast.Constant)) for a in node.args)):
                found.add(normalized(ast.unparse(node)))      # a recurrence: max(best[k - 1][i], ...)
    return found - STATED.get(module, set())


def first_hints(hints: str) -> str:
    """Each section's first level: its text before the first <details> (the levels after it start collapsed)."""
    return "\n".join(section.split("<details>")[0] for section in re.split(r"^## ", hints, flags=re.M)[1:])


def giveaways(module: str, text: str, source: str | None = None) -> list[str]:
    """The answer's formulas and calls that ``text`` shows."""
    shown = normalized(text)
    return sorted(f for f in telling(module, source) if f in shown)


@pytest.mark.parametrize("module", MODULES)
def test_stubs_and_first_hints_show_no_formula_or_call_of_the_answer(module):
    made = make_exercises.exercise_source((ROOT / "solutions" / f"{module}.py").read_text(), f"{module}.py")
    hints = (ROOT / "exercises" / "hints" / f"{module}.md").read_text()
    assert "<details>" in hints, f"exercises/hints/{module}.md: each section goes from a question to hidden levels"
    for where, text in ((f"the stub of {module}", made), (f"the first hints of exercises/hints/{module}.md",
                                                          first_hints(hints))):
        shown = giveaways(module, text)
        assert not shown, f"{where} shows the answer's formula or call: {shown}"


def test_a_planted_answer_fails_the_giveaway_check():
    """A formula of the answer written as a lesson would, one of its calls, the recurrence and an answer line,
    planted in a stub or a first hint, are found; the stubs and first hints as shipped show none."""
    made = make_exercises.exercise_source((ROOT / "solutions" / "ex06_interleaved.py").read_text(), "ex06.py")
    assert not giveaways("ex06_interleaved", made)
    planted = made.replace("Stuck?", "Rank r runs (p - r - 1) * 2 + (v - 1) * p warm-up forwards. Stuck?")
    assert "(p-s-1)*2+(v-1)*p" in giveaways("ex06_interleaved", planted)
    hints = (ROOT / "exercises" / "hints" / "ex04_data_parallel.md").read_text()
    assert not giveaways("ex04_data_parallel", first_hints(hints))
    planted = hints.replace("## 4.3 allreduce_gradients\n", "## 4.3 allreduce_gradients\n\nCall `data_comm"
                            ".Allreduce(MPI.IN_PLACE, buffer.numpy(), op=MPI.SUM)` on each buffer.\n")
    assert "Allreduce(MPI.IN_PLACE" in giveaways("ex04_data_parallel", first_hints(planted))
    stub = make_exercises.exercise_source((ROOT / "solutions" / "ex05_balancing.py").read_text(), "ex05.py")
    planted = stub.replace("Stuck?", "best[k][j] is the min over i of max(best[k - 1][i], prefix[j] - prefix[i]).")
    assert giveaways("ex05_balancing", planted)
    line = sorted(answer_lines("ex05_balancing"))[0]
    assert line not in stub and line in stub.replace("Stuck?", f"{line}\nStuck?")


@pytest.mark.parametrize("module", MODULES)
def test_every_exercise_has_a_hints_file_with_a_section_per_function(module):
    """exercises/hints/<module>.md, named by the exercise's docstring, one '## N.k name' section per function."""
    hints = ROOT / "exercises" / "hints" / f"{module}.md"
    doc = ast.get_docstring(ast.parse((ROOT / "solutions" / f"{module}.py").read_text()))
    assert f"exercises/hints/{module}.md" in doc, f"solutions/{module}.py's docstring should name its hints file"
    assert hints.exists(), f"{hints.relative_to(ROOT)} is missing"
    sections = re.findall(r"^## (\d+\.\d+) (\w+)$", hints.read_text(), flags=re.M)
    expected = []
    for line in (ROOT / "solutions" / f"{module}.py").read_text().splitlines():
        found = make_exercises.BEGIN.match(line)
        if found:
            expected.append(found["number"])
    numbers = [n for n, _ in sections]
    assert numbers == expected, f"{hints.name}: sections {numbers}, expected one per exercise {expected}"
    names = {f.name for f in functions(ROOT / "solutions" / f"{module}.py")}
    assert {name for _, name in sections} <= names, f"{hints.name} names functions {sections} not all in {names}"


@pytest.mark.parametrize("module", MODULES)
def test_stubs_and_hints_hold_no_answer(module):
    """A stub's function is its docstring and one raise with a one-line hint; no line of the answer appears
    in the stub file or in the hints file."""
    path = ROOT / "exercises" / f"{module}.py"
    made = make_exercises.exercise_source((ROOT / "solutions" / f"{module}.py").read_text(), f"{module}.py")
    tree = ast.parse(made)
    for node in (n for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")):
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        assert len(body) == 1 and isinstance(body[0], ast.Raise), (
            f"{module}.{node.name}: the stub holds more than a raise")
        message = ast.literal_eval(body[0].exc.args[0])
        assert message.count("Hint:") == 1 and "\n" not in message and len(message) < 300, (
            f"{module}.{node.name}: the stub's message should carry one short hint, not {len(message)} characters")
    hints = (ROOT / "exercises" / "hints" / f"{module}.md").read_text()
    for line in answer_lines(module):
        assert line not in made, f"the stub of {module} contains the answer's line {line!r}"
        assert line not in hints, f"exercises/hints/{module}.md contains the answer's line {line!r}"
    if path.read_text() == made:        # as shipped (not yet worked on): the same holds of the file itself
        assert all(stub_message(path, f.name) for f in functions(path))


def test_borrowed_answers_are_refused(tmp_path):
    """Importing pipeline_ref's own function (or the solutions, or importlib) is refused, naming the line."""
    allowed = "from pipeline_ref.schedules import Action\nfrom pipeline_ref.engine.stage import Stage\nimport torch\n" \
              "from .ex00_mpi_tensors import isend_tensor\nfrom exercises.ex00_mpi_tensors import irecv_tensor\n"
    (tmp_path / "exercises").mkdir()
    path = tmp_path / "exercises" / "ex02_x.py"
    path.write_text(allowed)
    answers.refuse_borrowed(path)
    for bad, says in [("from pipeline_ref.schedules import Action, gpipe\n", "imports gpipe from pipeline_ref"),
                      ("import pipeline_ref.front.partition\n", "imports pipeline_ref.front.partition"),
                      ("def f():\n    from pipeline_ref import topology\n", "imports topology"),
                      ("from solutions.ex02_gpipe import gpipe\n", "imports from solutions"),
                      ("import importlib\n", "imports importlib"),
                      ("x = __import__('pipeline_ref')\n", "calls __import__")]:
        path.write_text(allowed + bad)
        with pytest.raises(ValueError, match=re.escape(says)):
            answers.refuse_borrowed(path)


def test_an_endless_loop_ends_in_seconds_naming_the_function():
    """A pure-Python loop ends with TimeoutError naming the function and its arguments; except Exception
    inside it does not swallow the expiry; a quick call is untouched."""
    def stuck(n):
        while True:
            try:
                n += 1
            except Exception:       # a student's catch-all must not hide the time limit
                pass
    limited = answers.limit(stuck, "ex05_balancing.stuck", seconds=0.5)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"your ex05_balancing\.stuck\(3\) was still running after 0\.5 s"):
        limited(3)
    assert time.monotonic() - start < 20
    assert answers.limit(lambda x: x + 1, "f", seconds=0.5)(1) == 2


def test_a_function_taken_from_elsewhere_is_refused(tmp_path, monkeypatch):
    """``gpipe = some_module.gpipe`` at run time (past the source check) is refused too."""
    package = tmp_path / "borrowing"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ex02_gpipe.py").write_text(textwrap.dedent("""
        import pipeline_ref.schedules as s  # (the source check would refuse this; here only timed() is tested)
        def split_microbatches(inputs, targets, num_microbatches):
            return []
        def accumulate_gradients(model, loss_fn, microbatches):
            return 0.0
        gpipe = s.gpipe
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("borrowing.ex02_gpipe")
    with pytest.raises(ValueError, match="ex02_gpipe.gpipe comes from pipeline_ref.schedules"):
        answers.timed(module)


def test_a_ranks_failure_starts_with_its_cause():
    """The first line of a failed check is the rank's own report, whichever way launch.py lays it out."""
    conftest = _load("graded_conftest", ROOT / "tests" / "exercises" / "conftest.py")
    older = ("the run on 3 ranks failed (exit code 1):\n  rank 0: stuck for 20 s while waiting; ending the run\n"
             "  rank 1: failed while in your ex01_naive_split.stage_forward: TypeError: bad\n--- last lines ---\n")
    assert conftest._cause(older) == "rank 1: failed while in your ex01_naive_split.stage_forward: TypeError: bad"
    newer = "rank 1: stuck for 20 s while blocked before B0 (after F1) in your run_actions (1f1b); ending the run\n..."
    first = conftest._explain("ex03.run_1f1b", newer).splitlines()[0]
    assert first == "rank 1: stuck for 20 s while blocked before B0 (after F1) in your run_actions (1f1b) (a deadlock?)"


def test_every_catalogue_entry_still_applies():
    """Each wrong (or right) answer of tools/grader_catalogue.py changes its solution as written."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        grader_check = _load("grader_check", ROOT / "tools" / "grader_check.py")
    finally:
        sys.path.remove(str(ROOT / "tools"))
    names = [e.name for e in grader_check.CATALOGUE]
    assert len(names) == len(set(names))
    for entry in grader_check.CATALOGUE:
        assert grader_check.mutate(entry) != (ROOT / "solutions" / f"{entry.module}.py").read_text(), entry.name
    kinds = " ".join(names)
    for kind in ("ignores its tag", "ignores its source", "zeroes the grads", "True and 2.0", "too few ranks only",
                 "first dtype", "borrowed", "deadlocks", "endless loop"):
        assert kind in kinds, f"the catalogue has no entry of the kind {kind!r}"

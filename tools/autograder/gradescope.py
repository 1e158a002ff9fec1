"""The steps of run_autograder that are easier in Python: placing a submission, and writing results.json.

    python gradescope.py place SUBMISSION exercises
        copies each exNN_*.py found anywhere in SUBMISSION (flat files, an exercises/ folder, a whole copy of
        the repository) over the stub of the same name in exercises/; a file not submitted keeps its stub
        (its tests score 0). A submitted file that does not import (a SyntaxError, an exception at import, an
        import that hangs) is put back to its stub, so that it costs only its own exercise's points, and its
        error is kept in broken.json for the results. Prints what it took from where.
    python gradescope.py results --pytest-json P --pytest-log L --placed T --status N --seconds S --out R
        writes Gradescope's results.json from what the graded tests recorded (grading_plugin.py's
        --grade-json, rewritten after each test by record_each_test.py): score, max_score, per test a readable
        name, its points and output, and a table of points per exercise, all visible. A test that was not
        recorded (pytest crashed or was stopped by the time limit) gets 0 and says why; the tests recorded
        before keep their points.

Standard library only: it runs before anything is known to work. Layer: tools (the Gradescope bundle).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXERCISE = re.compile(r"ex\d\d_\w+\.py")
IGNORED = ("__MACOSX", ".ipynb_checkpoints", "__pycache__")
IMPORT_SECONDS = 120        # importing every submitted module (torch once) on 0.5 CPU takes some 10-20 s
PYTEST_STATUS = {0: "all tests passed", 1: "some tests failed", 2: "pytest was interrupted",
                 3: "pytest hit an internal error", 4: "pytest was called wrongly",
                 5: "pytest found no tests",
                 124: "the time limit stopped the tests", 137: "the tests were killed (time or memory)"}

# Run in a child process by ``import_errors``: imports each module given and prints one JSON line per module
# with the error and the exercise file it came from. mpi4py is imported without starting MPI (no mpiexec).
IMPORT_CHECK = r"""
import importlib, json, os, sys, traceback
for name in sys.argv[1:]:
    try:
        importlib.import_module(f"exercises.{name}")
        print(json.dumps({"module": name}), flush=True)
    except BaseException as err:
        files = [err.filename] if isinstance(err, SyntaxError) and err.filename else []
        files += [f.filename for f in traceback.extract_tb(err.__traceback__)]
        ours = [os.path.basename(f) for f in files if os.path.basename(f).startswith("ex")
                and os.path.basename(os.path.dirname(os.path.abspath(f))) == "exercises"]
        line = traceback.format_exception_only(type(err), err)[-1].strip()
        print(json.dumps({"module": name, "error": line, "file": (ours or [name + ".py"])[-1]}), flush=True)
"""


def place(submission: Path, exercises: Path) -> list[str]:
    lines = []
    found: dict[str, list[Path]] = {}
    stubs: dict[str, bytes] = {}
    for path in sorted(submission.rglob("ex[0-9][0-9]_*.py")):
        if EXERCISE.fullmatch(path.name) and not any(part in IGNORED for part in path.parts):
            found.setdefault(path.name, []).append(path)
    for stub in sorted(exercises.glob("ex[0-9][0-9]_*.py")):
        candidates = found.pop(stub.name, [])
        if not candidates:
            lines.append(f"{stub.name}: not in the submission, graded as the stub (0 points)")
            continue
        # Several copies (a repository with exercises/ and solutions/): the one in a folder named exercises,
        # else the one nearest the top.
        chosen = min(candidates, key=lambda p: (p.parent.name != "exercises", len(p.parts), str(p)))
        stubs[stub.name] = stub.read_bytes()
        shutil.copyfile(chosen, stub)
        ignored = ", ".join(str(p.relative_to(submission)) for p in candidates if p != chosen)
        others = f" (ignored: {ignored})" if ignored else ""
        lines.append(f"{stub.name}: taken from {chosen.relative_to(submission)}{others}")
    for name in sorted(found):
        lines.append(f"{name}: submitted but not an exercise of the course (ignored)")
    errors = import_errors(exercises, sorted(stubs))
    broken = {name: error for name, error in errors.items() if name in stubs}
    for name, error in errors.items():
        if name in stubs:
            (exercises / name).write_bytes(stubs[name])
            lines.append(f"{name}: DOES NOT IMPORT, graded as the stub (0 points for its tests): {error}")
        else:
            lines.append(f"{name} (not submitted) does not import: {error}")
    (exercises.parent / "broken.json").write_text(json.dumps(broken, indent=1) + "\n")
    return lines


def import_errors(exercises: Path, names: list[str]) -> dict[str, str]:
    """``{file name: error}`` for each of the submitted exercise files that cannot be imported."""
    broken = {}
    for name in names:            # a SyntaxError is found without a child process (nor torch)
        try:
            compile((exercises / name).read_bytes(), f"exercises/{name}", "exec")
        except (SyntaxError, ValueError) as err:
            broken[name] = f"{type(err).__name__}: {err}"
    modules = [Path(n).stem for n in names if n not in broken]
    if not modules:
        return broken
    command = [sys.executable, "-c", IMPORT_CHECK, *modules]
    env = {**os.environ, "MPI4PY_RC_INITIALIZE": "0", "PYTHONPATH": str(exercises.parent)}
    try:
        done = subprocess.run(command, cwd=exercises.parent, capture_output=True, text=True,
                              timeout=IMPORT_SECONDS, env=env)
        output = done.stdout
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
    reported = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    for entry in reported:
        if "error" in entry:      # blamed on the exercise file the error came from (ex01 imports ex00)
            broken.setdefault(entry["file"], entry["error"])
    if len(reported) < len(modules):        # the child stopped (hung, or killed) at the next module
        stuck = modules[len(reported)]
        broken.setdefault(f"{stuck}.py", f"importing it did not finish in {IMPORT_SECONDS} s (a loop or "
                                         f"input() at the top level?)")
    return broken


# --------------------------------------------------------------------------- results.json

def readable(key: str) -> str:
    """``test_ex05_balancing.py::test_split_is_optimal`` -> ``Exercise 05 (balancing): split is optimal``."""
    file, _, test = key.partition("::")
    found = re.match(r"test_ex(\d\d)_(\w+)\.py", file)
    what = test.removeprefix("test_").replace("_", " ")
    return f"Exercise {found[1]} ({found[2].replace('_', ' ')}): {what}" if found else key


def _test_entry(key: str, record: dict, why_missing: str, broken: dict[str, str]) -> dict:
    number = re.match(r"test_ex(\d\d)_(\w+)\.py", key)
    exercise_file = f"ex{number[1]}_{number[2]}.py" if number else ""
    if record is None:
        output = f"FAIL\nnot graded: {why_missing}"
        score, max_score = 0.0, None
    else:
        score, max_score = record["score"], record["max_score"]
        output = "PASS" if score == max_score else "FAIL\n" + (record.get("output") or "").strip()
    if exercise_file in broken and score != max_score:
        output += (f"\n\nexercises/{exercise_file} as submitted does not import, so it was graded as the "
                   f"stub: {broken[exercise_file]}")
    return {"name": readable(key), "number": key, "score": score, "max_score": max_score, "output": output,
            "visibility": "visible"}


def table(tests: list[dict]) -> list[str]:
    """Points per exercise, for the student-visible output."""
    rows: dict[str, list[float]] = {}
    for test in tests:
        got = rows.setdefault(test["name"].split(":")[0], [0.0, 0.0])
        got[0] += test["score"]
        got[1] += test["max_score"]
    width = max(len(name) for name in rows)
    return [f"{name:<{width}}  {got:>5g} / {worth:<5g}{'' if got == worth else '  <-'}"
            for name, (got, worth) in rows.items()]


def results(pytest_json: Path, pytest_log: Path, placed: Path, status: int, seconds: float,
            manifest: Path = HERE / "manifest.json", broken: Path | None = None) -> dict:
    log = pytest_log.read_text(errors="replace") if pytest_log.exists() else ""
    head = [placed.read_text(errors="replace").strip()] if placed.exists() else []
    errors = json.loads(broken.read_text()) if broken is not None and broken.exists() else {}
    graded = json.loads(manifest.read_text())["tests"]
    recorded = {}
    if pytest_json.exists():
        try:
            recorded = {r["name"]: r for r in json.loads(pytest_json.read_text())["tests"]}
        except (ValueError, KeyError):      # cut short mid-write: as if nothing was recorded
            recorded = {}
    why = PYTEST_STATUS.get(status, f"pytest exited with status {status}")
    tests = []
    for key, points in graded.items():
        entry = _test_entry(key, recorded.get(key), f"{why} before this test finished", errors)
        entry["max_score"] = points if entry["max_score"] is None else entry["max_score"]
        tests.append(entry)
    score = sum(t["score"] for t in tests)
    max_score = sum(t["max_score"] for t in tests)
    summary = [f"{score:g} / {max_score:g} points ({PYTEST_STATUS.get(status, f'pytest status {status}')}, "
               f"{seconds:.0f} s)", "", "Points per exercise:"] + table(tests)
    if status not in (0, 1) or len(recorded) < len(graded):
        summary += ["", "The end of pytest's output:", log[-6000:]]
    return {"score": score, "max_score": max_score, "execution_time": seconds,
            "output": "\n".join(head + [""] + summary), "visibility": "visible",
            "stdout_visibility": "visible", "tests": tests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("place")
    p.add_argument("submission", type=Path)
    p.add_argument("exercises", type=Path)
    r = steps.add_parser("results")
    r.add_argument("--pytest-json", type=Path, required=True)
    r.add_argument("--pytest-log", type=Path, required=True)
    r.add_argument("--placed", type=Path, required=True)
    r.add_argument("--broken", type=Path, default=None, help="place's broken.json")
    r.add_argument("--status", type=int, required=True)
    r.add_argument("--seconds", type=float, default=0.0)
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.step == "place":
        print("\n".join(place(args.submission, args.exercises)))
    else:
        data = results(args.pytest_json, args.pytest_log, args.placed, args.status, args.seconds,
                       broken=args.broken)
        args.out.write_text(json.dumps(data, indent=2) + "\n")
        print(data["output"])


if __name__ == "__main__":
    main()

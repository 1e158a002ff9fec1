"""The two steps of run_autograder that are easier in Python: placing a submission, and writing results.json.

    python gradescope.py place SUBMISSION exercises
        copies each exNN_*.py found anywhere in SUBMISSION (flat files, an exercises/ folder, a whole copy of
        the repository) over the stub of the same name in exercises/; a file not submitted keeps its stub
        (its tests score 0). Prints what it took from where.
    python gradescope.py results --pytest-json P --pytest-log L --placed T --status N --seconds S --out R
        writes Gradescope's results.json from what the graded tests recorded (tests/exercises/grading_plugin.py,
        --grade-json): score, max_score, and per test its name, points and output, all visible. If pytest
        left no record (it crashed, or was stopped), every test of manifest.json (written by build.py) gets 0
        and the output says why.

Standard library only: it runs before anything is known to work.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXERCISE = re.compile(r"ex\d\d_\w+\.py")
IGNORED = ("__MACOSX", ".ipynb_checkpoints", "__pycache__")
PYTEST_STATUS = {0: "all tests passed", 1: "some tests failed", 2: "pytest was interrupted",
                 3: "pytest hit an internal error", 4: "pytest was called wrongly", 5: "pytest found no tests",
                 124: "the time limit stopped the tests", 137: "the tests were killed (time or memory)"}


def place(submission: Path, exercises: Path) -> list[str]:
    lines = []
    found: dict[str, list[Path]] = {}
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
        shutil.copyfile(chosen, stub)
        others = f" (ignored: {', '.join(str(p.relative_to(submission)) for p in candidates if p != chosen)})" \
            if len(candidates) > 1 else ""
        lines.append(f"{stub.name}: taken from {chosen.relative_to(submission)}{others}")
    for name in sorted(found):
        lines.append(f"{name}: submitted but not an exercise of the course (ignored)")
    return lines


def _test_entry(record: dict) -> dict:
    passed = record["score"] == record["max_score"]
    output = "PASS" if passed else "FAIL\n" + (record.get("output") or "").strip()
    return {"name": record["name"], "score": record["score"], "max_score": record["max_score"],
            "output": output, "visibility": "visible"}


def results(pytest_json: Path, pytest_log: Path, placed: Path, status: int, seconds: float,
            manifest: Path = HERE / "manifest.json") -> dict:
    log = pytest_log.read_text(errors="replace") if pytest_log.exists() else ""
    head = [placed.read_text(errors="replace").strip()] if placed.exists() else []
    if pytest_json.exists():
        recorded = json.loads(pytest_json.read_text())
        tests = [_test_entry(r) for r in recorded["tests"]]
    else:
        graded = json.loads(manifest.read_text())
        why = PYTEST_STATUS.get(status, f"pytest exited with status {status}")
        tests = [{"name": name, "score": 0.0, "max_score": points, "visibility": "visible",
                  "output": f"FAIL\nnot graded: {why} before recording any score"}
                 for name, points in graded["tests"].items()]
    score = sum(t["score"] for t in tests)
    max_score = sum(t["max_score"] for t in tests)
    summary = [f"{score:g} / {max_score:g} points ({PYTEST_STATUS.get(status, f'pytest status {status}')})"]
    if status not in (0, 1) or not pytest_json.exists():
        summary += ["", "The end of pytest's output:", log[-6000:]]
    return {"score": score, "max_score": max_score, "execution_time": seconds,
            "output": "\n".join(head + [""] + summary), "visibility": "visible", "stdout_visibility": "visible",
            "tests": tests}


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
    r.add_argument("--status", type=int, required=True)
    r.add_argument("--seconds", type=float, default=0.0)
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.step == "place":
        print("\n".join(place(args.submission, args.exercises)))
    else:
        data = results(args.pytest_json, args.pytest_log, args.placed, args.status, args.seconds)
        args.out.write_text(json.dumps(data, indent=2) + "\n")
        print(data["output"])


if __name__ == "__main__":
    main()

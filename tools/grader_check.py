"""Mutation testing of the grader: wrong answers it must fail, and right answers written differently it must pass.

    .venv/bin/python tools/grader_check.py                  # every entry of the catalogue (= make grader-check)
    .venv/bin/python tools/grader_check.py --quick          # only the entries that start no MPI rank
    .venv/bin/python tools/grader_check.py -k ex04 -j 2     # entries whose name contains ex04, 2 at a time
    .venv/bin/python tools/grader_check.py --list

Each entry of tools/grader_catalogue.py changes one solution (``solutions/exNN_*.py``) the way students
get it wrong (a receive that ignores its source, an accumulation that zeroes the gradients it was given,
an executor that deadlocks, an answer imported from pipeline_ref, an endless loop, ...). The tool copies
solutions/ into a temporary package, applies the change, and grades that package with the graded tests
of that exercise (``pytest tests/exercises/test_exNN_*.py --impl <package>``). A *wrong* entry must lose
points, and where it says ``expect``, a failing test's message must match (the deadlock names the rank
and the action; the endless loop names the function). A *right* entry (another correct answer) must
keep every point. Exit status 1 if any entry is not as it should be.

Time: each entry is a pytest run of its own (torch imported, often ranks started), 15-25 s without ranks and
20-60 s with them on the course's shared 2-core machine; a deadlock costs the watchdog's 20 s more. The whole
catalogue (then 33 entries) took 1225 s there, under a load of 11-20 from other jobs; ``--quick`` (then 16
entries) 566 s under the same load. With issue 29's 22 entries (55 now, 30 of them without ranks) the whole
catalogue took 1555 s with ``-j 2`` under a load of 14-19 (an entry 16-129 s). Too slow for the test suite (which has a minute for it), so ``make test`` only checks that
every entry still applies to its solution (tests/test_grader.py); run ``make grader-check`` after changing a
graded test or a solution.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from grader_catalogue import CATALOGUE, Entry  # noqa: E402

PACKAGE = "mutant"       # the temporary package's name: --impl mutant


class CatalogueError(ValueError):
    """An entry that no longer applies to its solution (its text is not there, once)."""


def replace_exercise(source: str, number: str, body: str) -> str:
    """``source`` with the code of ``# BEGIN EXERCISE number`` ... ``# END EXERCISE`` replaced by ``body``."""
    lines = source.splitlines(keepends=True)
    begin = next((i for i, line in enumerate(lines) if re.match(rf"\s*# BEGIN EXERCISE {re.escape(number)}:", line)),
                 None)
    if begin is None:
        raise CatalogueError(f"no exercise {number}")
    end = next(i for i in range(begin, len(lines)) if re.match(r"\s*# END EXERCISE\s*$", lines[i]))
    indent = re.match(r"\s*", lines[begin]).group(0)
    code = "".join(indent + line if line.strip() else line for line in _dedent(body).splitlines(keepends=True))
    return "".join(lines[:begin + 2]) + code + "".join(lines[end:])


def _dedent(text: str) -> str:
    import textwrap
    return textwrap.dedent(text).strip("\n") + "\n"


def mutate(entry: Entry) -> str:
    """The text of the changed solution file."""
    path = ROOT / "solutions" / f"{entry.module}.py"
    source = path.read_text()
    for old, new in entry.changes:
        count = source.count(old)
        if count != 1:
            raise CatalogueError(f"{entry.name}: {old!r} occurs {count} times in {path.name}, not once")
        source = source.replace(old, new)
    for number, body in entry.bodies:
        source = replace_exercise(source, number, body)
    compile(source, f"{entry.module}.py ({entry.name})", "exec")
    return source


def grade(entry: Entry, timeout: float = 600) -> dict:
    """Grade the changed package; returns the Gradescope-style report plus the run's seconds and output."""
    with tempfile.TemporaryDirectory(prefix="grader-check-") as tmp:
        package = Path(tmp, PACKAGE)
        shutil.copytree(ROOT / "solutions", package, ignore=shutil.ignore_patterns("__pycache__"))
        (package / f"{entry.module}.py").write_text(mutate(entry))
        report = Path(tmp, "grade.json")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   f"tests/exercises/test_{entry.module}.py", "--impl", PACKAGE, "--grade-json", str(report)]
        if entry.select:
            command += ["-k", entry.select]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (tmp, str(ROOT), os.environ.get("PYTHONPATH"))
                                                           if p)}
        start = time.monotonic()
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            output = done.stdout + done.stderr
        except subprocess.TimeoutExpired as err:
            output = f"timed out after {timeout:.0f} s\n{err.stdout or ''}"
        seconds = time.monotonic() - start
        data = json.loads(report.read_text()) if report.exists() else {"score": None, "max_score": None, "tests": []}
        return {**data, "seconds": seconds, "output": output}


def judge(entry: Entry, result: dict) -> str | None:
    """None if the grader did what it should with this entry, else what went wrong."""
    score, total = result["score"], result["max_score"]
    if score is None or not result["tests"]:
        return f"the graded run wrote no score:\n{result['output'][-2000:]}"
    if entry.right:
        if score != total:
            lost = [f"{t['name']}: {t['output'].strip().splitlines()[0] if t['output'].strip() else ''}"
                    for t in result["tests"] if t["score"] != t["max_score"]]
            return f"a correct answer lost points ({score:g}/{total:g}):\n    " + "\n    ".join(lost)
        return None
    if score == total:
        return f"a wrong answer got full marks ({score:g}/{total:g})"
    failing = [t for t in result["tests"] if t["score"] != t["max_score"]]
    if entry.expect and not any(re.search(entry.expect, t["output"]) for t in failing):
        firsts = "\n    ".join(f"{t['name']}: {t['output'][:300]}" for t in failing)
        return f"caught, but no failing test says /{entry.expect}/:\n    {firsts}"
    if entry.within and result["seconds"] > entry.within:
        return f"caught, but only after {result['seconds']:.0f} s (wanted within {entry.within:.0f} s)"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="match", default="", help="only the entries whose name contains this")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="entries graded at once (each starts its own ranks)")
    parser.add_argument("--quick", action="store_true", help="only the entries that start no MPI rank")
    parser.add_argument("--list", action="store_true", help="list the catalogue and exit")
    args = parser.parse_args(argv)
    entries = [e for e in CATALOGUE if args.match in e.name and not (args.quick and e.ranks)]
    if args.list:
        for e in entries:
            print(f"{'right' if e.right else 'wrong'}  {e.name:<40} {e.why}")
        return 0
    for e in entries:            # every change still applies, before anything runs
        mutate(e)
    start = time.monotonic()
    failures = []

    def one(entry: Entry):
        result = grade(entry)
        problem = judge(entry, result)
        score = "-" if result["score"] is None else f"{result['score']:g}/{result['max_score']:g}"
        verdict = "ok  " if problem is None else "MISS"
        print(f"{verdict} {entry.name:<40} {'right' if entry.right else 'wrong'} {score:>7} {result['seconds']:5.1f} s"
              + (f"\n     {problem}" if problem else ""), flush=True)
        if problem:
            failures.append(entry.name)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, entries))
    print(f"\n{len(entries) - len(failures)}/{len(entries)} entries as they should be, "
          f"in {time.monotonic() - start:.0f} s"
          + (f"; not: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Proof under load: re-execute the lessons beside a busy process and check every printed verdict.

    make lessons-under-load      # .venv/bin/python tools/lessons_under_load.py
    make lessons-run             # .venv/bin/python tools/lessons_under_load.py --quiet
    .venv/bin/python tools/lessons_under_load.py --lessons 05 07      # some lessons only

Layer: tools (it runs notebooks; nothing in pipeline_ref imports it).

Under load (the default) every lesson that measures something (a code cell that launches ranks or times
code) is copied into out/under_load/ and executed there, with the lessons/ folder as its working directory,
while one busy process (a Python loop at normal priority) competes for the cores. Its verdicts are then read
from the outputs and checked against the numbers printed in them, and the result goes to
lessons/under_load.md. Quiet (--quiet) re-executes every lesson in place, without the busy process, for
the committed outputs, and checks the same verdicts. A lesson's students meet a loaded laptop; a sentence
that only holds on a quiet machine must come out flagged there, never wrong.

A verdict is a line the lessons print from their numbers; ``VERDICTS`` below lists the kinds this script
reads and what "agrees" means for each (printed numbers are rounded, so each check allows half a unit of
the last printed digit). A verdict that disagrees with its own numbers, or a cell
that fails, makes the exit status 1. The busy process checks its parent and stops when this script does.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import ipykernel.kernelspec
import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "lessons"
OUT = ROOT / "out" / "under_load"
REPORT = LESSONS / "under_load.md"
CELL_TIMEOUT = 600          # seconds; a lesson's longest cell is a launch with its own time limit below this
# A loop that stops once its parent is gone, so no busy process outlives this script (even when killed).
BUSY = ("import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n"
        "    for _ in range(2_000_000):\n        pass\n")
MEASURES = ("launch(", "measure.", "layer_costs(", "perf_counter(")


NUMBER = r"-?\d+(?:\.\d+)?"


def _word_of_ratio(low: float, high: float, word: str, digits: float = 0.005) -> bool:
    """measure.Ratio.word from a printed spread: shorter only below 1, longer only above, else neither."""
    if word == "shorter":
        return low < 1 + digits and high < 1 + digits
    if word == "longer":
        return low > 1 - digits
    return low <= 1 + digits and high >= 1 - digits


def _protocol(m) -> bool:
    low, ratio, high = (float(m[k]) for k in ("low", "ratio", "high"))
    return low - 0.005 <= ratio <= high + 0.005 and _word_of_ratio(low, high, m["word"])


def _single_ratio(m) -> bool:
    ratio, word = float(m["ratio"]), m["word"]
    return {"shorter": ratio < 1.005, "longer": ratio > 0.995, "as long": abs(ratio - 1) < 0.005}[word]


def _within(m) -> bool:
    low, high, tolerance = int(m["low"]), int(m["high"]), int(m["tolerance"])
    inside = low >= -tolerance - 1 and high <= tolerance + 1
    strictly = low >= -tolerance + 1 and high <= tolerance - 1
    return (m["word"] == "within" and inside) or (m["word"] == "NOT within" and not strictly)


def _inside_band(m) -> bool:
    value, low, high = float(m["value"]), float(m["low"]), float(m["high"])
    inside = low - 1 <= value <= high + 1
    strictly = low + 1 <= value <= high - 1
    return (m["word"] == "inside" and inside) or (m["word"] == "outside" and not strictly)


# (kind, pattern, does the line agree with its own numbers)
VERDICTS = [
    ("measure.verdict", re.compile(rf"'s [^'()]*? is (?P<ratio>{NUMBER}) of .+?'s \((?P<low>{NUMBER})-"
                                   rf"(?P<high>{NUMBER}) over \d+ rounds?\): (?P<word>shorter|longer|not "
                                   rf"distinguishable)"), _protocol),
    ("step_ratio_sentence", re.compile(rf"(?P<ratio>{NUMBER}) \((?P<word>shorter|longer|as long)\)"),
     _single_ratio),
    ("profiling.Consistency", re.compile(r"(?P<low>[+-]\d+)% to (?P<high>[+-]\d+)% of their median .*?: "
                                         r"(?P<word>NOT within|within) \+-(?P<tolerance>\d+)%"), _within),
    ("prediction in its band", re.compile(rf"predicted (?P<value>{NUMBER}) ms.*?band (?P<low>{NUMBER})-"
                                          rf"(?P<high>{NUMBER}) ms: the prediction is "
                                          rf"(?P<word>inside|outside)"),
     _inside_band),
]


class Check(NamedTuple):
    cell: int
    kind: str
    text: str
    status: str         # "agrees", "flagged" (the protocol flagged it) or "DISAGREES"
    why: str


def check_line(cell: int, line: str) -> list[Check]:
    """Every verdict in one printed line, each checked against the numbers in it."""
    checks = []
    for kind, pattern, agrees in VERDICTS:
        for m in pattern.finditer(line):
            ok = agrees(m)
            status = "DISAGREES" if not ok else "flagged" if "flagged" in line else "agrees"
            why = "" if ok else f"{kind}: its words do not follow from its numbers"
            checks.append(Check(cell, kind, line.strip(), status, why))
    return checks


def check_outputs(nb) -> list[Check]:
    """The verdicts printed by every code cell of an executed notebook."""
    checks = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            for line in text.splitlines():
                checks += check_line(index, line)
    return checks


def lessons(selected: list[str] | None) -> list[Path]:
    paths = sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))
    if selected:
        paths = [p for p in paths if p.name[:2] in selected]
        missing = set(selected) - {p.name[:2] for p in paths}
        if missing:
            raise SystemExit(f"no lesson numbered {', '.join(sorted(missing))} in {LESSONS}")
    return paths


def measures(nb) -> bool:
    """Does any code cell launch ranks or time code (so load can move what it prints)?"""
    return any(c.cell_type == "code" and any(m in c.source for m in MEASURES) for c in nb.cells)


class ThisPython(KernelSpecManager):
    """Every kernel name means this interpreter (the course's .venv), whatever kernels the user installed."""

    def get_kernel_spec(self, kernel_name):
        spec = ipykernel.kernelspec.get_kernel_dict()
        return KernelSpec(resource_dir=ipykernel.kernelspec.RESOURCES, **spec)


def execute(nb, timeout: int = CELL_TIMEOUT) -> tuple[float, str | None]:
    """Run every cell with lessons/ as the working directory; (seconds, the first error or None)."""
    kernel = KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())
    client = NotebookClient(nb, km=kernel, timeout=timeout, allow_errors=True,
                            resources={"metadata": {"path": str(LESSONS)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return seconds, f"cell {index}: {output.get('ename')}: {output.get('evalue')}"[:300]
    return seconds, None


def start_busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.DEVNULL)


def stop_busy(busy: subprocess.Popen) -> None:
    if busy.poll() is None:
        busy.terminate()
        try:
            busy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            busy.kill()
            busy.wait()


def run_one(path: Path, quiet: bool) -> dict:
    """Execute one lesson (in place when quiet, else a copy in out/under_load/) and check its verdicts."""
    nb = nbformat.read(path, as_version=4)
    load_before = os.getloadavg()[0]
    busy = None if quiet else start_busy()
    try:
        seconds, error = execute(nb)
    finally:
        if busy is not None:
            stop_busy(busy)
    target = path if quiet else OUT / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    checks = check_outputs(nb)
    return {"lesson": path.name, "seconds": seconds, "error": error, "checks": checks, "written": target,
            "load": (load_before, os.getloadavg()[0])}


def summary_line(result: dict) -> str:
    checks = result["checks"]
    counts = {status: sum(c.status == status for c in checks)
              for status in ("agrees", "flagged", "DISAGREES")}
    state = "FAILED: " + result["error"] if result["error"] else "ran"
    return (f"{result['lesson']}: {state} in {result['seconds']:.0f} s; {len(checks)} verdict(s): "
            + ", ".join(f"{n} {s}" for s, n in counts.items()))


def report(results: list[dict], quiet: bool, started: float) -> str:
    """lessons/under_load.md: the machine, the load, and each verdict with its status."""
    from pipeline_ref.engine.machine import cores
    mode = ("quiet (no busy process)" if quiet
            else "under load: one busy process (a Python loop) beside the lesson")
    lines = ["# The lessons' verdicts under load", "",
             "Written by `tools/lessons_under_load.py` (`make lessons-under-load`): each lesson that "
             "measures was executed in a copy (out/under_load/) "
             + ("" if quiet else "with a busy process competing for the cores")
             + ", and every verdict it printed was "
             "checked against the numbers printed in it. A verdict *agrees* when its words follow from its "
             "numbers, is *flagged* when the protocol flagged it (contention, drift, a median outside its "
             "band: "
             "not presented as a result), and DISAGREES otherwise (a bug).", "",
             f"- mode: {mode}", f"- machine: {cores()} cores, {os.uname().machine}, Python "
             f"{sys.version.split()[0]}",
             f"- started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
             f"took {time.time() - started:.0f} s", ""]
    lines += ["| lesson | executed in | load average (1 min) before, after | verdicts | agree | flagged | "
              "disagree | error |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        checks = r["checks"]
        count = lambda status: sum(c.status == status for c in checks)  # noqa: E731
        lines.append(f"| {r['lesson']} | {r['seconds']:.0f} s | {r['load'][0]:.1f}, {r['load'][1]:.1f} | "
                     f"{len(checks)} | {count('agrees')} | {count('flagged')} | {count('DISAGREES')} | "
                     f"{r['error'] or '-'} |")
    for r in results:
        lines += ["", f"## {r['lesson']}", ""]
        lines += [f"- cell {c.cell}, {c.status}: `{c.text}`" + (f" ({c.why})" if c.why else "")
                  for c in r["checks"]] or ["- no verdict printed"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true",
                        help="re-execute every lesson in place, no busy process")
    parser.add_argument("--lessons", nargs="+", metavar="NN", help="only these lessons (two digits each)")
    args = parser.parse_args(argv)
    started, results = time.time(), []
    for path in lessons(args.lessons):
        if not args.quiet and not measures(nbformat.read(path, as_version=4)):
            print(f"{path.name}: measures nothing, skipped under load", flush=True)
            continue
        results.append(run_one(path, args.quiet))
        print(summary_line(results[-1]), flush=True)
    if not args.quiet:
        REPORT.write_text(report(results, args.quiet, started))
        print(f"report: {REPORT.relative_to(ROOT)}")
    else:   # the instructor's guide quotes the cells' saved times: keep it equal to what was just saved
        subprocess.run([sys.executable, "-m", "book.timings", "--write"], cwd=ROOT, check=True)
    failed = [r for r in results if r["error"] or any(c.status == "DISAGREES" for c in r["checks"])]
    print(f"{len(results)} lesson(s) in {time.time() - started:.0f} s; "
          + (f"{len(failed)} with an error or a disagreeing verdict" if failed
             else "every verdict agrees or is "
             "flagged"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""How long each lesson's cells took when its committed outputs were made, read from the notebooks themselves.

Jupyter records, in each executed code cell's metadata, when the kernel started and finished it
(``execution``: ``iopub.execute_input`` .. ``shell.execute_reply``). This module turns that into the table the
instructor's guide quotes (and the site's "Lesson timings" page): the whole notebook and its slowest cells.
These are measurements of one run, on the machine that ran it (a shared 2-core CPU box for the committed
outputs), not estimates; re-executing a notebook updates them.

    .venv/bin/python -m book.timings          # prints the table
    .venv/bin/python -m book.timings --write  # rewrites lessons/INSTRUCTOR.md's "Run live" rows from them

The instructor's guide quotes each lesson's times in its "Run live" row, generated here (``run_live``) and
kept equal to the notebooks by ``tests/test_lessons.py``: re-executing a lesson means running ``--write``
again. A row is the generated text, then optional advice (". Advice: ...") that states no time.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from book import course

SLOW_CELL_SECONDS = 3.0     # cells at least this long are listed: the ones worth planning a live demo around
INSTRUCTOR = course.ROOT / "lessons" / "INSTRUCTOR.md"
RUN_LIVE_ROW = re.compile(r"^\| \*\*Run live\*\* \| (.*) \|$", re.M)
LESSON_HEADING = re.compile(r"^## (\d\d) · ", re.M)


@dataclass(frozen=True)
class CellTime:
    index: int          # the cell's position in the notebook (0-based)
    seconds: float
    first_line: str


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def cell_times(notebook: Path) -> list[CellTime]:
    """Each executed code cell's duration, from its execution metadata (cells without it are left out)."""
    times = []
    for index, cell in enumerate(json.loads(notebook.read_text())["cells"]):
        run = cell.get("metadata", {}).get("execution", {})
        if cell["cell_type"] != "code" or "iopub.execute_input" not in run or "shell.execute_reply" not in run:
            continue
        seconds = (_when(run["shell.execute_reply"]) - _when(run["iopub.execute_input"])).total_seconds()
        source = "".join(cell["source"]).strip().splitlines()
        # the line that starts ranks says best what a slow cell waits for; else the first line of code
        first = next((line for line in source if "launch(" in line),
                     next((line for line in source if not line.startswith("#")), source[0] if source else ""))
        times.append(CellTime(index, seconds, first.strip()))
    return times


def code_cell_count(notebook: Path) -> int:
    return sum(cell["cell_type"] == "code" for cell in json.loads(notebook.read_text())["cells"])


def run_live(notebook: Path, most: int = 3) -> str:
    """The generated start of a lesson's "Run live" row: its code cells, their total time, the slowest."""
    times, count = cell_times(notebook), code_cell_count(notebook)
    if not times:
        return f"{count} code cells, not timed (the notebook was saved without execution times)"
    timed = f"{count} code cells" if len(times) == count else f"{count} code cells ({len(times)} timed)"
    slow = [t for t in sorted(times, key=lambda t: -t.seconds) if t.seconds >= SLOW_CELL_SECONDS][:most]
    text = (f"{timed}, {sum(t.seconds for t in times):.0f} s in all, from the execution times saved with the "
            f"committed outputs")
    if slow:
        text += "; the slowest: " + ", ".join(
            f"cell {t.index} (`{_short(t.first_line, 56)}`) {t.seconds:.0f} s" for t in slow)
    others = [t for t in times if t not in slow]
    if others:
        text += f"; the other {len(others)} together {sum(t.seconds for t in others):.0f} s"
    return text


def instructor_rows(text: str) -> dict[str, str]:
    """Each lesson's "Run live" row in the guide's text, by lesson number."""
    rows = {}
    for number, section in zip(LESSON_HEADING.findall(text), LESSON_HEADING.split(text)[2::2]):
        found = RUN_LIVE_ROW.search(section)
        if found:
            rows[number] = found.group(1)
    return rows


def with_generated_rows(text: str, lessons: list[course.Lesson]) -> str:
    """The guide with every lesson's "Run live" row starting with ``run_live`` (advice after it is kept)."""
    generated = {lesson.number: run_live(lesson.notebook) for lesson in lessons}
    parts = LESSON_HEADING.split(text)
    for k in range(1, len(parts), 2):
        number, section = parts[k], parts[k + 1]
        if number not in generated:
            continue
        found = RUN_LIVE_ROW.search(section)
        if found is None:
            raise ValueError(f"INSTRUCTOR.md: lesson {number} has no '| **Run live** | ... |' row")
        advice = found.group(1).split(". Advice: ", 1)[1] if ". Advice: " in found.group(1) else ""
        row = generated[number] + (f". Advice: {advice}" if advice else "")
        parts[k + 1] = section[:found.start(1)] + row + section[found.end(1):]
    return "".join(p if i % 2 == 0 else f"## {p} · " for i, p in enumerate(parts))


def page(lessons: list[course.Lesson]) -> str:
    """The site's "Lesson timings" page, in MyST markdown."""
    lines = ["# Lesson timings, measured", "",
             "How long each notebook's code took when its committed outputs were made, read from the execution "
             "times Jupyter stores in each cell (`python -m book.timings`). One run, on a shared 2-core CPU "
             "machine with no GPU: a laptop with 4 or more free cores is usually faster. The cells listed take "
             f"{SLOW_CELL_SECONDS:g} s or more: those are the ones to start before you talk.", "",
             "| lesson | code cells timed | all code, s | slowest cells (cell number: seconds) |", "|---|---|---|---|"]
    for lesson in lessons:
        times = cell_times(lesson.notebook)
        slow = [t for t in sorted(times, key=lambda t: -t.seconds) if t.seconds >= SLOW_CELL_SECONDS][:4]
        listed = "; ".join(f"{t.index}: {t.seconds:.0f} (`{_short(t.first_line)}`)" for t in slow) or "none"
        total = f"{sum(t.seconds for t in times):.0f}" if times else "not recorded"
        lines.append(f"| [{lesson.number}](lessons/{lesson.stem}.ipynb) | {len(times)} | {total} | {listed} |")
    return "\n".join(lines) + "\n"


def _short(line: str, width: int = 48) -> str:
    line = line.replace("|", "\\|").replace("`", "'")
    return line if len(line) <= width else line[:width - 3] + "..."


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        INSTRUCTOR.write_text(with_generated_rows(INSTRUCTOR.read_text(), course.lessons()))
        print(f"wrote the 'Run live' rows of {INSTRUCTOR.relative_to(course.ROOT)}")
        sys.exit(0)
    for lesson in course.lessons():
        times = cell_times(lesson.notebook)
        print(f"{lesson.stem}: {sum(t.seconds for t in times):.1f} s in {len(times)} cells")
        for t in sorted(times, key=lambda t: -t.seconds)[:5]:
            print(f"   cell {t.index:>2}  {t.seconds:5.1f} s  {t.first_line[:70]}")

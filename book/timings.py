"""How long each lesson's cells took when its committed outputs were made, read from the notebooks themselves.

Jupyter records, in each executed code cell's metadata, when the kernel started and finished it
(``execution``: ``iopub.execute_input`` .. ``shell.execute_reply``). This module turns that into the table the
instructor's guide quotes (and the site's "Lesson timings" page): the whole notebook and its slowest cells.
These are measurements of one run, on the machine that ran it (a shared 2-core CPU box for the committed
outputs), not estimates; re-executing a notebook updates them.

    .venv/bin/python -m book.timings          # prints the table
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from book import course

SLOW_CELL_SECONDS = 3.0     # cells at least this long are listed: the ones worth planning a live demo around


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
        first = next((line for line in source if not line.startswith("# NBVAL")), source[0] if source else "")
        times.append(CellTime(index, seconds, first.strip()))
    return times


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
    for lesson in course.lessons():
        times = cell_times(lesson.notebook)
        print(f"{lesson.stem}: {sum(t.seconds for t in times):.1f} s in {len(times)} cells")
        for t in sorted(times, key=lambda t: -t.seconds)[:5]:
            print(f"   cell {t.index:>2}  {t.seconds:5.1f} s  {t.first_line[:70]}")

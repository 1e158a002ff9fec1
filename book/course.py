"""What the course is made of, found from the files: the lessons, their exercises, their graded tests, their titles.

The site (book/build_site.py), the slides (book/build_slides.py) and their tests all take the lesson list
from here, so a lesson added or renumbered in lessons/ needs no edit anywhere else:

    lessons/NN_topic.ipynb   <->  exercises/exNN_*.py  <->  tests/exercises/test_exNN_*.py   (matched by NN)

    .venv/bin/python -m book.course      # prints the map
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LESSON_NAME = re.compile(r"(\d\d)_\w+\.ipynb")


@dataclass(frozen=True)
class Lesson:
    number: str                 # "02"
    notebook: Path              # lessons/02_gpipe.ipynb
    title: str                  # the notebook's first heading, without its '#'
    exercise: Path | None       # exercises/ex02_gpipe.py, when there is one
    graded: Path | None         # tests/exercises/test_ex02_gpipe.py, when there is one

    @property
    def stem(self) -> str:
        return self.notebook.stem


def first_heading(notebook: Path) -> str:
    """The text of the first markdown heading of a notebook (its title on the site and on the first slide)."""
    cells = json.loads(notebook.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] != "markdown":
            continue
        for line in "".join(cell["source"]).splitlines():
            found = re.match(r"#{1,6}\s+(.*\S)", line)
            if found:
                return found.group(1)
    raise ValueError(f"{notebook} has no markdown heading: the site needs one as the lesson's title")


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("*Here Jupyter shows the interactive simulator (ipywidgets: sliders for the schedule, stages and "
               "microbatches that redraw the Gantt chart and its utilization). It needs a running kernel: open "
               "the lesson with `make lessons` and run this cell. Its code: "
               "`lessons/lesson_code/simulator_widget.py`.*")


def without_widgets(cells: list[dict]) -> int:
    """Replaces each widget output (a live view, blank without a kernel) by a note on how to get it; returns how
    many. The site and the slides are static: the lessons' static charts beside the widget say the same."""
    replaced = 0
    for cell in cells:
        outputs = cell.get("outputs", [])
        for i, output in enumerate(outputs):
            if WIDGET_VIEW in output.get("data", {}):
                outputs[i] = {"output_type": "display_data", "metadata": {},
                              "data": {"text/markdown": WIDGET_NOTE, "text/plain": WIDGET_NOTE}}
                replaced += 1
    return replaced


def _one(paths: list[Path], what: str) -> Path | None:
    if len(paths) > 1:
        raise ValueError(f"more than one {what}: {[str(p) for p in paths]}")
    return paths[0] if paths else None


def lessons(root: Path = ROOT) -> list[Lesson]:
    """Every lessons/NN_*.ipynb, in order, with its exercise and graded tests matched by NN."""
    found = []
    for notebook in sorted((root / "lessons").glob("[0-9][0-9]_*.ipynb")):
        if not LESSON_NAME.fullmatch(notebook.name):
            continue
        nn = notebook.name[:2]
        found.append(Lesson(
            number=nn, notebook=notebook, title=first_heading(notebook),
            exercise=_one(sorted((root / "exercises").glob(f"ex{nn}_*.py")), f"exercise for lesson {nn}"),
            graded=_one(sorted((root / "tests" / "exercises").glob(f"test_ex{nn}_*.py")), f"graded file for {nn}"),
        ))
    if not found:
        raise FileNotFoundError(f"no lessons/NN_*.ipynb under {root}")
    return found


if __name__ == "__main__":
    for lesson in lessons():
        rel = (lambda p: p.relative_to(ROOT) if p else "-")
        print(f"{lesson.number}  {rel(lesson.notebook)}  {rel(lesson.exercise)}  {rel(lesson.graded)}  {lesson.title}")

"""The site's home page, written for a student: what the course is, each lesson and its exercise as links, how
to grade, and the repository's README one click away (it stays on the site, written for developers).

    .venv/bin/python -m book.home          # prints the page (MyST markdown), as book/build_site.py stages it

The course's one-paragraph description is the README's first paragraph (so the two cannot drift); the lesson
list comes from book/course.py. Also draws the site's favicon. Layer: tools (the course's website).
"""
from __future__ import annotations

import re
from pathlib import Path

from book import course

GRADE_ALL = "make grade"


def description(readme: Path = course.ROOT / "README.md") -> str:
    """The README's first paragraph after its title."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", readme.read_text()) if p.strip()]
    return next(p for p in paragraphs if not p.startswith("#"))


def page(lessons: list[course.Lesson]) -> str:
    lines = ["# Pipeline parallelism, measured", "", description(), "",
             "## The lessons", "",
             "Each lesson is a Jupyter notebook: read it here, or run it yourself (see *Running the course* "
             "below). Each ends with an exercise, a Python file of functions for you to write.", "",
             "| # | lesson | exercise |", "|---|---|---|"]
    for lesson in lessons:
        exercise = (f"[`{lesson.exercise.name}`](exercises/{lesson.exercise.stem}.md)" if lesson.exercise
                    else "none yet")
        lines.append(f"| {lesson.number} | [{lesson.title}](lessons/{lesson.stem}.ipynb) | {exercise} |")
    lines += ["", "## Grading your exercises", "",
              "In your copy of the repository, write the functions of `exercises/exNN_*.py` (each raises "
              "`NotImplementedError` until you do), then, from its root:", "",
              "```bash",
              f"{GRADE_ALL}                      # every exercise: PASS/FAIL per test, points, total",
              "make grade IMPL=solutions      # the reference answers, for comparison",
              "```", "",
              "Each exercise's page lists its tests with their points, and hints that open one level at a "
              "time. If your course grades on Gradescope, upload the same `exercises/exNN_*.py` files "
              "there.", "",
              "## Running the course", "",
              "Installing the environment, opening the notebooks, the command line and how the code is laid "
              "out: [the repository's README](README.md). For teachers: [the instructor's guide]"
              "(lessons/INSTRUCTOR.md) and [lesson timings](timings.md).", ""]
    return "\n".join(lines)


def favicon_bytes() -> bytes:
    """A 32x32 icon: three staggered bars, a pipeline's stages on a timeline."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for stage, colour in enumerate(((31, 119, 180), (255, 127, 14), (44, 160, 44))):
        draw.rectangle((2 + 6 * stage, 4 + 9 * stage, 17 + 6 * stage, 10 + 9 * stage), fill=colour)
    out = io.BytesIO()
    image.save(out, format="ICO", sizes=[(32, 32)])
    return out.getvalue()


if __name__ == "__main__":
    print(page(course.lessons()))

"""Assigns reveal.js slide types to a lesson's cells at build time, so the notebooks carry no slide metadata.

The lessons are written to be read: long prose cells between code and plots. A deck to talk over needs less
text on screen, so ``SlideTypes`` (an nbconvert preprocessor, run on a copy by book/build_slides.py) splits each
markdown cell into its blocks (paragraphs, lists, tables, display math, fenced code) and marks them:

    # / ## heading              slide     (a new column of the deck)
    ### heading and deeper      subslide  (a new slide below)
    first paragraph of a cell   on the slide: the claim
    **Predict.** / **Try it.**  fragment  (bold-led paragraphs: the questions for the room, one click each)
    lists, tables, $$ math $$   fragment
    other paragraphs            notes     (the speaker view, key S, has the full text)
    code cell with a plot       subslide  (every plot gets a slide of its own)
    other code cell             on the current slide, or a new one when it would overflow

A cell the author already marked (``metadata.slideshow.slide_type``) keeps its mark: the rules fill in only
what is missing. The outputs are untouched (nothing is executed).

    .venv/bin/python -m book.slide_types lessons/02_gpipe.ipynb     # prints each cell's type
"""
from __future__ import annotations

import math
import re
import sys

import nbformat
from nbconvert.preprocessors import Preprocessor

HEADING = re.compile(r"(#{1,6})\s+\S")
SLIDE_LINES = 16            # about what fits on a 960x700 slide at the deck's font sizes
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")


def blocks(markdown: str) -> list[str]:
    """The top-level blocks of a markdown text, split at blank lines, keeping fences and $$ math whole."""
    found, current, fence, in_math = [], [], None, False
    for line in markdown.splitlines():
        stripped = line.strip()
        if fence:
            current.append(line)
            fence = None if stripped.startswith(fence) else fence
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        elif stripped.count("$$") % 2 == 1:
            in_math = not in_math
        if not stripped and not in_math and not fence:
            if current:
                found.append("\n".join(current))
            current = []
        else:
            current.append(line)
    if current:
        found.append("\n".join(current))
    return found


def kind(block: str) -> str:
    """heading1..6, list, table, math, code, question or prose."""
    first = block.lstrip().splitlines()[0]
    heading = HEADING.match(first)
    if heading:
        return f"heading{len(heading.group(1))}"
    if re.match(r"([-*+]|\d+\.)\s", first):
        return "list"
    if first.startswith("|"):
        return "table"
    if first.startswith("$$") or first.startswith(r"\begin"):
        return "math"
    if first.startswith(("```", "~~~")):
        return "code"
    if first.startswith("**"):
        return "question"
    return "prose"


def text_lines(text: str, width: int = 90) -> int:
    """Roughly how many lines a text takes on a slide."""
    return sum(max(1, math.ceil(len(line) / width)) for line in text.splitlines())


def code_lines(cell) -> int:
    lines = len(cell.source.splitlines())
    for output in cell.get("outputs", []):
        if any(t in output.get("data", {}) for t in IMAGE_TYPES):
            lines += SLIDE_LINES          # a plot fills a slide
        text = output.get("text", "") or output.get("data", {}).get("text/plain", "")
        lines += min(len(str(text).splitlines()), SLIDE_LINES)
    return lines


def has_plot(cell) -> bool:
    return any(t in o.get("data", {}) for o in cell.get("outputs", []) for t in IMAGE_TYPES)


class SlideTypes(Preprocessor):
    """Splits markdown cells into blocks and gives every cell a slide type (see the module's docstring)."""

    def preprocess(self, nb, resources=None):
        cells, used = [], 0            # ``used``: lines on the current slide so far

        def add(cell, slide_type: str, lines: int = 0) -> None:
            nonlocal used
            marked = cell.metadata.get("slideshow", {}).get("slide_type")
            slide_type = marked or slide_type
            if slide_type == "-" and cells and used > 2 and used + lines > SLIDE_LINES:
                # It would overflow: continue on a new slide (but never leave a heading alone on one; a slide
                # taller than the screen scrolls).
                slide_type = "subslide"
            if slide_type in ("slide", "subslide"):
                used = 0
            if slide_type not in ("notes", "skip"):
                used += lines
            cell.metadata["slideshow"] = {"slide_type": slide_type}
            cells.append(cell)

        for cell in nb.cells:
            if cell.cell_type != "markdown" or cell.metadata.get("slideshow"):
                if cell.cell_type == "code" and not cell.metadata.get("slideshow"):
                    add(cell, "subslide" if has_plot(cell) else "-", code_lines(cell))
                else:
                    add(cell, "-", text_lines(cell.source))
                continue
            for index, block in enumerate(blocks(cell.source)):
                part = nbformat.v4.new_markdown_cell(block)
                what = kind(block)
                if what.startswith("heading"):
                    add(part, "slide" if int(what[-1]) <= 2 else "subslide", text_lines(block))
                elif index == 0 or (what == "prose" and cells and _after_heading(cells[-1])):
                    # The first block of a cell (or right under its heading) states the claim.
                    add(part, "subslide" if index == 0 and used > SLIDE_LINES // 2 else "-", text_lines(block))
                elif what in ("list", "table", "math", "question", "code"):
                    add(part, "fragment" if used + text_lines(block) <= SLIDE_LINES else "subslide",
                        text_lines(block))
                else:
                    add(part, "notes")
        nb.cells = cells
        return nb, resources or {}


def _after_heading(cell) -> bool:
    return cell.cell_type == "markdown" and kind(cell.source).startswith("heading")


def count(nb) -> dict[str, int]:
    """How many cells have each slide type (after ``SlideTypes``)."""
    counts: dict[str, int] = {}
    for cell in nb.cells:
        slide_type = cell.metadata.get("slideshow", {}).get("slide_type", "-")
        counts[slide_type] = counts.get(slide_type, 0) + 1
    return counts


if __name__ == "__main__":
    notebook, _ = SlideTypes().preprocess(nbformat.read(sys.argv[1], as_version=4), {})
    for cell in notebook.cells:
        first = cell.source.strip().splitlines()[0][:80] if cell.source.strip() else ""
        print(f"{cell.metadata['slideshow']['slide_type']:>9}  {cell.cell_type:8}  {first}")
    print(count(notebook))

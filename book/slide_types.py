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
    code cell with a plot       its code and text outputs as any code cell, then each plot on a slide of its own
    other code cell             on the current slide, or a new one when it would overflow
    a fragment first on a slide on the slide (a slide must not open empty)

A code cell longer than a slide shows its first lines and the rest in the speaker notes; a long text output
its first lines ("plots_apart" and "shortened"; the full cell is in the lesson).

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
CODE_SIZE = 0.55            # a line of code is this much of a line of text
CODE_WIDTH = 78             # characters in a line of code before it wraps
OUTPUT_WIDTH = 70           # in a line of text output (set in a narrower box)
CELL_LINES = 22             # lines of code and text output that fit one slide
CODE_LINES = 14             # of which the code may take (the rest are left to the outputs)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
PLOT_ALT = "The plot the code on the slide before draws"


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


def items_apart(found: list[str]) -> list[str]:
    """A list too long for half a slide becomes one block per item (each then a click, or the next slide)."""
    apart = []
    for block in found:
        if kind(block) != "list" or text_lines(block) <= SLIDE_LINES // 2:
            apart.append(block)
            continue
        items: list[list[str]] = []
        for line in block.splitlines():
            if re.match(r"([-*+]|\d+\.)\s", line) or not items:
                items.append([])
            items[-1].append(line)
        apart += ["\n".join(item) for item in items]
    return apart


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


def text_lines(text: str, width: int = 75) -> int:
    """Roughly how many lines a text takes on a slide."""
    return sum(max(1, math.ceil(len(line) / width)) for line in text.splitlines())


def _text(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def _output_text(output) -> str:
    return _text(output.get("text", "") or output.get("data", {}).get("text/plain", ""))


def code_lines(cell) -> int:
    """The slide lines (of text size) a code cell and its text outputs take: code is set smaller."""
    lines = text_lines(cell.source, CODE_WIDTH) + 1
    for output in cell.get("outputs", []):
        if any(t in output.get("data", {}) for t in IMAGE_TYPES):
            lines += 2 * SLIDE_LINES          # a plot fills a slide
        lines += text_lines(_output_text(output), OUTPUT_WIDTH) + 1
    return math.ceil(lines * CODE_SIZE)


def has_plot(cell) -> bool:
    return any(t in o.get("data", {}) for o in cell.get("outputs", []) for t in IMAGE_TYPES)


def plot_cell(output: dict):
    """One plot as a markdown cell that starts a slide of its own (the deck's CSS sizes it to the slide)."""
    data = output["data"]
    kind = next(t for t in IMAGE_TYPES if t in data)
    image = data[kind] if isinstance(data[kind], str) else "".join(data[kind])
    if kind == "image/svg+xml":
        import base64
        image = base64.b64encode(image.encode()).decode()
    cell = nbformat.v4.new_markdown_cell(
        f'<img class="slide-plot" alt="{PLOT_ALT}" src="data:{kind};base64,{image.strip()}">')
    cell.metadata["slideshow"] = {"slide_type": "subslide"}
    return cell


def shortened(cell):
    """A code cell's source and text outputs cut to what a slide shows; the whole source goes to the notes."""
    notes = []
    lines = cell.source.splitlines()
    if text_lines(cell.source, CODE_WIDTH) > CODE_LINES:
        kept, used = [], 1
        for line in lines:
            used += text_lines(line, CODE_WIDTH)
            if used > CODE_LINES:
                break
            kept.append(line)
        cell.source = "\n".join(kept + [f"# ... {len(lines) - len(kept)} more lines: the whole cell is in "
                                        f"the speaker notes (key S)"])
        note = nbformat.v4.new_markdown_cell("The whole cell:\n\n```python\n" + "\n".join(lines) + "\n```")
        note.metadata["slideshow"] = {"slide_type": "notes"}
        notes.append(note)
    left = CELL_LINES - text_lines(cell.source, CODE_WIDTH)
    for output in cell.get("outputs", []):
        holder, key = (output, "text") if "text" in output else (output.get("data", {}), "text/plain")
        if key not in holder or (holder is not output and any(t != key for t in holder)):
            continue          # rich outputs (HTML tables, plots) are left as they are
        rows = _text(holder[key]).splitlines()
        kept, used = [], 1
        for row in rows:
            used += text_lines(row, OUTPUT_WIDTH)
            if used > max(left, 3):
                break
            kept.append(row)
        if len(kept) < len(rows):
            holder[key] = "\n".join(kept + [f"[... {len(rows) - len(kept)} more lines in the lesson]"]) + "\n"
        left -= used
    return [cell] + notes


def plots_apart(cells: list) -> list:
    """Each code cell with its plots taken out, and each plot after it on a slide of its own."""
    laid_out = []
    for cell in cells:
        if cell.cell_type != "code" or not has_plot(cell):
            laid_out += shortened(cell) if cell.cell_type == "code" else [cell]
            continue
        plots = [o for o in cell.outputs if any(t in o.get("data", {}) for t in IMAGE_TYPES)]
        cell.outputs = [o for o in cell.outputs if o not in plots]
        laid_out += shortened(cell) + [plot_cell(o) for o in plots]
    return laid_out


class SlideTypes(Preprocessor):
    """Splits markdown cells into blocks and gives every cell a slide type (see the module's docstring)."""

    def preprocess(self, nb, resources=None):
        cells, used = [], 0            # ``used``: lines on the current slide so far
        nb.cells = plots_apart(nb.cells)

        def add(cell, slide_type: str, lines: int = 0) -> None:
            nonlocal used
            marked = cell.metadata.get("slideshow", {}).get("slide_type")
            slide_type = marked or slide_type
            if slide_type == "fragment" and used == 0:
                slide_type = "-"          # the first thing on a slide: a hidden one would open it empty
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
            for index, block in enumerate(items_apart(blocks(cell.source))):
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

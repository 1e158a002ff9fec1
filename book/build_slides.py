"""`make slides`: each lesson as a reveal.js deck, from the committed notebook (never re-executed).

    .venv/bin/python -m book.build_slides          # -> out/slides/NN_topic.slides.html, out/slides/index.html

nbconvert's SlidesExporter makes the decks. The notebooks carry no slide metadata (they are edited by others,
and their outputs are the lesson): book/slide_types.py assigns slide, subslide, fragment and notes on a copy at
build time. nbconvert's own reveal template fetches reveal.js (unpkg), require.js, jQuery, MathJax 2 and
mermaid from CDNs when a deck is opened; book/slides_template/ replaces all of them with the copies this
folder carries (reveal.js and MathJax 3 from npm, book/assets.py), so a deck works offline, from file:// or
any static server. The plots are embedded in the HTML (data: URIs). Press S in a deck for the speaker notes.
"""
from __future__ import annotations

import argparse
import html
import re
import time
from pathlib import Path

import nbformat
from nbconvert import SlidesExporter
from traitlets.config import Config

from book import assets, course
from book.slide_types import SlideTypes, count

ROOT = course.ROOT
OUT = ROOT / "out" / "slides"
TEMPLATE = ROOT / "book" / "slides_template"
GRADE_ALL = "make grade"


def exporter() -> SlidesExporter:
    config = Config()
    config.SlidesExporter.reveal_url_prefix = "reveal.js"     # the copy beside the decks
    config.SlidesExporter.reveal_theme = "white"              # 'simple' (the default) imports Google Fonts
    config.SlidesExporter.reveal_transition = "none"
    config.SlidesExporter.exclude_input_prompt = True
    config.SlidesExporter.exclude_output_prompt = True
    return SlidesExporter(config=config, extra_template_basedirs=[str(TEMPLATE.parent)],
                          template_name=TEMPLATE.name)


def exercise_cells(lesson: course.Lesson) -> list:
    """The deck's last slide: the lesson's exercise file and the command that grades it."""
    lines = [f"## Exercise {lesson.number}", ""]
    if lesson.exercise is None:
        lines += [f"No `exercises/ex{lesson.number}_*.py` yet; grade the others with `{GRADE_ALL}`."]
    else:
        lines += [f"Fill in `exercises/{lesson.exercise.name}`, then from the repository root:", "", "```bash",
                  f"{GRADE_ALL}                     # every exercise, with a score table"]
        if lesson.graded is not None:
            lines.append(f".venv/bin/python -m pytest tests/exercises/{lesson.graded.name}")
        lines.append("```")
    cell = nbformat.v4.new_markdown_cell("\n".join(lines))
    cell.metadata["slideshow"] = {"slide_type": "slide"}
    return [cell]


def deck(lesson: course.Lesson, slides: SlidesExporter) -> tuple[str, dict[str, int]]:
    """The deck's HTML and how many cells got each slide type."""
    nb = nbformat.read(lesson.notebook, as_version=4)
    course.without_widgets(nb.cells)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:          # the test-harness markers mean nothing to a room
        if cell.cell_type == "code":
            cell.source = "\n".join(l for l in cell.source.splitlines() if not l.startswith("# NBVAL_")).strip()
    nb.cells += exercise_cells(lesson)
    nb, _ = SlideTypes().preprocess(nb, {})
    nb.metadata["title"] = lesson.title
    body, _ = slides.from_notebook_node(nb, resources={"metadata": {"name": lesson.stem}})
    return local_links(body), count(nb)


def local_links(deck_html: str) -> str:
    """A link to another lesson goes to its deck; other links into the repository (README.md, benchmarks/...)
    become plain text: a deck is served alone, and the site has those pages."""
    deck_html = re.sub(r'href="(\d\d_\w+)\.ipynb(#[^"]*)?"', lambda m: f'href="{m[1]}.slides.html"', deck_html)
    return re.sub(r'<a href="(?!#|https?:|mailto:|[^"]*\.slides\.html)[^"]*">(.*?)</a>', r"\1", deck_html,
                  flags=re.S)


def slide_count(deck_html: str) -> int:
    """Slides a reader steps through: the <section>s that hold no other <section> (reveal.js's count)."""
    opened = [m.start() for m in re.finditer(r"<section\b", deck_html)]
    nested = sum(1 for a, b in zip(opened, opened[1:]) if "</section>" not in deck_html[a:b])
    return len(opened) - nested


def index_page(made: list[tuple[course.Lesson, str, int]]) -> str:
    rows = "\n".join(f'<li><a href="{name}">{html.escape(lesson.title)}</a> ({slides} slides)</li>'
                     for lesson, name, slides in made)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>The course's slides</title>"
            "</head><body><h1>The course's slides</h1>\n<p>One reveal.js deck per lesson (book/build_slides.py). "
            "The right arrow or Space (what a clicker sends) steps through every slide in order, plots "
            "on slides of their own; S opens the speaker notes (with the whole code of a shortened cell), "
            "Esc the overview.</p>\n<ul>\n" + rows + "\n</ul>\n"
            "</body></html>\n")


def build(out: Path = OUT) -> list[Path]:
    """Writes every lesson's deck, the front-end files they load and an index into ``out``; returns the decks."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    assets.copy_reveal(out / "reveal.js")
    assets.copy_mathjax(out / "mathjax")
    slides, made = exporter(), []
    for lesson in course.lessons():
        body, types = deck(lesson, slides)
        name = f"{lesson.stem}.slides.html"
        (out / name).write_text(body)
        made.append((lesson, name, slide_count(body)))
        print(f"{name}: {made[-1][2]} slides ({types.get('fragment', 0)} fragments, "
              f"{types.get('notes', 0)} notes)")
    (out / "index.html").write_text(index_page(made))
    print(f"slides: {len(made)} decks in {time.monotonic() - started:.1f} s: {out / 'index.html'}")
    return [out / name for _, name, _ in made]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the decks go (default {OUT})")
    build(parser.parse_args().out)

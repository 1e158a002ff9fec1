"""The lessons as reveal.js decks (`make slides`): each builds, has more than a handful of slides, and runs offline.

    .venv/bin/python -m pytest -q tests/test_slides.py

The decks are built once into a temporary folder. The browser test (Debian's chromium through Playwright;
skipped with the reason where either is missing) opens each deck from a local server with every request off
it blocked, and checks that reveal.js started, counted the slides, typeset the math and showed the plots; it
saves a screenshot of a plot slide to out/slides/screenshots/slide_plot.png.
"""
from __future__ import annotations

import json
import re

import pytest

from book import assets, build_slides, course
from tests.browser import open_browser, serve, skip_without_browser

SCREENSHOTS = build_slides.OUT / "screenshots"
MIN_SLIDES = 10        # "more than a handful": the shortest lesson has some 30


@pytest.fixture(scope="module")
def decks(tmp_path_factory):
    if assets.missing():
        pytest.skip(assets.missing())
    out = tmp_path_factory.mktemp("slides")
    return out, build_slides.build(out)


def _plots(notebook) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum(1 for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}))


def test_each_lesson_has_a_deck_with_many_slides_its_plots_and_no_cdn(decks):
    out, paths = decks
    lessons = course.lessons()
    assert [p.name for p in paths] == [f"{lesson.stem}.slides.html" for lesson in lessons]
    for lesson, path in zip(lessons, paths):
        deck = path.read_text()
        text = re.sub(r"<[^>]+>", "", deck)         # what the slides say, without the highlighting's spans
        assert build_slides.slide_count(deck) > MIN_SLIDES, f"{path.name}: {build_slides.slide_count(deck)} slides"
        assert deck.count('src="data:image/png;base64,') >= _plots(lesson.notebook), f"{path.name}: plots missing"
        assert lesson.title.split(":")[0].replace("`", "") in text, f"{path.name}: no title slide"
        assert 'class="fragment"' in deck, f"{path.name}: no fragments (book/slide_types.py assigns them)"
        assert build_slides.GRADE_ALL in text and f"Exercise {lesson.number}" in text, f"{path.name}: no exercise slide"
        # Scripts and style sheets come from the deck's folder, never a CDN.
        loaded = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', deck)
        assert loaded and all(not re.match(r"(https?:)?//", url) for url in loaded), loaded
        assert all((out / url).exists() for url in loaded), [u for u in loaded if not (out / u).exists()]
    assert (out / "index.html").exists()


def test_slide_types_come_from_the_build_not_the_notebooks():
    """The committed notebooks carry no slide metadata; the preprocessor gives every cell a type."""
    from book.slide_types import SlideTypes, blocks, count
    import nbformat

    text = "## Title\n\nClaim with $a$.\n\n$$\nx = 1\n\ny = 2\n$$\n\n- one\n- two\n\nMore prose.\n\n**Predict.** Why?"
    assert [b.splitlines()[0] for b in blocks(text)] == ["## Title", "Claim with $a$.", "$$", "- one",
                                                         "More prose.", "**Predict.** Why?"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text), nbformat.v4.new_code_cell("1")])
    types = [c.metadata.slideshow.slide_type for c in SlideTypes().preprocess(nb, {})[0].cells]
    assert types == ["slide", "-", "fragment", "fragment", "notes", "fragment", "-"]
    # A mark the author gave is kept.
    marked = nbformat.v4.new_markdown_cell("Said aloud only.")
    marked.metadata["slideshow"] = {"slide_type": "notes"}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T"), marked])
    assert [c.metadata.slideshow.slide_type for c in SlideTypes().preprocess(nb, {})[0].cells] == ["slide", "notes"]
    # On a lesson: every cell typed, a slide per ## section at least.
    lesson = course.lessons()[0]
    sections = sum(1 for c in json.loads(lesson.notebook.read_text())["cells"] if c["cell_type"] == "markdown"
                   for line in "".join(c["source"]).splitlines() if re.match(r"#{1,2} ", line))
    result = SlideTypes().preprocess(nbformat.read(lesson.notebook, as_version=4), {})[0]
    assert all("slideshow" in c.metadata for c in result.cells)
    assert count(result).get("slide", 0) >= sections


def test_decks_run_in_the_browser_offline(decks, tmp_path_factory):
    skip_without_browser()
    out, paths = decks
    with serve(out) as base, open_browser(tmp_path_factory.mktemp("chromium"), base) as (context, blocked):
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        for path in paths:
            page.goto(f"{base}/{path.name}", wait_until="load")
            page.wait_for_function("() => window.Reveal && Reveal.isReady() && window.MathJax && MathJax.startup"
                                   " && MathJax.startup.promise")
            page.evaluate("() => MathJax.startup.promise")
            facts = page.evaluate("""() => ({
                total: Reveal.getTotalSlides(),
                math: document.querySelectorAll('mjx-container').length,
                raw: [...document.querySelectorAll('.reveal .slides p')].map(p => p.innerText)
                       .filter(t => /\\$[^$\\s][^$]*\\$/.test(t)).slice(0, 3),
                images: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length,
            })""")
            assert facts["total"] > MIN_SLIDES, f"{path.name}: reveal.js counts {facts['total']} slides"
            assert facts["math"] > 0 and not facts["raw"], f"{path.name}: math not typeset: {facts['raw']}"
            assert facts["images"] == 0, f"{path.name}: {facts['images']} images did not load"
        # A screenshot of the first plot of lesson 02's deck (the slide holding its first image).
        page.goto(f"{base}/{paths[min(2, len(paths) - 1)].name}", wait_until="load")
        page.wait_for_function("() => window.Reveal && Reveal.isReady()")
        page.evaluate("""() => { const img = document.querySelector('.reveal .slides img');
                                 const at = Reveal.getIndices(img.closest('section')); Reveal.slide(at.h, at.v); }""")
        page.wait_for_timeout(300)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "slide_plot.png"))
    assert not errors, f"console errors: {errors[:10]}"
    assert not blocked, f"decks asked for files off their folder (a CDN?): {sorted(set(blocked))[:10]}"

"""The lessons as reveal.js decks (`make slides`): each builds, runs offline, and steps with a clicker.

    .venv/bin/python -m pytest -q tests/test_slides.py

The decks are built once into a temporary folder. The browser test (Debian's chromium through Playwright;
skipped with the reason where either is missing) opens each deck at 1280x720 from a local server with every
request off it blocked, checks that reveal.js started, typeset the math and loaded the images, then acts as a
presenter's clicker: it presses the right arrow (keyboard events, what a clicker sends) to the deck's end and
asserts that every slide was visited in order, every plot was shown whole on screen, and no slide's content is
taller or wider than its slide, nor empty when it opens. It saves a screenshot of a plot slide to
out/slides/screenshots/slide_plot.png.
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
    # A fragment may not open a slide (it would open empty); a plot leaves its code for a slide of its own; a
    # code cell longer than a slide is cut, its whole source in the notes.
    first = nbformat.v4.new_markdown_cell("**Predict.** Why?")
    first.metadata["slideshow"] = {"slide_type": "fragment"}
    plot = nbformat.v4.new_code_cell("\n".join(f"x{i} = {i}" for i in range(40)), outputs=[
        nbformat.v4.new_output("stream", text="printed\n"),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})])
    cells = SlideTypes().preprocess(nbformat.v4.new_notebook(cells=[first, plot]), {})[0].cells
    assert [(c.cell_type, c.metadata.slideshow.slide_type) for c in cells] == [
        ("markdown", "-"), ("code", "-"), ("markdown", "notes"), ("markdown", "subslide")]
    assert "x39 = 39" not in cells[1].source and "x39 = 39" in cells[2].source and "speaker notes" in cells[1].source
    assert [o.output_type for o in cells[1].outputs] == ["stream"] and 'class="slide-plot"' in cells[3].source
    # On a lesson: every cell typed, a slide per ## section at least.
    lesson = course.lessons()[0]
    sections = sum(1 for c in json.loads(lesson.notebook.read_text())["cells"] if c["cell_type"] == "markdown"
                   for line in "".join(c["source"]).splitlines() if re.match(r"#{1,2} ", line))
    result = SlideTypes().preprocess(nbformat.read(lesson.notebook, as_version=4), {})[0]
    assert all("slideshow" in c.metadata for c in result.cells)
    assert count(result).get("slide", 0) >= sections


# What the slide on screen holds, recorded in the page each time reveal.js shows a slide or a fragment. A plot
# "shown" is a loaded image whole inside the viewport; a slide "overflows" when its box scrolls (it holds more
# than fits) or a code block is cut at the right; it "opens empty" when, before any fragment, nothing shows.
RECORD_EACH_STEP = """() => {
  const inView = r => r.width > 0 && r.top >= -1 && r.left >= -1 && r.bottom <= innerHeight + 1
                      && r.right <= innerWidth + 1;
  const hidden = e => e.closest('.fragment:not(.visible), aside.notes');
  const record = () => {
    const slide = Reveal.getCurrentSlide(), at = Reveal.getIndices();
    const images = [...slide.querySelectorAll('img')].filter(i => !hidden(i));
    const shown = images.filter(i => i.naturalWidth > 0 && inView(i.getBoundingClientRect()));
    const text = [...slide.querySelectorAll('p, li, pre, h1, h2, h3, h4, table, mjx-container')]
                   .filter(e => !hidden(e) && e.innerText.trim()).length;
    window.stepped.push({
      key: `${at.h}/${at.v}`, past: Reveal.getSlidePastCount(slide),
      opening: at.f === undefined || at.f === -1, empty: text === 0 && shown.length === 0,
      shown: shown.map(i => i.src.slice(-64)), tall: slide.scrollHeight - slide.clientHeight,
      cut: [...slide.querySelectorAll('pre')].filter(p => p.scrollWidth > p.clientWidth + 2).length,
      outside: !inView(slide.getBoundingClientRect())});
  };
  window.stepped = [];
  Reveal.on('slidechanged', record);
  Reveal.on('fragmentshown', record);
  record();
}"""
AT_THE_END = "() => Reveal.isLastSlide() && !Reveal.availableFragments().next"
DECK_FACTS = """() => ({
  total: Reveal.getTotalSlides(),
  plots: [...document.querySelectorAll('.reveal .slides img')].map(i => i.src.slice(-64)),
  math: document.querySelectorAll('mjx-container').length,
  raw: [...document.querySelectorAll('.reveal .slides p')].map(p => p.innerText)
         .filter(t => /\\$[^$\\s][^$]*\\$/.test(t)).slice(0, 3),
  broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length,
})"""


def click_through(page, most: int) -> list[dict]:
    """Presses the right arrow (keyboard events, as a clicker) until the deck's end; what each step showed."""
    page.evaluate(RECORD_EACH_STEP)
    for _ in range(0, most, 10):
        for _ in range(10):
            page.keyboard.press("ArrowRight")
        if page.evaluate(AT_THE_END):
            break
    return page.evaluate("() => window.stepped")


def problems_of(steps: list[dict]) -> tuple[list[str], list[int], set[str]]:
    """Each problem seen (once per slide), the slides in the order first visited, the plots shown."""
    problems, order, shown = [], [], set()
    for step in steps:
        if step["past"] not in order:
            order.append(step["past"])
        number = f"slide {step['past'] + 1} ({step['key']})"
        shown.update(step["shown"])
        if step["opening"] and step["empty"]:
            problems.append(f"{number} opens empty")
        if step["tall"] > 2 or step["cut"] or step["outside"]:
            problems.append(f"{number} overflows: {step['tall']} px too tall, {step['cut']} code blocks cut, "
                            f"outside the screen: {step['outside']}")
    return list(dict.fromkeys(problems)), order, shown


def test_decks_run_offline_and_a_clicker_steps_through_every_slide_and_plot(decks, tmp_path_factory):
    """Each deck at 1280x720: started, math typeset, images loaded, nothing fetched off its folder; then the
    right arrow through it: every slide visited in order, every plot shown whole, no slide overflowing or
    opening empty."""
    skip_without_browser()
    out, paths = decks
    failures, errors = [], []
    with serve(out) as base, open_browser(tmp_path_factory.mktemp("chromium"), base) as (context, blocked):
        page = context.new_page()
        page.set_viewport_size({"width": 1280, "height": 720})
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        for path in paths:
            page.goto(f"{base}/{path.name}", wait_until="load")
            page.wait_for_function("() => window.Reveal && Reveal.isReady() && window.MathJax && MathJax.startup"
                                   " && MathJax.startup.promise")
            page.evaluate("() => MathJax.startup.promise")
            page.wait_for_timeout(100)          # MathJax's last Reveal.layout()
            facts = page.evaluate(DECK_FACTS)
            assert facts["total"] > MIN_SLIDES, f"{path.name}: reveal.js counts {facts['total']} slides"
            assert facts["math"] > 0 and not facts["raw"], f"{path.name}: math not typeset: {facts['raw']}"
            assert facts["broken"] == 0, f"{path.name}: {facts['broken']} images did not load"
            problems, order, shown = problems_of(click_through(page, most=facts["total"] * 8 + 20))
            plots = set(facts["plots"])
            report = (f"{path.name}: {len(order)}/{facts['total']} slides visited, {len(shown & plots)}/"
                      f"{len(plots)} plots shown, {len(problems)} slides with problems")
            print(report)
            if len(order) != facts["total"] or not plots <= shown or problems:
                failures.append(report + "".join(f"\n    {p}" for p in problems[:12]))
            if order != list(range(len(order))):
                failures.append(f"{path.name}: slides not visited in order: {order[:20]}")
        # A screenshot of the first plot of lesson 02's deck.
        page.goto(f"{base}/{paths[min(2, len(paths) - 1)].name}", wait_until="load")
        page.wait_for_function("() => window.Reveal && Reveal.isReady()")
        page.evaluate("""() => { const img = document.querySelector('.reveal .slides img');
                                 const at = Reveal.getIndices(img.closest('section')); Reveal.slide(at.h, at.v); }""")
        page.wait_for_timeout(300)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "slide_plot.png"))
    assert not failures, "\n".join(failures)
    assert not errors, f"console errors: {errors[:10]}"
    assert not blocked, f"decks asked for files off their folder (a CDN?): {sorted(set(blocked))[:10]}"

"""The course website (`make site`), built once from the committed notebooks, and every page opened in Chromium.

    .venv/bin/python -m pytest -q tests/test_site.py

The browser checks need Debian's chromium and Playwright (``make browser`` as root, which .ci/run does); where
either is missing they are skipped with the reason, and the build checks still run. The site is built once
per session (a build newer than all its sources is reused). Every page is opened at a phone's width (390 px),
where all the checks run, and again at a laptop's (1400 px) for its width. Screenshots of the home page and of
one lesson are saved to out/site/screenshots/.
"""
from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urldefrag

import pytest

from book import assets, build_site, course
from tests.browser import (LAPTOP, MATHJAX_DONE, PAGE_FACTS, PHONE, WIDTH_FACTS, open_browser, serve,
                           skip_without_browser)

SCREENSHOTS = build_site.OUT / "screenshots"
ROOT_HINTS = course.ROOT / "exercises" / "hints"
RAW_MATH = re.compile(r"\$[^$\s][^$\n]*\$|\\\(|\\\[")     # $...$, \( or \[ left in the text: math not rendered
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")


@dataclass
class Page:
    url: str
    errors: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)


@dataclass
class Walk:
    base: str
    pages: dict[str, Page]                  # by relative path, e.g. "lessons/02_gpipe.html"
    links: dict[str, int]                   # every same-origin URL linked from any page -> HTTP status
    blocked: list[str]                      # requests off the local server (aborted)
    search_hits: list[str]
    screenshots: list[Path]
    laptop: dict[str, dict]                 # by relative path: WIDTH_FACTS at the laptop's width
    snippets: list[str]                     # the search results' snippets for "bubble"


@pytest.fixture(scope="module")
def site() -> Path:
    # make test installs both (pyproject's [site] extra, then npm): these skips are for a bare pytest run.
    if not Path(sys.executable).with_name("jupyter-book").exists():
        pytest.skip("jupyter-book is not installed in this environment: make site  (pip install -e '.[site]')")
    if assets.missing():
        pytest.skip(assets.missing())
    return build_site.build()


@pytest.fixture(scope="module")
def lessons():
    return course.lessons()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def walk(site, lessons, tmp_path_factory) -> Walk:
    """Every page of the site opened in headless Chromium, with what each reported."""
    skip_without_browser()
    paths = ["index.html", "search.html", "genindex.html"] + [
        str(p.relative_to(site)) for p in build_site.pages_built(site)]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shown = next((l for l in lessons if _image_outputs(l.notebook)), lessons[0])
    with serve(site) as base, open_browser(tmp_path_factory.mktemp("chromium"), base) as (context, blocked):
        page = context.new_page()
        page.set_viewport_size({"width": PHONE, "height": 844})
        reports: dict[str, Page] = {}
        for rel in paths:
            report = reports[rel] = Page(f"{base}/{rel}")
            on_console = lambda msg, r=report: msg.type == "error" and r.errors.append(f"console: {msg.text}")  # noqa: E731
            on_error = lambda exc, r=report: r.errors.append(f"uncaught: {exc}")  # noqa: E731
            page.on("console", on_console)
            page.on("pageerror", on_error)
            page.goto(report.url, wait_until="load")
            if rel == "index.html":         # a redirect (meta refresh) to the home page: follow it
                page.wait_for_url(f"{base}/home.html")
                page.wait_for_load_state("load")
            page.evaluate(MATHJAX_DONE)
            report.facts = page.evaluate(PAGE_FACTS.replace("WIDTH_FACTS()", f"({WIDTH_FACTS})()"))
            page.remove_listener("console", on_console)
            page.remove_listener("pageerror", on_error)
        page.set_viewport_size({"width": LAPTOP, "height": 900})
        laptop = {}
        for rel in [p for p in paths if p.startswith(("home", "lessons/", "exercises/"))]:    # the wide ones
            page.goto(f"{base}/{rel}", wait_until="load")
            page.evaluate(MATHJAX_DONE)
            laptop[rel] = page.evaluate(WIDTH_FACTS)
        page.set_viewport_size({"width": 1280, "height": 900})
        shots = [SCREENSHOTS / "home.png", SCREENSHOTS / f"lesson_{shown.stem}.png"]
        page.goto(f"{base}/home.html", wait_until="load")
        page.screenshot(path=str(shots[0]))
        page.goto(f"{base}/lessons/{shown.stem}.html", wait_until="load")
        page.evaluate(MATHJAX_DONE)
        page.locator("main img").first.scroll_into_view_if_needed()
        page.screenshot(path=str(shots[1]))
        # The search box: Sphinx's search page runs in the browser, over searchindex.js.
        page.goto(f"{base}/search.html?q=microbatches", wait_until="load")
        page.wait_for_selector("#search-results li", timeout=30_000)
        hits = page.eval_on_selector_all("#search-results li a", "links => links.map(a => a.href)")
        # Snippets come from each hit's page text, where formulas are still TeX (book/search_text.js).
        page.goto(f"{base}/search.html?q=bubble", wait_until="load")
        page.wait_for_function("() => document.querySelectorAll('#search-results li p.context').length >= 3")
        snippets = page.eval_on_selector_all("#search-results li p.context", "ps => ps.map(p => p.innerText)")
        urls = sorted({urldefrag(h).url for r in reports.values() for h in r.facts["hrefs"]
                       if h.startswith(base + "/")})
        links = {u: _status(u) for u in urls}
    return Walk(base, reports, links, list(blocked), hits, shots, laptop, snippets)


def _image_outputs(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum(1 for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
               if any(t in o.get("data", {}) for t in IMAGE_TYPES))


def _plain(title: str) -> str:
    """A markdown heading as the browser shows it (no code ticks, emphasis or math dollars)."""
    return re.sub(r"[`*$]", "", title).strip()


# --------------------------------------------------------------------------- the build (no browser)

def test_a_page_per_lesson_and_exercise_and_the_readme_as_home(site, lessons):
    for lesson in lessons:
        assert (site / "lessons" / f"{lesson.stem}.html").exists(), f"no page for {lesson.notebook.name}"
        if lesson.exercise is not None:
            assert (site / "exercises" / f"{lesson.exercise.stem}.html").exists(), f"no page for {lesson.exercise}"
    assert 'url=home.html' in (site / "index.html").read_text(), "the home page should be home.html"
    readme = (site / "README.html").read_text()
    assert course.first_heading(_readme_as_notebook(site)) in readme
    home = (site / "home.html").read_text()
    assert 'href="README.html"' in home, "the home page should link the repository's README"
    for lesson in lessons:
        assert f'href="lessons/{lesson.stem}.html"' in home, f"the home page does not link {lesson.stem}"
        if lesson.exercise is not None:
            assert f'href="exercises/{lesson.exercise.stem}.html"' in home, f"no link: {lesson.exercise.name}"
    assert build_site.GRADE_ALL in re.sub(r"<[^>]+>", "", home), "the home page does not say how to grade"
    assert (site / "favicon.ico").read_bytes()[:4] == b"\x00\x00\x01\x00", "no /favicon.ico (an ICO file)"
    assert (site / "search.html").exists() and (site / "searchindex.js").exists(), "no search page"
    assert (site / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax is not served by the site itself"


def _readme_as_notebook(site: Path) -> Path:
    # first_heading reads notebooks; wrap the README's first lines in one.
    path = site.parent / "readme-heading.ipynb"
    text = (course.ROOT / "README.md").read_text().splitlines()[:5]
    path.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": "\n".join(text)}]}))
    return path


def test_the_site_is_not_executed_it_shows_the_committed_outputs(site, lessons):
    """The lesson pages carry the notebooks' own outputs: as many plots as the notebook has images."""
    for lesson in lessons:
        html = (site / "lessons" / f"{lesson.stem}.html").read_text()
        plots = len(re.findall(r'<img [^>]*src="\.\./_images/', html))
        assert plots >= _image_outputs(lesson.notebook), (
            f"{lesson.stem}: {plots} images on the page, the notebook has {_image_outputs(lesson.notebook)}")


INSTRUCTOR_ROWS = ("In class", "Run live", "On a GPU node", "The demo", "Goes wrong", "Ask the room", "Exercise")


def test_the_instructors_guide_covers_every_lesson(lessons):
    """lessons/INSTRUCTOR.md has a section per lesson with every row of the plan, and names its exercise file."""
    text = (course.ROOT / "lessons" / "INSTRUCTOR.md").read_text()
    sections = {m[1]: m[2] for m in re.finditer(r"^## (\d\d) .*?\n(.*?)(?=^## |\Z)", text, re.M | re.S)}
    for lesson in lessons:
        assert lesson.number in sections, f"lessons/INSTRUCTOR.md has no '## {lesson.number} ...' section"
        body = sections[lesson.number]
        missing = [row for row in INSTRUCTOR_ROWS if f"**{row}**" not in body]
        assert not missing, f"INSTRUCTOR.md, lesson {lesson.number}: no row {missing}"
        if lesson.exercise is not None:
            assert lesson.exercise.name in body, f"INSTRUCTOR.md, lesson {lesson.number}: {lesson.exercise.name}?"
        questions = re.search(r"\*\*Ask the room\*\* \|(.*)", body)[1]
        assert len(re.findall(r"\b\d\. ", questions)) >= 2, f"lesson {lesson.number}: fewer than 2 questions"


# --------------------------------------------------------------------------- in the browser

def test_no_console_errors(walk):
    bad = {rel: page.errors for rel, page in walk.pages.items() if page.errors}
    assert not bad, f"console errors: {json.dumps(bad, indent=1)[:4000]}"


def test_nothing_is_fetched_off_site(walk):
    assert not walk.blocked, f"pages asked for files off the site (a CDN?): {sorted(set(walk.blocked))[:20]}"


def test_every_image_loaded(walk):
    broken = {rel: [i["src"] for i in page.facts["images"] if not i["ok"]] for rel, page in walk.pages.items()}
    broken = {rel: srcs for rel, srcs in broken.items() if srcs}
    assert not broken, f"images that did not load (or have no size): {broken}"
    assert sum(len(p.facts["images"]) for p in walk.pages.values()) > 0


def test_every_internal_link_resolves(walk):
    missing = {url: status for url, status in walk.links.items() if status != 200}
    assert not missing, f"internal links that do not answer 200: {missing}"
    assert len(walk.links) > len(walk.pages) // 2, "too few internal links found: is the navigation there?"
    # A link to a heading of another page must find that heading.
    by_url = {page.url: page for page in walk.pages.values()}
    dangling = []
    for page in walk.pages.values():
        for href in page.facts["hrefs"]:
            target, fragment = urldefrag(href)
            if fragment and target in by_url and fragment not in by_url[target].facts["ids"]:
                dangling.append(f"{page.url} -> {href}")
    assert not dangling, f"links to anchors that do not exist: {dangling[:20]}"


def test_math_is_rendered(walk, lessons):
    for rel, page in walk.pages.items():
        assert not page.facts["unrendered"], f"{rel}: math MathJax did not render: {page.facts['unrendered'][:5]}"
        raw = RAW_MATH.findall(page.facts["text"])
        assert not raw, f"{rel}: raw TeX left in the text: {raw[:5]}"
    typeset = sum(walk.pages[f"lessons/{lesson.stem}.html"].facts["math"] for lesson in lessons)
    assert typeset > 0, "no typeset math on any lesson page (the lessons state their formulas in TeX)"


def test_each_lesson_page_has_its_title_plots_and_exercise(walk, lessons):
    for lesson in lessons:
        page = walk.pages[f"lessons/{lesson.stem}.html"]
        assert page.facts["h1"][:1] == [_plain(lesson.title)], (
            f"{lesson.stem}: first heading {page.facts['h1'][:1]}, expected {lesson.title!r}")
        assert page.facts["plots"] >= _image_outputs(lesson.notebook), f"{lesson.stem}: plots missing"
        assert build_site.GRADE_ALL in page.facts["shown"], f"{lesson.stem}: the grading command is not on the page"
        if lesson.exercise is not None:
            wanted = f"{walk.base}/exercises/{lesson.exercise.stem}.html"
            assert wanted in page.facts["hrefs"], f"{lesson.stem}: no link to its exercise page {wanted}"


def test_the_search_box_finds_lessons_and_its_snippets_show_no_tex(walk):
    assert any("/lessons/" in hit for hit in walk.search_hits), f"searching 'microbatches' found {walk.search_hits}"
    raw = [s[:200] for s in walk.snippets if re.search(r"\\[a-zA-Z(\[]|\$", s)]
    assert walk.snippets and not raw, f"search snippets with raw TeX: {raw[:3]}"


def test_screenshots_saved(walk):
    for shot in walk.screenshots:
        assert shot.exists() and shot.stat().st_size > 10_000, f"{shot} is missing or blank"


def test_exercise_pages_show_each_tests_points_and_the_hints_collapsed(site, lessons):
    for lesson in lessons:
        if lesson.exercise is None or lesson.graded is None:
            continue
        html = (site / "exercises" / f"{lesson.exercise.stem}.html").read_text()
        text = " ".join(re.sub(r"<[^>]+>", " ", html).split())      # what the page says, cell by cell
        for name, points, _ in build_site.graded_tests(lesson.graded):
            assert f"{name} {points:g}" in text, f"{lesson.exercise.stem}: no row with {name}'s {points:g}"
        hints = ROOT_HINTS / f"{lesson.exercise.stem}.md"
        if hints.exists():
            sections = len(re.findall(r"^## ", hints.read_text(), re.M))
            assert html.count("dropdown") >= sections > 0, f"{lesson.exercise.stem}: hints not collapsed"


def test_no_page_is_wider_than_a_phone_or_a_laptop_and_wide_boxes_scroll(walk):
    too_wide = {rel: p.facts["width"] for rel, p in walk.pages.items() if p.facts["width"] > PHONE}
    too_wide.update({f"{rel} at {LAPTOP}": f["width"] for rel, f in walk.laptop.items()
                     if f["width"] > LAPTOP})
    assert not too_wide, f"pages wider than the screen (px): {too_wide}"
    clipped = {rel: p.facts["clipped"] for rel, p in walk.pages.items() if p.facts["clipped"]}
    clipped.update({f"{rel} at {LAPTOP}": f["clipped"] for rel, f in walk.laptop.items() if f["clipped"]})
    assert not clipped, f"boxes whose content is cut off or spills (they should scroll): {clipped}"


def test_no_test_markers_and_mathjax_only_where_there_is_math(walk):
    markers = [rel for rel, p in walk.pages.items() if p.facts["nbval"]]
    assert not markers, f"nbval's markers shown in the code of {markers}"
    needless = [rel for rel, p in walk.pages.items() if p.facts["mathjax"] and not p.facts["math"]]
    assert not needless, f"pages without math that load MathJax: {needless}"
    assert any(p.facts["mathjax"] for p in walk.pages.values()), "no page loads MathJax"

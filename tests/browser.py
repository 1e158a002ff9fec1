"""Headless Chromium for the tests of the built site and slides: a local server and a browser that stays offline.

    with serve(folder) as base_url, open_browser(tmp_path, base_url) as (context, blocked):
        page = context.new_page(); page.goto(base_url + "/index.html")

PAGE_FACTS and WIDTH_FACTS are what a page of the site reports (tests/test_site.py); PHONE and LAPTOP the
widths it is read at.

Debian's chromium (/usr/bin/chromium, installed by ``make browser``, which .ci/run calls), driven by Playwright
for Python; Playwright's own browser downloads are never used. ``skip_without_browser`` skips a test, with the
reason, where either is missing, and ``open_browser`` where chromium is there but does not start. Every
request off the local server is aborted and recorded in ``blocked``: a page that needs a CDN is a failure, not a
slow pass.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

# As root Chromium needs --no-sandbox; the rest keep it from reaching for the network (closed here) at start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def skip_without_browser() -> str:
    """The chromium executable, or a skip that says what is missing and how to get it."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright (Python) is not installed: make site  (or pip install -e '.[site]')")
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed: as root, make browser  (apt-get install chromium)")
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):      # noqa: A002 (the base class's name)
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """Serves ``folder`` on 127.0.0.1 (an ephemeral port) from a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def open_browser(profile_dir: Path, base_url: str):
    """A headless Chromium context on a fresh profile; yields (context, list of blocked off-site URLs)."""
    from playwright.sync_api import sync_playwright

    executable = skip_without_browser()
    blocked: list[str] = []

    def block(route):
        blocked.append(route.request.url)
        route.abort()

    with sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                str(profile_dir), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900})
        except Exception as err:        # playwright's Error: no display libraries, a refused sandbox, ...
            pytest.skip(f"{executable} did not start headless: {str(err).strip().splitlines()[0][:300]}")
        try:
            context.set_default_timeout(30_000)
            context.route(lambda url: not url.startswith(base_url + "/") and not url.startswith("data:"), block)
            yield context, blocked
        finally:
            context.close()


# --------------------------------------------------------------------------- what a site page reports

# What a page reports after it has loaded and MathJax has typeset it.
PAGE_FACTS = """() => {
  const skip = 'pre, code, script, style, textarea, mjx-container, mjx-assistive-mml';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const text = [];
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!node.parentElement.closest(skip)) text.push(node.textContent);
  }
  const math = [...document.querySelectorAll('span.math, div.math')];
  return {
    text: text.join(' '),
    shown: document.body.innerText,
    images: [...document.images].map(i => ({src: i.currentSrc || i.src,
                                            ok: i.complete && i.naturalWidth > 0 && i.naturalHeight > 0})),
    plots: document.querySelectorAll('main img[src*="_images/"]').length,
    math: math.length,
    unrendered: math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
    hrefs: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    h1: [...document.querySelectorAll('main h1')].map(h => h.innerText.replace(/#\\s*$/, '').trim()),
    ...WIDTH_FACTS(),
    mathjax: !!document.querySelector('script[src*="mathjax" i]'),
    nbval: [...document.querySelectorAll('main pre')].filter(p => p.innerText.includes('NBVAL_')).length,
  };
}"""
# Whether a page fits its viewport: the page's own width, and every box whose content is wider than the box
# and does not scroll (its content is cut off, or spills over the page).
WIDTH_FACTS = """() => ({
    width: document.documentElement.scrollWidth,
    clipped: [...document.querySelectorAll('main :is(pre, table, .cell_output, div.highlight, p)')]
      .filter(e => e.scrollWidth > e.clientWidth + 1
                   && !['auto', 'scroll'].includes(getComputedStyle(e).overflowX))
      .map(e => `${e.tagName.toLowerCase()}.${e.className}: ${e.scrollWidth} > ${e.clientWidth} px`)
      .slice(0, 5),
})"""
PHONE, LAPTOP = 390, 1400
MATHJAX_DONE = "() => window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => true) : false"

"""A Sphinx extension of the course site: pages carry no script the site does not use or serve itself.

Jupyter Book 1 always loads sphinx-thebe (live code cells run on a Binder). The course has no Binder, so
its launch buttons are off, yet sphinx-thebe still puts its set-up script on every page, twice under
Sphinx 7.4 (the second copy throws "Identifier 'THEBE_JS_URL' has already been declared" in the browser),
and that script names a CDN. This drops both from each page as it is written, and any script of the page
that would be fetched from another site, so that the pages work offline (tests/test_site.py checks it).
MyST-NB asks Sphinx to put MathJax on every page; this keeps it only on the pages that have math.

Loaded by book/_config.yml (``sphinx.local_extensions``).
"""
from __future__ import annotations


def _unused(script) -> bool:
    filename = getattr(script, "filename", None) or str(script)
    body = getattr(script, "attributes", {}).get("body", "")
    if filename == "sphinx-thebe.js" or "THEBE_JS_URL" in body:
        return True
    return str(filename).startswith(("http://", "https://", "//"))


def _mathjax(script) -> bool:
    filename = str(getattr(script, "filename", None) or script)
    return "mathjax" in filename.lower() or "MathJax" in getattr(script, "attributes", {}).get("body", "")


def drop_unused_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if scripts:
        has_math = 'class="math' in context.get("body", "")
        context["script_files"] = [s for s in scripts if not _unused(s) and (has_math or not _mathjax(s))]


def setup(app):
    app.connect("html-page-context", drop_unused_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

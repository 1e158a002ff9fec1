"""`make site`: the course as a static website (Jupyter Book 1.x), built from the committed notebooks.

    .venv/bin/python -m book.build_site [--force]     # -> out/site/_build/html/index.html

The notebooks are never re-executed: the site shows the outputs they were committed with (plots included).
The sources are staged into out/site-src first, so nothing in the repository is edited:

    home.md                    generated (book/home.py): the student's home page, the README one click away
    README.md                  the repository's README, a page of its own
    lessons/NN_*.ipynb         one page per lesson (globbed: a new lesson needs no edit here), each with a
                               closing cell that links its exercise page and says the grading command
    exercises/exNN_*.md        generated: the exercise file as shipped, its graded tests, the commands
    lessons/README.md, lessons/INSTRUCTOR.md, the other lessons/*.md (reports the lessons' README links),
    timings.md (generated), benchmarks/README.md and its results
    _toc.yml                   generated from the lesson list (book/course.py)

book/site.css keeps every page within a phone's width; book/home.py also draws the favicon.

A build newer than every file it was made from is kept (``--force`` rebuilds); otherwise Sphinx rebuilds only
the pages whose staged source changed. Math is rendered by a MathJax copied into the site (book/assets.py).
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from book import assets, course, home, timings

ROOT = course.ROOT
BOOK = ROOT / "book"
STAGE = ROOT / "out" / "site-src"
OUT = ROOT / "out" / "site"
HTML = OUT / "_build" / "html"
STAMP = HTML / ".built"
GRADE_ALL = home.GRADE_ALL


# --------------------------------------------------------------------------- what the site is made of

def sources() -> list[Path]:
    """Every file the site is built from (for the freshness check)."""
    files = [ROOT / "README.md", *sorted((ROOT / "lessons").glob("*.md"))]
    files += sorted(BOOK.glob("*.py")) + [BOOK / "_config.yml", BOOK / "package.json", BOOK / "site.css",
                                                  BOOK / "search_text.js"]
    files += sorted((ROOT / "exercises" / "hints").glob("*.md"))
    files += sorted((ROOT / "lessons").glob("*.ipynb")) + sorted((ROOT / "exercises").glob("ex*.py"))
    files += sorted((ROOT / "tests" / "exercises").glob("test_ex*.py"))
    files += [p for p in sorted((ROOT / "benchmarks").rglob("*")) if p.suffix in (".md", ".png", ".csv")]
    return [f for f in files if f.exists()]


def is_fresh() -> bool:
    """True when a finished build exists and is newer than every source (and the lesson list is unchanged)."""
    if not STAMP.exists():
        return False
    built = STAMP.stat().st_mtime
    if any(f.stat().st_mtime > built for f in sources()):
        return False
    return STAMP.read_text() == _lesson_list()


def _lesson_list() -> str:
    # Also catches a lesson deleted or renamed, which leaves no newer file behind.
    return "\n".join(str(f.relative_to(ROOT)) for f in sources()) + "\n"


# --------------------------------------------------------------------------- staging

class Stage:
    """Writes files into the staging folder only when their content changed (Sphinx rebuilds by mtime)."""

    def __init__(self, root: Path):
        self.root = root
        self.written: set[Path] = set()

    def write(self, rel: str, data: bytes | str) -> None:
        data = data.encode() if isinstance(data, str) else data
        path = self.root / rel
        self.written.add(path)
        if path.exists() and path.read_bytes() == data:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def copy(self, src: Path, rel: str | None = None) -> None:
        self.write(rel or str(src.relative_to(ROOT)), src.read_bytes())

    def remove_the_rest(self, keep: Path) -> None:
        """Delete staged files not written this time (a lesson renamed), except under ``keep``."""
        for path in sorted(self.root.rglob("*"), reverse=True):
            if path.is_file() and path not in self.written and keep not in path.parents:
                path.unlink()
            elif path.is_dir() and path != keep and not any(path.iterdir()):
                path.rmdir()


def exercise_cell(lesson: course.Lesson) -> dict:
    """The markdown cell the site appends to a lesson: its exercise page and how it is graded."""
    if lesson.exercise is None:
        text = (f"## Exercise {lesson.number} on this site\n\n"
                f"There is no `exercises/ex{lesson.number}_*.py` yet. Grade the exercises there are with "
                f"`{GRADE_ALL}`.\n")
    else:
        ex, graded = lesson.exercise, lesson.graded
        text = (f"## Exercise {lesson.number} on this site\n\n"
                f"Your file: [`exercises/{ex.name}`](../exercises/{ex.stem}.md) (the stubs you fill in, shown "
                f"on its page). Grade it from the repository root:\n\n"
                f"```bash\n{GRADE_ALL}" + " " * 8 + "# every exercise, with a score table\n"
                + (f".venv/bin/python -m pytest tests/exercises/{graded.name}    # this one\n" if graded else "")
                + "```\n")
    return {"cell_type": "markdown", "id": f"site-exercise-{lesson.number}", "metadata": {}, "source": text}


def lesson_notebook(lesson: course.Lesson) -> str:
    nb = json.loads(lesson.notebook.read_text())
    course.without_widgets(nb["cells"])
    for cell in nb["cells"]:            # the test harness's markers (nbval) mean nothing to a reader
        if cell["cell_type"] == "code":
            source = "".join(cell["source"]).splitlines()
            cell["source"] = "\n".join(line for line in source if not line.startswith("# NBVAL_")).strip()
    nb.get("metadata", {}).pop("widgets", None)     # the saved widget state: nothing on a static page uses it
    nb["cells"].append(exercise_cell(lesson))
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def exercise_page(lesson: course.Lesson) -> str:
    ex, graded = lesson.exercise, lesson.graded
    lines = [f"# Exercise {lesson.number}: `exercises/{ex.name}`", "",
             f"The exercise of lesson [{lesson.title}](../lessons/{lesson.stem}.ipynb). Each function below "
             f"raises `NotImplementedError` until you write it, in your copy of the repository. Then:", "",
             "```bash",
             f"{GRADE_ALL}                       # every exercise: PASS/FAIL, points, total",
             f"make grade IMPL=solutions        # the reference answers, for comparison"]
    if graded is not None:
        lines.append(f".venv/bin/python -m pytest tests/exercises/{graded.name}   # this exercise only")
    lines += ["```", ""]
    if graded is not None:
        doc = ast.get_docstring(ast.parse(graded.read_text())) or ""
        tests = graded_tests(graded)
        lines += [f"## How it is graded: `tests/exercises/{graded.name}`", "", "```text", doc.strip(), "```",
                  "", f"Its {len(tests)} tests, {sum(p for _, p, _ in tests):g} points:", "",
                  "| test | points | what it checks |", "|---|---|---|"]
        lines += [f"| `{name}` | {points:g} | {what} |" for name, points, what in tests] + [""]
    lines += hints_section(lesson)
    lines += [f"## The file as shipped", "", f"```{{literalinclude}} {ex.name}", ":language: python", "```", ""]
    return "\n".join(lines)


def graded_tests(graded: Path) -> list[tuple[str, float, str]]:
    """(test name, its points, the first line of its docstring) of each test function in a graded file."""
    found = []
    for node in ast.parse(graded.read_text()).body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            continue
        points = [d.args[0].value for d in node.decorator_list if isinstance(d, ast.Call) and d.args
                  and ast.unparse(d.func).endswith("mark.points") and isinstance(d.args[0], ast.Constant)]
        what = (ast.get_docstring(node) or "").strip().split("\n")[0].replace("|", "\\|")
        found.append((node.name, float(points[0]) if points else 0.0, what))
    return found


def hints_section(lesson: course.Lesson) -> list[str]:
    """The exercise's hints file, one collapsed section per function (its levels stay collapsed inside)."""
    hints = ROOT / "exercises" / "hints" / f"{lesson.exercise.stem}.md"
    if not hints.exists():
        return []
    lines = ["## Hints", "", "Each opens on a click: try the question first.", ""]
    sections = re.split(r"^## ", hints.read_text(), flags=re.M)[1:]
    for section in sections:
        title, _, body = section.partition("\n")
        lines += [":::{admonition} " + title.strip(), ":class: dropdown", "", body.strip(), ":::", ""]
    return lines


def other_lesson_pages() -> list[Path]:
    """lessons/*.md besides the README and the instructor's guide (a report a lesson links: under_load.md)."""
    return [p for p in sorted((ROOT / "lessons").glob("*.md"))
            if p.name not in ("README.md", "INSTRUCTOR.md")]


def toc(lessons: list[course.Lesson], extra: dict[str, bool]) -> str:
    lines = ["# Generated by book/build_site.py from lessons/NN_*.ipynb: do not edit.", "format: jb-book",
             "root: home", "parts:", "  - caption: Lessons", "    chapters:"]
    for lesson in lessons:
        lines.append(f"      - file: lessons/{lesson.stem}")
        if lesson.exercise is not None:
            lines += ["        sections:", f"          - file: exercises/{lesson.exercise.stem}"]
    lines += ["  - caption: The course's repository", "    chapters:", "      - file: README"]
    lines += ["  - caption: Teaching the course", "    chapters:", "      - file: lessons/README"]
    if extra["instructor"]:
        lines.append("      - file: lessons/INSTRUCTOR")
    lines += [f"      - file: lessons/{page.stem}" for page in other_lesson_pages()]
    lines.append("      - file: timings")
    if extra["benchmarks"]:
        lines += ["  - caption: Measurements", "    chapters:", "      - file: benchmarks/README"]
        if extra["results"]:
            lines += ["        sections:", "          - glob: benchmarks/results/*/*"]
    return "\n".join(lines) + "\n"


def stage(lessons: list[course.Lesson]) -> None:
    st = Stage(STAGE)
    st.copy(BOOK / "_config.yml", "_config.yml")
    st.write("home.md", home.page(lessons))
    st.copy(ROOT / "README.md")
    st.copy(ROOT / "lessons" / "README.md")
    instructor = ROOT / "lessons" / "INSTRUCTOR.md"
    if instructor.exists():
        st.copy(instructor)
    for other in other_lesson_pages():
        st.copy(other)
    for lesson in lessons:
        st.write(f"lessons/{lesson.notebook.name}", lesson_notebook(lesson))
        if lesson.exercise is not None:
            st.copy(lesson.exercise)
            st.write(f"exercises/{lesson.exercise.stem}.md", exercise_page(lesson))
    st.write("timings.md", timings.page(lessons))
    bench = ROOT / "benchmarks" / "README.md"
    results = [p for p in sorted((ROOT / "benchmarks" / "results").rglob("*")) if p.suffix in (".md", ".png", ".csv")]
    if bench.exists():
        st.copy(bench)
        for path in results:
            st.copy(path)
    st.write("_toc.yml", toc(lessons, {"instructor": instructor.exists(), "benchmarks": bench.exists(),
                                       "results": bench.exists() and any(p.suffix == ".md" for p in results)}))
    st.write("_extra/favicon.ico", home.favicon_bytes())       # /favicon.ico, which browsers ask for
    static = STAGE / "_vendor"      # served as _static/mathjax/...
    assets.copy_mathjax(static / "mathjax")
    for name in ("site.css", "search_text.js"):
        shutil.copy2(BOOK / name, static / name)
    (static / "favicon.ico").write_bytes(home.favicon_bytes())
    st.remove_the_rest(keep=static)


# --------------------------------------------------------------------------- build

def jupyter_book() -> list[str]:
    script = Path(sys.executable).with_name("jupyter-book")
    if not script.exists():
        raise RuntimeError(f"{script} is missing: install the site's packages with  make site  "
                           f"(or: {sys.executable} -m pip install -e '.[site]')")
    return [str(script)]


def build(force: bool = False) -> Path:
    """Builds the site (unless a fresh one exists) and returns the folder of its HTML."""
    if not force and is_fresh():
        print(f"site is up to date: {HTML / 'index.html'}  (--force rebuilds)")
        return HTML
    started = time.monotonic()
    lessons = course.lessons()
    stage(lessons)
    # After a failed build Sphinx would re-read only the pages that changed since, and the warnings of the
    # others (errors, with -W) would pass unseen: without a finished build, every page is read again.
    fresh = force or not STAMP.exists()
    STAMP.unlink(missing_ok=True)
    command = jupyter_book() + ["build", str(STAGE), "--path-output", str(OUT), "--keep-going", "-W", "-q"]
    if fresh:
        command.append("--all")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"jupyter-book failed ({' '.join(command)}):\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
    pages = pages_built()
    STAMP.write_text(_lesson_list())
    print(f"site: {len(pages)} pages ({len(lessons)} lessons) in {time.monotonic() - started:.0f} s: "
          f"{HTML / 'index.html'}")
    return HTML


def pages_built(html: Path = HTML) -> list[Path]:
    """The content pages of a built site (not the search, index and redirect pages Sphinx adds)."""
    skip = {"search.html", "genindex.html", "index.html", "py-modindex.html"}
    return sorted(p for p in html.rglob("*.html")
                  if not p.relative_to(html).parts[0].startswith("_") and p.name not in skip)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild every page even if the build is fresh")
    build(parser.parse_args().force)

# The course's two commands. Each creates the environment (.venv) when it is missing.
#   make demo    a small pipeline on local CPU ranks, measured against theory, Gantt charts in out/demo
#   make test    the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test grade grader-check exercises env kernel lessons clean site slides autograder browser \
	lessons-under-load lessons-run

# TORCH_INDEX picks where torch comes from: empty (PyPI: on Linux the CUDA build, on macOS the only build),
# cpu (PyTorch's CPU-only build: a Linux laptop without an NVIDIA GPU), cu126 or any other name of
# download.pytorch.org/whl/NAME, or a whole index URL. E.g.  make env TORCH_INDEX=cpu
TORCH_INDEX ?=
TORCH_INDEX_URL = $(if $(findstring ://,$(TORCH_INDEX)),$(TORCH_INDEX),\
                    https://download.pytorch.org/whl/$(TORCH_INDEX))
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet --index-url $(TORCH_INDEX_URL) \
	  "$$(grep -o 'torch==[0-9.]*' pyproject.toml)")
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

env: $(STAMP)

# The website's and slides' packages (pyproject's [site] extra) and MathJax/reveal.js from npm (book/package.json).
SITE_STAMP := $(VENV)/.site-installed
$(SITE_STAMP): $(STAMP) pyproject.toml book/package.json
	$(PY) -m pip install --quiet -e '.[site]'
	$(PY) -m book.assets || echo "no npm: the site's and slides' tests will be skipped (apt-get install nodejs npm)"
	touch $(SITE_STAMP)

demo: $(STAMP)
	$(PY) -m pipeline_ref demo --out out/demo

test: $(STAMP) $(SITE_STAMP) browser
	$(PY) -m pytest -q --impl solutions --nbval-lax --nbval-current-env tests lessons

# Grade your exercises (IMPL=solutions to check the reference answers).
IMPL ?= exercises
grade: $(STAMP)
	$(PY) -m pytest -q tests/exercises --impl $(IMPL)

# Grade a catalogue of wrong answers (and right ones written differently): fails if the graded tests pass a
# wrong one or fail a right one. Minutes (tools/grader_check.py says how long); not part of `make test`.
grader-check: $(STAMP)
	$(PY) tools/grader_check.py

# Re-execute every lesson that measures (copies, in out/under_load/) beside a busy process, check that every
# printed verdict agrees with its numbers or is flagged, and write lessons/under_load.md. Minutes; not part of
# `make test`. `make lessons-run` re-executes every lesson in place, quietly, for the committed outputs.
lessons-under-load: $(STAMP)
	$(PY) tools/lessons_under_load.py

lessons-run: $(STAMP)
	$(PY) tools/lessons_under_load.py --quiet

# Rebuild exercises/exNN_*.py from the marked regions of solutions/exNN_*.py (after editing a solution).
exercises: $(STAMP)
	$(PY) tools/make_exercises.py

# Register the environment as a Jupyter kernel, then open the lessons with it.
kernel: $(STAMP)
	$(PY) -m ipykernel install --user --name pipeline-course --display-name "Pipeline course (.venv)"

lessons: kernel
	$(VENV)/bin/jupyter lab lessons/

# The course as a website (out/site/_build/html), each lesson as a reveal.js deck (out/slides), and the
# Gradescope bundle (out/autograder/autograder.zip). None of them re-executes a notebook.
site: $(SITE_STAMP)
	$(PY) -m book.build_site

slides: $(SITE_STAMP)
	$(PY) -m book.build_slides

autograder: $(STAMP)
	$(PY) tools/autograder/build.py

# Debian's chromium for the browser tests (tests/test_site.py, test_slides.py); needs root (CI runs it).
browser:
	@test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed (needs root: apt-get install chromium); the browser tests will be skipped"

clean:
	rm -rf $(VENV) out

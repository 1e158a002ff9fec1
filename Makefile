# The course's two commands. Each creates the environment (.venv) when it is missing.
#   make demo    a small pipeline on local CPU ranks, measured against theory, Gantt charts in out/demo
#   make test    the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test grade exercises env kernel lessons clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(PY) -m pipeline_ref demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q --impl solutions --nbval-lax --nbval-current-env tests lessons

# Grade your exercises (IMPL=solutions to check the reference answers).
IMPL ?= exercises
grade: $(STAMP)
	$(PY) -m pytest -q tests/exercises --impl $(IMPL)

# Rebuild exercises/exNN_*.py from the marked regions of solutions/exNN_*.py (after editing a solution).
exercises: $(STAMP)
	$(PY) tools/make_exercises.py

# Register the environment as a Jupyter kernel, then open the lessons with it.
kernel: $(STAMP)
	$(PY) -m ipykernel install --user --name pipeline-course --display-name "Pipeline course (.venv)"

lessons: kernel
	$(VENV)/bin/jupyter lab lessons/

clean:
	rm -rf $(VENV) out

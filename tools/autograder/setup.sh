#!/usr/bin/env bash
# Gradescope runs this once, as root in /autograder/source, when it builds the autograder's image. It installs
# Python, torch and what grading needs (requirements.txt: numpy, mpi4py with the mpich wheel, pytest, ...; not
# Jupyter) into /autograder/venv, and the course's package without its dependencies.
#
# torch: the CPU-only build by default (a grader has no GPU; the default index's Linux wheel is a CUDA build
# that pulls several GB of nvidia-* packages). To take torch from elsewhere set TORCH_INDEX_URL below (empty:
# the default index, PyPI) or TORCH_WHEEL to a wheel file (tools/autograder/emulate.py does, offline).
set -euo pipefail
cd "$(dirname "$0")"
TORCH_INDEX_URL="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
TORCH_WHEEL="${TORCH_WHEEL:-}"
VENV="${AUTOGRADER_ROOT:-/autograder}/venv"
export DEBIAN_FRONTEND=noninteractive
if ! command -v python3 >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq python3 python3-pip python3-venv
fi
# A venv of its own: a distribution's Python refuses pip installs into itself (PEP 668).
python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet --no-cache-dir)
torch_pin="$(grep -o 'torch==[0-9.]*' pyproject.toml)"
if [ -n "$TORCH_WHEEL" ]; then
  "${PIP[@]}" "$TORCH_WHEEL"
elif [ -n "$TORCH_INDEX_URL" ]; then
  # torch's own dependencies (filelock, sympy, ...) are on that index too.
  "${PIP[@]}" --index-url "$TORCH_INDEX_URL" "$torch_pin"
else
  "${PIP[@]}" "$torch_pin"
fi
"${PIP[@]}" -r requirements.txt
"${PIP[@]}" --no-deps .
# run_autograder takes $VENV/bin/python when it is there.

#!/usr/bin/env bash
# Gradescope runs this once, as root in /autograder/source, when the autograder image is built: it installs
# Python and the course's packages (pyproject.toml: torch pinned, mpi4py with the mpich wheel, pytest).
#
# torch from PyPI is a CUDA build of several GB. A grader has no GPU: to install the CPU-only build, set
# TORCH_INDEX_URL below to PyTorch's CPU wheel index before uploading the bundle.
set -euo pipefail
cd "$(dirname "$0")"
TORCH_INDEX_URL=""
export DEBIAN_FRONTEND=noninteractive
if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq python3 python3-pip python3-venv
fi
# A venv of its own: a distribution's Python refuses pip installs into itself (PEP 668).
python3 -m venv /autograder/venv
if [ -n "$TORCH_INDEX_URL" ]; then
  /autograder/venv/bin/pip install --quiet --index-url "$TORCH_INDEX_URL" "$(grep -o 'torch==[0-9.]*' pyproject.toml)"
fi
/autograder/venv/bin/pip install --quiet --upgrade pip
/autograder/venv/bin/pip install --quiet .
# run_autograder takes /autograder/venv/bin/python when it is there.

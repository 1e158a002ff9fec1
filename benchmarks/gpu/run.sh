#!/usr/bin/env bash
# The prepared GPU check (issue 17): on a machine with a GPU, in one go, in under 8 minutes on one GPU.
#
#   benchmarks/gpu/run.sh                 # installs the environment (make env), then runs everything
#   benchmarks/gpu/run.sh --no-install    # uses .venv as it is
#   PIPELINE_PY=/path/to/python benchmarks/gpu/run.sh   # an environment of your own (torch with CUDA), no install
#
# Writes benchmarks/results/gpu-<device>/: results.md (the table), results.json, step_time.png,
# peak_memory.png, staging.png, the demo's charts (demo/), and the log of each step (*.log).
# It reads the GPU's state and never changes its settings. On a machine without CUDA it stops at
# the check of step 2, with the reason, before any CUDA call (exit code 3).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
INSTALL=1
[ "${1:-}" = "--no-install" ] && INSTALL=0
[ -n "${PIPELINE_PY:-}" ] && INSTALL=0
PY="${PIPELINE_PY:-$ROOT/.venv/bin/python}"

cat <<EOF
benchmarks/gpu/run.sh, the prepared GPU check. In order, it will:
  1. install the environment: make env$([ $INSTALL = 0 ] && echo " (skipped: using $PY as it is)")
  2. check that torch sees a CUDA device, and stop here with the reason if it does not
  3. run pytest -m gpu (two ranks sharing one GPU over MPI, messages staged through pinned host memory;
     the NCCL tests need two GPUs and are skipped on one)
  4. run python -m pipeline_ref demo --device cuda
  5. sweep GPipe and 1F1B at p = 2 (m = 2..16): CUDA-event timings, each rank's peak memory, the staging
     cost per message
and write one table (results.md) and the plots into benchmarks/results/gpu-<device>/.
It only reads the GPU's state (nvidia-smi --query-gpu); it changes no GPU setting (clocks, power,
persistence, MIG, compute mode) and resets nothing. Expected time: under 8 minutes on one GPU.
EOF

if [ $INSTALL = 1 ]; then
  echo "== 1. make env"
  make env || { echo "make env failed: see above (a machine without network needs its wheels locally)"; exit 1; }
fi

echo "== 2. is there a GPU?"
if [ ! -x "$PY" ]; then
  echo "no Python at $PY: run make env, or set PIPELINE_PY"; exit 1
fi
OUT="$("$PY" benchmarks/gpu/check.py preflight)"
code=$?
if [ $code -ne 0 ]; then
  exit $code                      # check.py said why, before any CUDA call
fi
mkdir -p "$OUT"
echo "results -> $OUT"
failed=()

echo "== 3. pytest -m gpu"
timeout 300 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_gpu_path.py 2>&1 \
  | tee "$OUT/pytest.log" || failed+=("pytest -m gpu")

echo "== 4. demo --device cuda"
timeout 150 "$PY" -m pipeline_ref demo --device cuda --out "$OUT/demo" 2>&1 | tee "$OUT/demo.log" \
  || failed+=("demo --device cuda")

echo "== 5. sweep"
timeout 240 "$PY" benchmarks/gpu/check.py sweep --out "$OUT" 2>&1 | tee "$OUT/sweep.log" || failed+=("sweep")

if [ ${#failed[@]} -ne 0 ]; then
  echo "done, with failures: ${failed[*]} (logs in $OUT)"; exit 1
fi
echo "done: $OUT/results.md"

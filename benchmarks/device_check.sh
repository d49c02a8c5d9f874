#!/usr/bin/env bash
# The GPU check of mula in one go on a CUDA machine (H100/H200), at most 8 minutes: the CUDA tests,
# training with the defaults (Ctrl-C and --resume included), --compile and --deterministic (twice, same
# weights), evaluate, predict, export --half and the two benchmarks (benchmarks/device_check.py says what
# each step must show and its time cap). What it saw goes to $OUT (default ./device_out):
# device_check.json (rewritten after every step), device_check.log, logs.tar.gz and the benchmarks' JSON;
# the work files (data, caches, runs) live in a temporary folder outside $OUT.
# Run from the repository root:
#
#     OUT=/some/folder bash benchmarks/device_check.sh            # on the GPU machine
#     OUT=/tmp/dry bash benchmarks/device_check.sh --dry-run      # the same steps on a CPU, toy size
#
# The exit status is the check's: 0 when every step passed (ok, or partial for a benchmark cut by its
# cap after saving), 1 when any failed or was skipped, 2 when it could not start (no GPU).
# DEADLINE_S (default 480 s, 8 minutes) bounds the whole script: the install's seconds are taken off
# what the steps get (the dry run gives its steps three times that).
set -uo pipefail

DRY_RUN=()
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=(--dry-run); fi
OUT="${OUT:-$PWD/device_out}"
DEADLINE_S="${DEADLINE_S:-480}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/mula_triton_cache}"
PY="${PYTHON:-python3}"
start=$SECONDS

{
  echo "== machine"
  if ((${#DRY_RUN[@]} == 0)); then
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit,driver_version --format=csv || true
    echo "== install"
    # torch, triton and the other dependencies are on the machine already; no network there.
    if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . ; then
      echo "editable install failed; using PYTHONPATH=$PWD"
      export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
  fi
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
  "$PY" benchmarks/device_check.py --out "$OUT" --deadline $((DEADLINE_S - (SECONDS - start))) "${DRY_RUN[@]}"
  rc=$?
  echo "device check exit: $rc after $((SECONDS - start)) s"
  # the group's status is its last command's: without this exit it would be the echo's, always 0
  exit "$rc"
} 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"

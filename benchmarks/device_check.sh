#!/usr/bin/env bash
# The GPU check of the dynamic depthwise convolution, in one go on a CUDA machine (H100/H200):
# install the package, run tests/test_dynconv.py (the CUDA tests, and the interpreter tests on the
# CPU), then the benchmark (grid, tile sweep, compiler report, hg-5s training step), then the CLI's
# quick path, then prediction (eager, fast and fast bf16, hg-5s). Logs, the pytest report and the
# benchmark JSON files go to $OUT (default ./device_out).
# Run from the repository root:
#
#     OUT=/some/folder bash benchmarks/device_check.sh
#
# Expected: about 1-1.5 min of tests (compiles spread over pytest-xdist workers) and 2.5-4 min of
# benchmark. Every step is cut at a shared deadline (DEADLINE_S, default 420 s), and the benchmark
# rewrites its JSON after every case, so a slow run still ends in time and keeps what it measured.
set -uo pipefail

OUT="${OUT:-$PWD/device_out}"
DEADLINE_S="${DEADLINE_S:-420}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/mula_triton_cache}"
PY="${PYTHON:-python3}"
start=$SECONDS
step() { echo "== $1 (t=$((SECONDS - start)) s)"; }
left() {  # seconds a step may take: its own cap, or what is left before the deadline
  local rest=$((DEADLINE_S - (SECONDS - start)))
  if ((rest < $1)); then echo $((rest > 5 ? rest : 5)); else echo "$1"; fi
}

{
  step "machine"
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit,driver_version --format=csv || true
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0))"

  step "install"
  # torch, triton and the other dependencies are on the machine already; no network there.
  if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . ; then
    echo "editable install failed; using PYTHONPATH=$PWD"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$PY" -c "import mula_cli.ops.dynconv_op as op; print('custom op', op.dynconv_forward)"

  step "tests (CUDA + interpreter)"
  xdist=()
  if "$PY" -c "import xdist" 2>/dev/null; then xdist=(-n 8); fi
  timeout "$(left 170)" "$PY" -m pytest tests/test_dynconv.py -q -rs -p no:cacheprovider "${xdist[@]}" \
      --junitxml="$OUT/pytest_dynconv.xml" > "$OUT/pytest_dynconv.log" 2>&1
  echo "pytest exit: $?"
  tail -25 "$OUT/pytest_dynconv.log"

  step "benchmark"
  card=$("$PY" -c "import torch; n = torch.cuda.get_device_name(0); print(''.join(c if c.isalnum() else '_' for c in n).strip('_').lower())")
  timeout "$(left 300)" "$PY" benchmarks/dynconv_cuda.py --out "$OUT/dynconv_${card}.json" \
      > "$OUT/benchmark_table.txt" 2> "$OUT/benchmark.log"
  echo "benchmark exit: $?"
  tail -8 "$OUT/benchmark.log"
  cat "$OUT/benchmark_table.txt"

  step "CLI path (quick, no sweep, no training step)"
  if ((DEADLINE_S - (SECONDS - start) > 40)); then
    timeout "$(left 60)" "$PY" -m mula_cli benchmark dynconv --quick --no-sweep --no-train \
        --out /tmp/mula_cli_quick.json > /dev/null 2> "$OUT/cli_quick.log"
    echo "cli exit: $?"
  else
    echo "skipped: too close to the deadline"
  fi

  step "prediction on the GPU (eager / fast / fast bf16, hg-5s)"
  if ((DEADLINE_S - (SECONDS - start) > 40)); then
    timeout "$(left 120)" "$PY" -m mula_cli benchmark predict --device cuda --bf16 --batches 1,8 --repeats 5 \
        --out "$OUT/predict_${card}.json" > "$OUT/predict_table.txt" 2> "$OUT/predict.log"
    echo "predict benchmark exit: $?"
    cat "$OUT/predict_table.txt"
  else
    echo "skipped: too close to the deadline"
  fi

  step "done"
} 2>&1 | tee "$OUT/device_check.log"

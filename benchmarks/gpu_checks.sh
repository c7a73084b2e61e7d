#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, as one job that fits a lent machine's time (one command may run
# 600 s): each benchmark under its own time cap, most wanted first, its output in $OUT/<name>.txt (or
# /tmp/gpu-checks). A benchmark that runs out of time or fails is recorded as such and the next one starts.
#
#   bash benchmarks/gpu_checks.sh [total seconds, default 540]
#
# Needs a CUDA GPU and a Python with torch (CUDA build) and osctl's dependencies: the project's .venv when there is
# one, else python3 with this checkout on PYTHONPATH. On the lent machines (Python 3.12, CUDA torch) diffusers,
# peft's peers and msgspec are missing: carry them as wheels and put them on PYTHONPATH first (device README).
set -u
OUT_DIR=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT_DIR"
BUDGET=${1:-540}
START=$(date +%s)
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$PWD:$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

run() {  # run NAME SECONDS COMMAND...: at most SECONDS, and never past the budget
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 30 ]; then echo "$name: skipped (budget spent)" | tee -a "$OUT_DIR/summary.txt"; return; fi
  [ "$cap" -gt "$left" ] && cap=$left
  local t0=$(date +%s)
  timeout "$cap" "$@" > "$OUT_DIR/$name.txt" 2>&1
  local rc=$?
  echo "$name: rc $rc in $(( $(date +%s) - t0 )) s (cap $cap s)" | tee -a "$OUT_DIR/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.txt" 2>&1
# issue 27: MFU of the released 2B/122 at 93x352x640 per checkpointing policy, train and CFG sample steps
run realsize 200 "$PY" benchmarks/bench_realsize.py --checkpointing selective,full --configs transformer,train,sample --reps 3
# issue 25: host and device peaks of lean loading on the GPU; LoRA on the released 2.7B, plan vs measured peak
run load 60 "$PY" benchmarks/bench_load.py --device cuda --layers 8 --file-dtype bf16 --reps 1
run lora 120 "$PY" benchmarks/bench_lora.py --gpu
# issue 24: Wan 2.1 1.3B at 81x480x832, osctl's call vs the bare diffusers module
run family 120 "$PY" benchmarks/bench_family_realsize.py --steps 3 --checkpointing full
# issue 27: compiled vs eager blocks (inductor compile time is most of this one)
run compile 150 "$PY" benchmarks/bench_realsize.py --checkpointing selective --configs transformer --compile --reps 3
cat "$OUT_DIR/summary.txt"

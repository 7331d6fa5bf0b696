#!/usr/bin/env bash
# The GPU check of issue 14, in under 5 minutes on one CUDA device, writing one Markdown table:
#   1. the loss benchmark on the GPU (fused kernels compiled for CUDA; vs fvcore and vs the floor),
#   2. the paper-like training-iteration comparison (R50-FPN, 80 classes, 600 px, batch 2;
#      detectron2 RetinaNet vs FocalRetinaNet with every loss and OHEM, peak memory),
#      with AMP, channels_last and the static-shape step, then the fast path at batch 16,
#   3. the inference benchmark (R50/R101-FPN, 400..800 px, batch 1; also TEST.AMP).
# Each part runs under its own time limit (a part over it is reported, the rest still runs).
# Without a CUDA device it skips these parts with a message, writes the table saying so, exits 0.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # default output/gpu_check; table: OUT_DIR/gpu_check.md
# Exit status: 0, or 1 when a part failed or the fused kernels did not compile for CUDA.
# GPU_CHECK_SMOKE=1 runs the same pipeline on the CPU at tiny sizes (checks the plumbing only).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-output/gpu_check}
mkdir -p "$OUT"
TABLE="$OUT/gpu_check.md"
start=$(date +%s)

DEV=cuda LOSS_ARGS=(--sizes 200000x80,2000000x80 --reps 20) TRAIN_ARGS=(--settings paper --warmup 5 --iters 20)
INF_ARGS=(--warmup 5 --images 20 --amp) B16_ARGS=(--settings paper_b16 --warmup 3 --iters 10 --variants fl_amp_cl)
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  DEV=cpu LOSS_ARGS=(--sizes 2000x80 --reps 2) TRAIN_ARGS=(--settings small --warmup 1 --iters 1)
  INF_ARGS=(--depths 50 --scales 320 --warmup 0 --images 1 --amp)
  B16_ARGS=(--settings small --warmup 0 --iters 1 --variants fl_amp_cl)
  echo "gpu_check: GPU_CHECK_SMOKE=1: the pipeline on the CPU at tiny sizes; the figures mean nothing"
elif ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  msg="no CUDA device (torch.cuda.is_available() is False): CUDA loss, training-iteration and inference benchmarks"
  echo "gpu_check: $msg skipped"
  "$PY" benchmarks/report.py --skipped "$msg" --out "$TABLE" >/dev/null
  echo "gpu_check: wrote $TABLE"
  exit 0
fi

status=0
part() {  # part NAME LIMIT_S COMMAND...: run with a time limit, log to OUT/NAME.txt
  local name=$1 limit=$2; shift 2
  echo "== gpu_check: $name (limit ${limit}s) =="
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "gpu_check: $name failed or ran over ${limit}s (exit $rc)"; status=1
    skipped+=("--skipped" "$name: exit $rc (see $OUT/$name.txt)")
  fi
}
skipped=()
"$PY" -m focal_plugin.collect_env > "$OUT/env.txt" 2>&1 || true

part loss 75 "$PY" benchmarks/bench_loss.py --device "$DEV" "${LOSS_ARGS[@]}" --json "$OUT/loss.json"
part train_iter 120 "$PY" benchmarks/bench_train_iter.py "${TRAIN_ARGS[@]}" --json "$OUT/train_iter.json"
# batch 16 (images/s against MLPerf's): the fast path (AMP + channels_last) and the two baselines
part train_b16 90 "$PY" benchmarks/bench_train_iter.py "${B16_ARGS[@]}" --json "$OUT/train_b16.json"
part inference 75 "$PY" benchmarks/bench_inference.py --device "$DEV" "${INF_ARGS[@]}" \
  --json "$OUT/inference.json"

args=()
for name in loss train_iter train_b16 inference; do
  flag=--${name%%_*}; [ "$name" = inference ] && flag=--inference
  [ -s "$OUT/$name.json" ] && args+=("$flag" "$OUT/$name.json")
done
"$PY" benchmarks/report.py "${args[@]}" "${skipped[@]}" --note "gpu_check.sh, $(( $(date +%s) - start )) s" \
  --out "$TABLE"
if [ "$DEV" = cuda ] && [ -s "$OUT/loss.json" ] && ! grep -q '"kernel_mode": "compiled"' "$OUT/loss.json"; then
  echo "gpu_check: the fused loss kernels did NOT compile for CUDA (ran eagerly); see $OUT/loss.txt"; status=1
fi
echo "gpu_check: wrote $TABLE ($(( $(date +%s) - start )) s)"
exit $status

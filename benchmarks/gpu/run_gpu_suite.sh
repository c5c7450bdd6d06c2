#!/usr/bin/env bash
# The whole benchmark suite on a bare GPU machine (Python 3.12 and PyTorch preinstalled, no
# network), within 8 minutes. Prepare the wheels first, on the CPU machine:
#
#   bash benchmarks/gpu/build_wheels.sh [--fpn]       # -> benchmarks/gpu/.whl/ (git-ignored)
#
# then, on the GPU machine, from the repository root (with the device tool: carry
# ["benchmarks/gpu/.whl"]; $OUT is the folder whose files come back):
#
#   OUT=$OUT bash benchmarks/gpu/run_gpu_suite.sh
#
# Writes into ${OUT:-benchmarks/results}: core_memory.{md,png},
# recurrence_{pathfinder,mask_head,fpn}.{md,png} and model_cost.md + model_cost_{train,infer}.png
# (fpn and model_cost only if Detectron2's wheels were shipped and the model builds). Each stage
# has its own time limit so the suite ends within 8 minutes even if one of them hangs; the log
# goes to stdout.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
WHL=benchmarks/gpu/.whl
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

"$PY" - <<'EOF' || { echo "no usable CUDA device: stopping" >&2; exit 1; }
import sys, torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"{torch.cuda.get_device_name(0)}")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

echo "== [$(elapsed) s] install from $WHL (no network)"
source benchmarks/gpu/install_wheels.sh

run_stage() {  # run_stage LIMIT_S NAME ARGS...: one benchmark, killed past its limit
  local limit=$1 name=$2; shift 2
  echo "== [$(elapsed) s] $name (limit ${limit} s)"
  timeout --signal=TERM --kill-after=10 "$limit" "$PY" "$@"
  local rc=$?
  [ $rc -eq 124 ] && echo "!! $name stopped at its ${limit} s limit"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "!! $name failed (rc=$rc)"
  return 0
}

# Budget (s): install ~20, amp 30, core 40, pathfinder 80, mask_head 110, fpn 100, model_cost 90 = 470 < 480.
# The core under CUDA autocast (float16, a 65536 loss scale): the solve in float32, no false
# divergence, both implicit steps agree (tests/crbp/test_mixed_precision.py, its CUDA cases).
run_stage 30 amp_core -m pytest -q -p no:cacheprovider tests/crbp/test_mixed_precision.py -k cuda
run_stage 40 core_memory -m benchmarks.core_memory --device cuda --repeats 5 --out "$OUT"
run_stage 80 pathfinder -m benchmarks.recurrence --device cuda --workloads pathfinder --repeats 5 \
    --grad-device cpu --out "$OUT"
run_stage 110 mask_head -m benchmarks.recurrence --device cuda --workloads mask_head --repeats 5 \
    --grad-device cpu --out "$OUT"
run_stage 100 fpn -m benchmarks.recurrence --device cuda --workloads fpn --repeats 2 --out "$OUT"
# The whole Panoptic FPN R-50 (needs the Detectron2 wheels): training memory at 32 and 128 RoIs
# (CUDA max_memory_allocated and saved bytes), inference FLOPs and time at 100 detections,
# 800x1333. Its table is rewritten after every RoI count / detection count.
run_stage 90 model_cost -m benchmarks.model_cost --device cuda --rois 32 128 --train-configs \
    "feed-forward (model zoo)" crbp-5 crbp-20 crbp-40 "crbp-20 (recorded step)" bptt-20 \
    "crbp-20 + recurrent FPN" "crbp-20, 64-channel state" "crbp-20, implicit step in chunks of 4" \
    --sizes 800x1333 --detections 100 --repeats 3 --out "$OUT"

echo "== [$(elapsed) s] done; files in $OUT:"
ls -l "$OUT"

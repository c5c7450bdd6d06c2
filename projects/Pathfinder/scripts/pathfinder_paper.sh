#!/usr/bin/env bash
# Pathfinder at the paper's scale on one GPU, within ~11 minutes: C-RBP-20 and BPTT-6 hGRUs
# (configs/paper/: 150 px, 25 channels, 15x15 kernels, contours of 14/20/25 paddles),
# each trained for the same wall-clock budget, then evaluated per length and against test-time
# steps to 40. Prepare the wheels on the CPU machine first (Detectron2 is needed):
#
#   bash benchmarks/gpu/build_wheels.sh --fpn          # -> benchmarks/gpu/.whl/ (git-ignored)
#
# then on the GPU machine (device tool: carry ["benchmarks/gpu/.whl"]):
#
#   OUT=$OUT TRAIN_SECONDS=180 bash projects/Pathfinder/scripts/pathfinder_paper.sh
#
# What it must show (and what it cannot): the paper trained ~200K images per length for many
# epochs; minutes of training cannot reach its IoU (PF-25: C-RBP 0.938, BPTT-6 0.724). This check
# shows that the paper-scale models train on a GPU and measures them where minutes suffice:
#   - CUDA training memory (max_memory_allocated): C-RBP-20's flat in steps (20 vs 40 within 1%),
#     BPTT-6's above it (the paper: 6 GB against 10.5 GB on its batch);
#   - iterations per second of both, and IoU per length after the same wall-clock budget;
#   - past the horizon: C-RBP's IoU at 40 steps >= 0.98 x its IoU at 20, BPTT-6's ratio beside it.
# Writes to ${OUT}: pathfinder_paper.md (table), pathfinder_paper_{crbp,bptt}.json (results.json
# of each run), and the log on stdout. Training stops by SIGTERM at TRAIN_SECONDS (the preemption
# checkpoint), and the model is evaluated from that checkpoint.
set -uo pipefail
cd "$(dirname "$0")/../../.."  # the repository root
PY=${PYTHON:-python3}
WHL=benchmarks/gpu/.whl
OUT=${OUT:-output/pathfinder_paper}
TRAIN_SECONDS=${TRAIN_SECONDS:-180}
WORK=${WORK:-/tmp/pathfinder_paper}
mkdir -p "$OUT" "$WORK"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

echo "== [$(elapsed) s] install from $WHL (no network)"
source benchmarks/gpu/install_wheels.sh
export PYTHONUNBUFFERED=1 CRBP_PATHFINDER_DIR="$WORK/data"

echo "== [$(elapsed) s] data (every core)"
timeout 240 "$PY" - <<'EOF' || { echo "!! data generation failed or took over 240 s"; exit 1; }
from pathfinder.config import load_pathfinder_config
from pathfinder.data import register_pathfinder_datasets
register_pathfinder_datasets(load_pathfinder_config("paper/crbp.yaml"))
EOF

for model in crbp bptt; do
  run="$WORK/$model"
  # A constant learning rate (no cosine to a MAX_ITER that the time budget would cut short).
  opts=(SOLVER.LR_SCHEDULER_NAME WarmupMultiStepLR "SOLVER.STEPS" "()" OUTPUT_DIR "$run")
  echo "== [$(elapsed) s] train $model for ${TRAIN_SECONDS} s"
  timeout --signal=TERM --kill-after=60 "$TRAIN_SECONDS" \
    "$PY" projects/Pathfinder/train_net.py --config-file "paper/$model.yaml" "${opts[@]}"
  last=$(cat "$run/last_checkpoint" 2>/dev/null)
  [ -n "$last" ] || { echo "!! $model: no checkpoint after ${TRAIN_SECONDS} s"; continue; }
  echo "== [$(elapsed) s] evaluate $model from $last"
  timeout 150 "$PY" projects/Pathfinder/train_net.py --config-file "paper/$model.yaml" --eval-only \
    "${opts[@]}" MODEL.WEIGHTS "$run/$last" || echo "!! $model evaluation failed"
  cp "$run/results.json" "$OUT/pathfinder_paper_$model.json" 2>/dev/null
done

echo "== [$(elapsed) s] CUDA training memory"
timeout 90 "$PY" - "$OUT" <<'EOF' || echo "!! memory measurement failed"
import json, os, sys
import torch
from detectron2.data import DatasetCatalog
from pathfinder.config import load_pathfinder_config
from pathfinder.data import load_sample
from pathfinder.engine import PathfinderTrainer, prepare_datasets
from crbp_detectron.utils.tables import markdown_table

def peak_mib(name, steps):
    cfg = load_pathfinder_config(f"paper/{name}.yaml", ["MODEL.CRBP.STEPS", steps])
    prepare_datasets(cfg)
    model = PathfinderTrainer.build_model(cfg).train()
    inputs = [load_sample(r) for r in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:cfg.SOLVER.IMS_PER_BATCH]]
    torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    sum(model(inputs).values()).backward()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20

rows = [["C-RBP", 20, peak_mib("crbp", 20)], ["C-RBP", 40, peak_mib("crbp", 40)], ["BPTT", 6, peak_mib("bptt", 6)]]
results = {}
for name in ("crbp", "bptt"):
    path = os.path.join(sys.argv[1], f"pathfinder_paper_{name}.json")
    if os.path.exists(path):
        results[name] = json.load(open(path))
lines = ["# Pathfinder at the paper's scale on one GPU (benchmarks/gpu/pathfinder_paper.sh)", "",
         f"{torch.cuda.get_device_name(0)}; CUDA training memory of one iteration (batch 32):", "",
         markdown_table(["model", "steps", "max_memory_allocated (MiB)"], rows), ""]
table = []
for name, res in results.items():
    h = res.get("steps")
    for length, metrics in res["test"].items():
        sweep = res["sweep"].get(length, [])
        at_2h = sweep[2 * h - 1]["iou"] if h and len(sweep) >= 2 * h else float("nan")
        table.append([name, h, res["train"]["iterations"], res["train"]["seconds_per_iteration"], length,
                      metrics["iou"], at_2h, at_2h / metrics["iou"] if metrics["iou"] else float("nan")])
lines += [markdown_table(["model", "steps", "iterations", "s / iteration", "length", "IoU at horizon",
                          "IoU at 2x horizon", "ratio"], table), ""]
open(os.path.join(sys.argv[1], "pathfinder_paper.md"), "w").write("\n".join(lines))
print("\n".join(lines))
EOF
echo "== [$(elapsed) s] done; files in $OUT:"
ls -l "$OUT"

"""The marker-free line of the experiment's table: a predictor that marks both long paths (the
target and every distractor as long as it) without looking at the marker. A model at or below its
IoU has not shown that it uses the marker: segmenting the long paths scores that much.

    python -m experiments.marker_free                       # every test length, the whole test sets
    python -m experiments.marker_free --lengths 22 --count 100

Regenerates the test contours with their parts (experiments.selection.contour_parts, checked
against the stored test images) and scores the prediction with the experiment's pooled pixel
counts. Writes results/experiment/marker_free.json ({length: metrics and the images counted}),
merging with the lengths already there.
"""
import argparse
import json
import os

import torch

from crbp_detectron.checkpoint import atomic_write
from pathfinder.data import test_name, test_tensors
from pathfinder.evaluation import PixelCounts

from .experiment import DEFAULT_MODELS, EXPERIMENT, Setting
from .runs import RESULTS_DIR, experiment_dir
from .selection import PARTS, contour_parts

LONG_PATHS = [PARTS.index(p) for p in ("target, near third", "target, middle third", "target, far third",
                                       "long distractors")]


def marker_free_metrics(cfg, length: int, count: int) -> dict:
    """IoU / F1 / precision / recall of 'both long paths' against the label, over the first
    `count` test contours of `length` paddles."""
    images, masks = test_tensors(cfg, test_name(length), count)
    parts = contour_parts(cfg, length, len(images), images)["parts"]
    predicted = torch.from_numpy(parts[:, LONG_PATHS].any(1))
    counts = PixelCounts().add(predicted, masks[:, 0].bool())
    return dict(counts.metrics(), images=len(images))


def results_path(results_dir: str) -> str:
    return os.path.join(experiment_dir(results_dir, EXPERIMENT), "marker_free.json")


def load(results_dir: str = RESULTS_DIR) -> dict:
    path = results_path(results_dir)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", nargs="+", type=int, default=None, help="default: every test length")
    p.add_argument("--count", type=int, default=0, help="test images per length (0: the whole test set)")
    p.add_argument("--results", default=RESULTS_DIR)
    args = p.parse_args(argv)
    setting = Setting(args.results, os.environ.get("CRBP_PATHFINDER_DIR", ""))
    opts = (["PATHFINDER.DATA.TEST_LENGTHS", args.lengths] if args.lengths else []) + (
        ["PATHFINDER.DATA.TEST_PER_LENGTH", args.count] if args.count else [])  # the first `count` of the test set
    cfg = setting.cfg(DEFAULT_MODELS[0], opts)
    lengths = list(cfg.PATHFINDER.DATA.TEST_LENGTHS)
    found = load(args.results)
    for length in lengths:
        found[str(length)] = marker_free_metrics(cfg, length, args.count or cfg.PATHFINDER.DATA.TEST_PER_LENGTH)
        print(f"L={length}: IoU {found[str(length)]['iou']:.3f} ({found[str(length)]['images']} images)", flush=True)
        ordered = dict(sorted(found.items(), key=lambda kv: int(kv[0])))
        atomic_write(results_path(args.results), lambda f: json.dump(ordered, f, indent=1), mode="w")
    return found


if __name__ == "__main__":
    main()

"""Which paths does a trained Pathfinder model select, and how far along the contour does the
marker decide? Regenerates test contours with their parts (the target split into thirds counted
from the marker, the distractors as long as the target, the shorter distractors, the background)
and, for seed 0's weights of each model, reports after each step the fraction of each part
predicted positive, and the marker's influence per paddle position along the target: the
predicted probability minus the one predicted for the same image with the marker dot erased (both
in one batch, so that the cell's batch statistics are the same). A model that traces carries the
marker's influence along the whole target, and fills the target in from the marker over the steps;
a model that segments long paths and only looks near the marker has an influence that dies a few
paddles from it.

    python -m benchmarks.pathfinder.selection --models crbp bptt cbptt rbp cnn --length 14
    python -m benchmarks.pathfinder.selection --report-only ...     # from the committed measurements

Writes benchmarks/results/pathfinder/experiment/<model>/selection_L<length>_seed0.json and
benchmarks/results/pathfinder_selection.md and .png (needs the experiment's seed-0 weights:
python -m benchmarks.pathfinder.experiment).
"""
import argparse
import json
import os
from typing import Dict, List

import numpy as np
import torch

from crbp_detectron.data.pathfinder.generator import generate_sample
from crbp_detectron.data.pathfinder.geometry import _point_segment_distance, stroke_field
from crbp_detectron.pathfinder.data import generator_config, test_name, test_tensors
from crbp_detectron.pathfinder.engine import PathfinderTrainer, prepare_datasets
from crbp_detectron.plotting import saved_panels
from crbp_detectron.tables import markdown_table

from .equilibrium import run_config
from .experiment import EXPERIMENT, FEED_FORWARD, MODELS, Setting
from .report import model_color
from .runs import RESULTS_DIR, experiment_dir, load_experiment

PARTS = ("target, near third", "target, middle third", "target, far third", "long distractors",
         "short distractors", "background")


def test_seed(cfg, length: int) -> int:
    """The generator seed of a test set (crbp_detectron.pathfinder.data.dataset_folder's)."""
    from crbp_detectron.pathfinder.data import _SPLIT_SEED_OFFSET

    return cfg.PATHFINDER.DATA.SEED * 1000 + _SPLIT_SEED_OFFSET["test"] + length


def contour_parts(cfg, length: int, count: int, images: torch.Tensor) -> Dict[str, object]:
    """The first `count` test contours of `length` paddles, regenerated from the test set's seed
    (checked against the stored images):

    parts: bool [count, len(PARTS), S, S]. A target pixel belongs to the third of its nearest
        paddle, counted along the path from the marker (the marker is in the near third).
    order: int [count, S, S], that paddle's position from the marker (0 .. length - 1) on the
        target's pixels that the marker does not change, -1 elsewhere.
    unmarked: float [count, 1, S, S], the images without the marker dot (the path left intact).
    """
    gen = generator_config(cfg, length)
    seed = test_seed(cfg, length)
    size = gen.size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    centres = np.stack([xs, ys], -1)  # pixel (row y, column x) has centre (x, y)
    parts = np.zeros((count, len(PARTS), size, size), bool)
    order = np.full((count, size, size), -1, np.int64)
    unmarked = np.zeros((count, 1, size, size), np.float32)
    for n in range(count):
        s = generate_sample(gen, seed, n, return_parts=True)
        if not np.array_equal(s["image"], np.round(images[n, 0].numpy() * 255).astype(np.uint8)):
            raise RuntimeError(f"regenerated test image {n} of length {length} differs from the stored one: "
                               "the test set was made with other generator settings")
        strokes = s["strokes"]
        paths = s["coverage"] >= 0.5
        paddles = [(a, b, i) for a, b, _, pid, i in strokes.items() if pid == 0 and i >= 0]
        at_start = np.allclose(s["markers"][0], s["ends"][0])
        distance = np.stack([_point_segment_distance(centres, a, b) for a, b, _ in paddles])  # [P, S, S]
        position = np.array([i if at_start else length - 1 - i for _, _, i in paddles])[distance.argmin(0)]
        marker = np.linalg.norm(centres - s["markers"][0], axis=-1) <= gen.marker_radius + 0.5
        position[marker] = 0
        third = np.minimum(position * 3 // length, 2)
        for k in range(3):
            parts[n, k] = paths[0] & (third == k)
        long_ids = list(range(1, 1 + gen.long_distractors))
        short_ids = list(range(1 + gen.long_distractors, len(paths)))
        parts[n, 3] = paths[long_ids].any(0) if long_ids else False
        parts[n, 4] = paths[short_ids].any(0) if short_ids else False
        parts[n, 5] = s["image"] == 0
        field = stroke_field(np.array([a for a, _, _ in paddles]), np.array([b for _, b, _ in paddles]),
                             np.full(len(paddles), gen.stroke_radius), size, pad=strokes.pad)
        others = s["coverage"][1:].max(0) if len(paths) > 1 else np.zeros((size, size))
        without = np.round(np.maximum(np.clip(0.5 - field, 0.0, 1.0), others) * 255)
        unmarked[n, 0] = without / 255.0
        # the influence is read where both images are the same (not on the marker, nor on the
        # paddle pixels it brightens)
        same = paths[0] & (without == s["image"])
        order[n][same] = position[same]
    return {"parts": parts, "order": order, "unmarked": torch.from_numpy(unmarked)}


def recall_per_part(positive: torch.Tensor, parts: np.ndarray) -> List[float]:
    """Fraction of each part's pixels (pooled over images) that are predicted positive."""
    pos = positive[:, 0].numpy()
    return [float(pos[parts[:, k]].mean()) if parts[:, k].any() else float("nan") for k in range(len(PARTS))]


def per_position(values: np.ndarray, order: np.ndarray, length: int) -> List[float]:
    """Mean of `values` [N, S, S] over the target's pixels at each paddle position from the marker."""
    return [round(float(values[order == k].mean()), 4) if (order == k).any() else float("nan") for k in range(length)]


@torch.no_grad()
def measure(model, images: torch.Tensor, contours: Dict, steps: int, length: int, horizon: int = 1) -> Dict[str, list]:
    """Per step (one 'step' for a feed-forward model): the recall of every part (the test images
    in one batch, as the evaluator runs them) and the marker's influence per paddle position along
    the target, the mean of p(image) - p(image without its marker); at the `horizon`, the recall
    per paddle position with and without the marker. For the influence each image and its
    unmarked copy run in one batch: the cell's BatchNorm normalises with batch statistics, so both
    see the same statistics and the difference is the marker's alone."""
    def outputs(batch):
        return [model.logits(batch)] if model.recurrence is None else model.step_outputs(batch, steps)

    order = contours["order"]
    both = [o.split(len(images)) for o in outputs(torch.cat([images, contours["unmarked"]]))]
    marked, unmarked = both[horizon - 1]
    return {"selection": [[round(v, 4) for v in recall_per_part(o > 0, contours["parts"])] for o in outputs(images)],
            "influence": [per_position((torch.sigmoid(m) - torch.sigmoid(u))[:, 0].numpy(), order, length)
                          for m, u in both],
            "recall_by_position": {"marked": per_position((marked > 0)[:, 0].numpy(), order, length),
                                   "unmarked": per_position((unmarked > 0)[:, 0].numpy(), order, length)}}


def results_path(results_dir: str, experiment: str, name: str, length: int) -> str:
    return os.path.join(experiment_dir(results_dir, experiment), name, f"selection_L{length}_seed0.json")


def measure_model(name: str, runs: Dict, weights: str, length: int, count: int, setting: Setting) -> Dict:
    cfg = run_config(runs[0], setting.data_root)
    prepare_datasets(cfg)
    model = PathfinderTrainer.build_model(cfg)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    images, _ = test_tensors(cfg, test_name(length), count)
    contours = contour_parts(cfg, length, len(images), images)
    horizon = runs[0].get("steps") if name not in FEED_FORWARD else None
    out = measure(model, images, contours, 2 * horizon if horizon else 1, length, horizon or 1)
    return {"model": name, "length": length, "count": len(images), "horizon": horizon, **out}


def shown_steps(horizon) -> List[int]:
    return sorted({t for t in (4, horizon // 4, horizon // 2, horizon, 2 * horizon) if 1 <= t <= 2 * horizon}) \
        if horizon else [1]


def thirds(values: List[float]) -> List[float]:
    """Means of per-position values over the near, middle and far thirds of the positions."""
    length = len(values)
    return [float(np.nanmean([v for k, v in enumerate(values) if min(k * 3 // length, 2) == j])) for j in range(3)]


def write_report(measured: List[Dict], results_dir: str):
    command = (f"python -m benchmarks.pathfinder.selection --models {' '.join(r['model'] for r in measured)} "
               f"--length {measured[0]['length']} --count {measured[0]['count']}")
    rows, influence_rows = [], []
    for r in measured:
        label, horizon = MODELS[r["model"]][0], r["horizon"]
        for t in shown_steps(horizon):
            step = t if horizon else "–"
            rows.append([label, step] + [f"{v:.2f}" for v in r["selection"][t - 1]])
            influence_rows.append([label, step] + [f"{v:+.2f}" for v in thirds(r["influence"][t - 1])])
    length, count = measured[0]["length"], measured[0]["count"]
    png = os.path.join(results_dir, "pathfinder_selection.png")
    title = f"Seed 0 on {count} test contours of {length} paddles"
    panels = [("paddle position from the marker", "predicted positive at the horizon (dashed: marker erased)"),
              ("paddle position from the marker", "marker influence at the horizon: p - p(no marker)"),
              ("step", "long distractors predicted positive"), ("step", "far third of the target predicted positive")]
    with saved_panels(png, title, panels) as axes:
        for i, r in enumerate(measured):
            color, label = model_color(i, len(measured)), MODELS[r["model"]][0]
            position = range(r["length"])
            axes[0].plot(position, r["recall_by_position"]["marked"], "o-", ms=3, color=color, label=label)
            axes[0].plot(position, r["recall_by_position"]["unmarked"], "--", color=color)
            axes[1].plot(position, r["influence"][(r["horizon"] or 1) - 1], "o-", ms=3, color=color)
            if r["horizon"]:
                t = range(1, len(r["selection"]) + 1)
                axes[2].plot(t, [v[3] for v in r["selection"]], color=color)
                axes[3].plot(t, [v[2] for v in r["selection"]], color=color)
                for ax in axes[2:]:
                    ax.axvline(r["horizon"], color=color, ls="--", lw=0.8)
        axes[1].axhline(0, color="k", lw=0.6)
    parts_table = markdown_table(["model", "step"] + list(PARTS), rows)
    influence_table = markdown_table(["model", "step", "near third", "middle third", "far third"], influence_rows)
    erased_table = markdown_table(
        ["model", "near third", "middle third", "far third", "near, marker erased", "middle, erased", "far, erased"],
        [[MODELS[r["model"]][0]] + [f"{v:.2f}" for v in thirds(r["recall_by_position"]["marked"])
                                     + thirds(r["recall_by_position"]["unmarked"])] for r in measured])
    md = os.path.join(results_dir, "pathfinder_selection.md")
    with open(md, "w") as f:
        f.write(f"# Pathfinder: which paths do the models select, and how far does the marker reach?\n\n"
                f"Produced by:\n\n```\n{command}\n```\n\n{__doc__.split(chr(10) + chr(10))[0]}\n\n"
                f"## Fraction of each part predicted positive\n\n{parts_table}\n\n"
                f"## Marker influence along the target\n\nMean over the target's pixels of the predicted probability "
                f"minus the probability predicted for the same image without its marker dot, per third of the "
                f"target counted from the marker.\n\n{influence_table}\n\n"
                f"## At the horizon: the target predicted positive, with its marker and with the marker erased\n\n"
                f"Each image and its unmarked copy in one batch.\n\n{erased_table}\n\n"
                f"![selection](pathfinder_selection.png)\n")
    print(f"wrote {md}\n{parts_table}\n\n{influence_table}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["crbp", "bptt", "cbptt", "rbp", "cnn"], choices=list(MODELS))
    p.add_argument("--length", type=int, default=14)
    p.add_argument("--count", type=int, default=64, help="test images")
    p.add_argument("--report-only", action="store_true", help="tables and plot from the committed measurements")
    p.add_argument("--results", default=RESULTS_DIR)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    setting = Setting(args.results, os.environ.get("CRBP_PATHFINDER_DIR", ""))
    found = load_experiment(EXPERIMENT, args.results)
    measured = []
    for name in args.models:
        path = results_path(args.results, EXPERIMENT, name, args.length)
        if not args.report_only:
            weights = os.path.join(experiment_dir(args.results, EXPERIMENT), name, "seed0_model.pth")
            if 0 not in found.get(name, {}) or not os.path.exists(weights):
                print(f"skipping {name}: no seed-0 result and weights ({weights})")
                continue
            with open(path, "w") as f:
                json.dump(measure_model(name, found[name], weights, args.length, args.count, setting), f)
        if os.path.exists(path):
            with open(path) as f:
                measured.append(json.load(f))
    if not measured:
        raise SystemExit("nothing measured: run the experiment first (python -m benchmarks.pathfinder.experiment)")
    write_report(measured, args.results)


if __name__ == "__main__":
    main()

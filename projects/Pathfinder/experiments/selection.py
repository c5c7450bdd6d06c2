"""Which paths does a trained Pathfinder model select, and how far along the contour does the
marker decide? Regenerates test contours with their parts (the target split into thirds counted
from the marker, the distractors as long as the target, the shorter distractors, the background)
and, for every seed's weights of each model, reports after each step up to the training horizon
the fraction of each part predicted positive, and the marker's influence per paddle position along
the target: the predicted probability minus the one predicted for the same image with the marker
dot erased (both in one batch, so that the cell's batch statistics are the same). A model that
traces carries the marker's influence along the whole target and fills the target in from the
marker over the steps; a model that segments long paths and only looks near the marker has an
influence that dies a few paddles from it.

    python -m experiments.selection --models crbp bptt cbptt rbp cnn --length 14
    python -m experiments.selection --report-only ...     # from the committed measurements
    python -m experiments.selection --models crbp --checkpoints SCRATCH   # over training
    python -m experiments.selection --models crbp --length 18 --measure-only   # JSON only, report kept

--checkpoints measures, at the horizon, every checkpoint that the experiment's runs left in its
scratch folder (python -m experiments.experiment --scratch SCRATCH): does the marker
reach further as training goes on?

Writes projects/Pathfinder/results/experiment/<model>/selection_L<length>_seed<k>.json (and
selection_L<length>_seed<k>_training.json with --checkpoints),
projects/Pathfinder/results/pathfinder_selection.md and .png (needs the runs' weights:
python -m experiments.experiment).
"""
import argparse
import glob
import json
import os
import re
from typing import Dict, List

import numpy as np
import torch

from crbp_detectron.checkpoint import atomic_write
from pathfinder.generator.generator import generate_sample
from crbp_detectron.data.strokes import _point_segment_distance, stroke_field
from pathfinder.data import generator_config, split_seed, test_name, test_tensors
from crbp_detectron.utils.plotting import saved_panels
from crbp_detectron.utils.tables import markdown_table

from .equilibrium import trained_model
from .experiment import CONTINUES, DEFAULT_MODELS, EXPERIMENT, FEED_FORWARD, MODELS, first_run
from .report import mean_std, model_color
from .runs import RESULTS_DIR, experiment_dir, load_experiment

PARTS = ("target, near third", "target, middle third", "target, far third", "long distractors",
         "short distractors", "background")


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
    seed = split_seed(cfg, "test", length)
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
def measure(model, images: torch.Tensor, contours: Dict, steps: int, length: int) -> Dict[str, list]:
    """Per step (one 'step' for a feed-forward model), for the test images run in one batch with
    their unmarked copies (the cell's BatchNorm normalises with batch statistics: both copies see
    the same, so a difference between them is the marker's alone): the fraction of every part
    predicted positive, and per paddle position along the target, the recall with and without the
    marker and the marker's influence, the mean of p(image) - p(image without its marker)."""
    both = torch.cat([images, contours["unmarked"]])
    outputs = [model.logits(both)] if model.recurrence is None else model.step_outputs(both, steps)
    order, out = contours["order"], {"selection": [], "influence": [], "recall_marked": [], "recall_unmarked": []}
    for logits in outputs:
        marked, unmarked = logits.split(len(images))
        out["selection"].append([round(v, 4) for v in recall_per_part(marked > 0, contours["parts"])])
        out["influence"].append(per_position((torch.sigmoid(marked) - torch.sigmoid(unmarked))[:, 0].numpy(),
                                             order, length))
        out["recall_marked"].append(per_position((marked > 0)[:, 0].numpy(), order, length))
        out["recall_unmarked"].append(per_position((unmarked > 0)[:, 0].numpy(), order, length))
    return out


def results_path(results_dir: str, name: str, length: int, seed: int) -> str:
    return os.path.join(experiment_dir(results_dir, EXPERIMENT), name, f"selection_L{length}_seed{seed}.json")


def prepare_run(result: Dict, weights: str, length: int, count: int, data_root: str = ""):
    """(the trained run's model with its weights, the first `count` test images of `length`
    paddles, their contour parts): what measure_run and measure_training measure on."""
    model, cfg = trained_model(result, weights, data_root)
    images, _ = test_tensors(cfg, test_name(length), count)
    return model, images, contour_parts(cfg, length, len(images), images)


def measure_run(name: str, result: Dict, model, images: torch.Tensor, contours: Dict, length: int) -> Dict:
    """The measurements of one trained run (its results file, its prepared model and test images)."""
    horizon = result.get("steps") if name not in FEED_FORWARD else None
    out = measure(model, images, contours, horizon or 1, length)
    return {"model": name, "length": length, "count": len(images), "horizon": horizon, **out}


def checkpoints_of(scratch: str, name: str, seed: int, before: int = 0) -> List[tuple]:
    """[(iterations done, path)] of the periodic checkpoints of one run in the experiment's scratch;
    `before`: the iterations its starting weights already had (iterations_before)."""
    found = glob.glob(os.path.join(scratch, EXPERIMENT, name, f"seed{seed}", "model_*.pth"))
    numbered = [(before + int(m.group(1)) + 1, f) for f in found if (m := re.search(r"model_(\d+)\.pth$", f))]
    return sorted(numbered)


def iterations_before(name: str, seed: int, found: Dict[str, Dict]) -> int:
    """Training iterations the run's starting weights already had: those of the runs it continues
    (experiment.CONTINUES), so that a continued run's checkpoints count from the first run's start."""
    if name not in CONTINUES:
        return 0
    source = CONTINUES[name]
    if seed not in found.get(source, {}):
        raise SystemExit(f"{name} seed {seed} continues {source} seed {seed}, whose results are missing")
    return found[source][seed]["train"]["iterations"] + iterations_before(source, seed, found)


def measure_training(name: str, result: Dict, model, images: torch.Tensor, contours: Dict, checkpoints: List[tuple],
                     length: int) -> Dict:
    """At the horizon, for each checkpoint of one run (loaded into `model` in turn): the fraction of
    each part predicted positive and the marker's influence per paddle position."""
    if name in FEED_FORWARD:
        raise ValueError(f"{name} has no steps: measure recurrent models over training")
    horizon = result["steps"]
    out = {"model": name, "length": length, "count": len(images), "horizon": horizon,
           "iterations": [], "selection": [], "influence": []}
    for iterations, path in checkpoints:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
        at_horizon = measure(model.eval(), images, contours, horizon, length)
        out["iterations"].append(iterations)
        out["selection"].append(at_horizon["selection"][-1])
        out["influence"].append(at_horizon["influence"][-1])
    return out


def shown_steps(horizon) -> List[int]:
    return sorted({t for t in (4, horizon // 4, horizon // 2, horizon) if 1 <= t <= horizon}) if horizon else [1]


def thirds(values: List[float]) -> List[float]:
    """Means of per-position values over the near, middle and far thirds of the positions."""
    length = len(values)
    return [float(np.nanmean([v for k, v in enumerate(values) if min(k * 3 // length, 2) == j])) for j in range(3)]


def over_seeds(seeds: List[Dict], value) -> np.ndarray:
    """value(measurement) for every seed, stacked: [seeds, ...]."""
    return np.array([value(r) for r in seeds], dtype=float)


def cells(values: np.ndarray, signed: bool = False) -> List[str]:
    """'mean ± std' over seeds (axis 0) per column; `signed` shows the sign of positive means."""
    out = []
    for column in values.T:
        mean, std = mean_std(list(column))
        out.append(f"{mean:{'+' if signed else ''}.2f} ± {std:.2f}")
    return out


def checkpoints_measured(runs: List[Dict]):
    """(iterations, at) for each checkpoint every seed's over-training measurement has, in order;
    at(run, key) is that run's value of `key` ("influence", "selection") at the checkpoint."""
    for it in sorted(set.intersection(*(set(r["iterations"]) for r in runs))):
        yield it, lambda r, key, it=it: r[key][r["iterations"].index(it)]


def training_rows(training: Dict[str, List[Dict]]) -> List[list]:
    """Rows of the over-training table: per model and checkpoint (those every seed has), the
    influence per third and the far third and long distractors predicted positive at the horizon."""
    rows = []
    for name, runs in training.items():
        label = f"{MODELS[name][0]} ({len(runs)} seeds)"
        for it, at in checkpoints_measured(runs):
            influence = over_seeds(runs, lambda r: thirds(at(r, "influence")))
            picked = over_seeds(runs, lambda r: [at(r, "selection")[2], at(r, "selection")[3]])
            rows.append([label, it] + cells(influence, True) + cells(picked))
    return rows


def lineages(names) -> Dict[str, List[str]]:
    """{first run: [it, the runs that continue it, ...]} of the given models (experiment.CONTINUES)."""
    out: Dict[str, List[str]] = {}
    for name in names:
        out.setdefault(first_run(name), []).append(name)
    return out


TRAINING_POSITIONS = (1, 2, 4, 7, 10, 13)  # paddle positions from the marker drawn over training


def plot_training(training: Dict[str, List[Dict]], png: str, length: int, count: int):
    """Per model (with the runs that continue it on the same axes): the marker's influence at the
    horizon at a few paddle positions against the iterations trained, mean over seeds."""
    groups = lineages(training)
    title = f"marker influence over training, {count} test contours of {length} paddles, mean over seeds"
    with saved_panels(png, title, [("iterations trained", "marker influence at the horizon")] * len(groups)) as axes:
        for ax, (root, names) in zip(axes, groups.items()):
            points = {}  # iterations: influence per position, mean over seeds
            for name in names:
                for it, at in checkpoints_measured(training[name]):
                    points[it] = over_seeds(training[name], lambda r: at(r, "influence")).mean(0)
            iterations = sorted(points)
            for name in names:  # a continued run restarts its schedule after the last point before it
                earlier = [it for it in iterations if it < min(training[name][0]["iterations"])]
                if name != root and earlier:
                    ax.axvline(earlier[-1], color="k", ls=":", lw=0.8)
            for i, position in enumerate(p for p in TRAINING_POSITIONS if p <= length):
                ax.plot(iterations, [points[it][position - 1] for it in iterations], "o-", ms=3,
                        color=model_color(i, len(TRAINING_POSITIONS)), label=f"paddle {position}")
            ax.axhline(0, color="k", lw=0.6)
            cycles = f", then {len(names) - 1} more cycle(s) (dotted: restarts)" if len(names) > 1 else ""
            ax.set_title(MODELS[root][0] + cycles, fontsize=7)


def write_report(measured: Dict[str, List[Dict]], results_dir: str, training: Dict[str, List[Dict]] = None):
    """measured: {model: [measurement per seed]}; training: {model: [over-training measurement per seed]}."""
    first = next(iter(measured.values()))[0]
    length, count = first["length"], first["count"]
    seeds = sorted({len(v) for v in measured.values()})
    command = f"python -m experiments.selection --models {' '.join(measured)} --length {length} --count {count}"
    if training:
        command += (f"\npython -m experiments.selection --models {' '.join(training)} --length {length} "
                    f"--count {count} --checkpoints SCRATCH   # SCRATCH: the experiment's --scratch")
    parts_rows, influence_rows, erased_rows = [], [], []
    for name, runs in measured.items():
        label, horizon = f"{MODELS[name][0]} ({len(runs)} seeds)", runs[0]["horizon"]
        for t in shown_steps(horizon):
            step = t if horizon else "–"
            parts_rows.append([label, step] + cells(over_seeds(runs, lambda r: r["selection"][t - 1])))
            influence_rows.append([label, step] + cells(over_seeds(runs, lambda r: thirds(r["influence"][t - 1])), True))
        by_position = over_seeds(runs, lambda r: thirds(r["recall_marked"][-1]) + thirds(r["recall_unmarked"][-1]))
        erased_rows.append([label] + cells(by_position))
    png = os.path.join(results_dir, "pathfinder_selection.png")
    title = f"{count} test contours of {length} paddles, mean over seeds"
    panels = [("paddle position from the marker", "predicted positive at the horizon (dashed: marker erased)"),
              ("paddle position from the marker", "marker influence at the horizon: p - p(no marker)"),
              ("step", "long distractors predicted positive"), ("step", "far third of the target predicted positive")]
    with saved_panels(png, title, panels) as axes:
        for i, (name, runs) in enumerate(measured.items()):
            color, horizon = model_color(i, len(measured)), runs[0]["horizon"]
            position = range(length)
            mean = lambda value: over_seeds(runs, value).mean(0)  # noqa: E731
            axes[0].plot(position, mean(lambda r: r["recall_marked"][-1]), "o-", ms=3, color=color, label=MODELS[name][0])
            axes[0].plot(position, mean(lambda r: r["recall_unmarked"][-1]), "--", color=color)
            influence = over_seeds(runs, lambda r: r["influence"][-1])
            axes[1].errorbar(position, influence.mean(0), yerr=influence.std(0, ddof=1) if len(runs) > 1 else None,
                             fmt="o-", ms=3, capsize=2, color=color)
            if horizon:
                t = range(1, horizon + 1)
                axes[2].plot(t, mean(lambda r: [v[3] for v in r["selection"]]), color=color)
                axes[3].plot(t, mean(lambda r: [v[2] for v in r["selection"]]), color=color)
                for ax in axes[2:]:
                    ax.axvline(horizon, color=color, ls="--", lw=0.8)
        axes[1].axhline(0, color="k", lw=0.6)
    parts_table = markdown_table(["model", "step"] + list(PARTS), parts_rows)
    influence_table = markdown_table(["model", "step", "near third", "middle third", "far third"], influence_rows)
    erased_table = markdown_table(["model", "near third", "middle third", "far third", "near, marker erased",
                                   "middle, erased", "far, erased"], erased_rows)
    training_section = ""
    if training:
        plot_training(training, os.path.join(results_dir, "pathfinder_selection_training.png"), length, count)
        training_table = markdown_table(["model", "iterations", "influence, near third", "middle third", "far third",
                                         "far third predicted positive", "long distractors predicted positive"],
                                        training_rows(training))
        training_section = (
            f"## Over training, at the horizon\n\nThe runs' periodic checkpoints (measured with `--checkpoints "
            f"SCRATCH`, the experiment's scratch folder): does the marker reach further as training goes on? "
            f"A run that continues another counts its iterations from the first run's start."
            f"\n\n{training_table}\n\n![over training](pathfinder_selection_training.png)\n\n")
    md = os.path.join(results_dir, "pathfinder_selection.md")
    with open(md, "w") as f:
        f.write(f"# Pathfinder: which paths do the models select, and how far does the marker reach?\n\n"
                f"Produced by:\n\n```\n{command}\n```\n\n{__doc__.split(chr(10) + chr(10))[0]}\n\n"
                f"Every number is the mean ± std over the seeds' weights ({', '.join(map(str, seeds))} seeds).\n\n"
                f"## Fraction of each part predicted positive\n\n{parts_table}\n\n"
                f"## Marker influence along the target\n\nMean over the target's pixels of the predicted probability "
                f"minus the probability predicted for the same image without its marker dot, per third of the "
                f"target counted from the marker.\n\n{influence_table}\n\n"
                f"## At the horizon: the target predicted positive, with its marker and with the marker erased\n\n"
                f"Mean over the paddle positions of each third; each image and its unmarked copy in one batch."
                f"\n\n{erased_table}\n\n{training_section}![selection](pathfinder_selection.png)\n")
    print(f"wrote {md}\n{parts_table}\n\n{influence_table}\n\n{erased_table}\n\n{training_section}")


def store(path: str, measurement: Dict):
    atomic_write(path, lambda f: json.dump(measurement, f), mode="w")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS))
    p.add_argument("--length", type=int, default=14)
    p.add_argument("--count", type=int, default=64, help="test images")
    p.add_argument("--report-only", action="store_true", help="tables and plot from the committed measurements")
    p.add_argument("--results", default=RESULTS_DIR)
    p.add_argument("--measure-only", action="store_true",
                   help="store the measurements beside the runs and leave the report (another length's) as it is")
    p.add_argument("--checkpoints", metavar="SCRATCH", default="",
                   help="also measure every checkpoint of the runs in the experiment's scratch folder")
    args = p.parse_args(argv)
    if args.checkpoints and set(args.models) & set(FEED_FORWARD):
        p.error(f"--checkpoints measures recurrent models at their horizon; {sorted(set(args.models) & set(FEED_FORWARD))} "
                "have no steps: leave them out of --models")
    torch.set_num_threads(1)
    data_root = os.environ.get("CRBP_PATHFINDER_DIR", "")
    found = load_experiment(EXPERIMENT, args.results)
    measured, training = {}, {}
    for name in args.models:
        for seed, result in sorted(found.get(name, {}).items()):
            path = results_path(args.results, name, args.length, seed)
            weights = os.path.join(experiment_dir(args.results, EXPERIMENT), name, f"seed{seed}_model.pth")
            over_training = path[:-len(".json")] + "_training.json"
            if not args.report_only and os.path.exists(weights):
                checkpoints = []
                if args.checkpoints:
                    checkpoints = checkpoints_of(args.checkpoints, name, seed, iterations_before(name, seed, found))
                    if not checkpoints:
                        raise SystemExit(f"no checkpoints of {name} seed {seed} under {args.checkpoints} "
                                         f"({EXPERIMENT}/{name}/seed{seed}/model_*.pth)")
                model, images, contours = prepare_run(result, weights, args.length, args.count, data_root)
                store(path, measure_run(name, result, model, images, contours, args.length))
                print(f"measured {name} seed {seed}", flush=True)
                if checkpoints:  # after the final weights: this loads each checkpoint into the model
                    out = measure_training(name, result, model, images, contours, checkpoints, args.length)
                    store(over_training, out)
                    print(f"measured {name} seed {seed} over training: iterations {out['iterations']}", flush=True)
            for stored, into in ((path, measured), (over_training, training)):
                if os.path.exists(stored):
                    with open(stored) as f:
                        into.setdefault(name, []).append(json.load(f))
    if not measured:
        raise SystemExit("nothing measured: the models need their weights (python -m experiments.experiment)")
    if args.report_only or not args.measure_only:
        write_report(measured, args.results, training)


if __name__ == "__main__":
    main()

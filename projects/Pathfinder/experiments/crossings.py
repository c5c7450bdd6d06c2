"""Does the tracer Pathfinder trained follow its contour through a crossing? The trained Pathfinder
models, without any further training, on the contour-grouping benchmark's contours
(crbp_detectron.data.contours) drawn as Pathfinder draws its paths, and a proximity predictor on
both data sets.

Pathfinder's paths never cross: every stroke of another path keeps `clearance` blank pixels from
the target. The contour benchmark's contours do cross (the later one keeps the same clearance by
losing the dash there), so near a crossing another contour's dash is as close as the next dash of
the contour itself. A rule that groups by proximity alone (the marker's ink and whatever ink lies
within a gap of it, again and again) then follows both.

The contours are drawn at half scale on Pathfinder's 64 px canvas, where the benchmark's dashes
(6 px, 5 px gaps at 128 px) become Pathfinder's paddles (3 px, 2.5 px gaps), with the models'
training stroke width, no background, and the marker dot at the contour's first end; the label is
the contour with its marker. For each contour of the split as the target: the pooled IoU over the
contours that cross another and over those that cross none, the fraction of the target's pixels
predicted, and of the crossing contours' and the other contours' pixels.

The proximity predictor ('flood, radius r'): the connected component of the ink dilated by a disc of
radius r that holds the marker, intersected with the ink, for r from 0.5 px (ink that touches) up:
the best r is the most that grouping by nearness alone can do on each data set.

Trained on crossings (--train ITERATIONS): each model continued from its experiment weights (same
seed) for ITERATIONS more iterations of its own recipe (one cycle, its learning rate, warm-up and
schedule) on every contour of the contour data's train split drawn the same way
(PATHFINDER.DATA.TRAIN_FOLDERS), then measured again on the val split's contours and on Pathfinder
(what the contours cost it). Validation during that training is Pathfinder's validation set.
--cycles K gives each of them K warm-restart cycles of ITERATIONS (<model>_contours<N>x<k>, each
from the previous cycle's weights, fresh Adam, the same warm-up and cosine schedule, as the
experiment's further cycles; graph-free steps compiled past the first cycle). --cue box draws the
contours, for training and measuring, with the target's box in place of the marker (runs
<model>_boxed<N>[x<k>]; the report's section "The box as the cue"); --from-scratch starts the first
cycle from random weights instead (<model>_..._from_scratch: does the tracer need Pathfinder first?).

    python -m experiments.crossings                        # in projects/Pathfinder; needs the runs' weights
    python -m experiments.crossings --train 400 --scratch SCRATCH   # then measures every run again
    python -m experiments.crossings --train 1000 --cycles 2 --scratch SCRATCH   # a second cycle after the first
    python -m experiments.crossings --train 1000 --cycles 2 --cue box --scratch SCRATCH   # the box as the cue
    python -m experiments.crossings --new-only             # measures only the runs without a JSON
    python -m experiments.crossings --picture-only         # redraws the picture from the weights
    python -m experiments.crossings --report-only          # from the committed JSON

Writes projects/Pathfinder/results/crossings/<model>_seed<k>.json (and <model>_{contours,boxed}<N>[x<k>]_seed<k>.json),
proximity[_box].json, the continued runs under results/crossings_trained/, and
projects/Pathfinder/results/pathfinder_crossings.md, .png and _box.png.
"""
import argparse
import json
import os
import shlex
import sys
import textwrap
from typing import Dict, List, NamedTuple, Optional, Sequence

import cv2
import numpy as np
import torch

from crbp_detectron.checkpoint import atomic_write
from crbp_detectron.data.contours import ContourParams, contour_strokes, crossing_pairs
from crbp_detectron.data.strokes import Strokes
from crbp_detectron.utils.plotting import GROUPING_LEGEND, grouping_colours, headless_pyplot
from crbp_detectron.utils.tables import markdown_table
from pathfinder.data import generator_config, split_seed
from pathfinder.evaluation import PixelCounts
from pathfinder.generator.generator import PathfinderConfig, generate_sample

from .equilibrium import trained_model
from .experiment import EXPERIMENT, MODEL_OPTS, MODELS, ONE_COMMAND, Setting
from .report import mean_std
from .runs import RESULTS_DIR, Run, execute_all, experiment_dir, load_experiment, project_relative

FOLDER = "crossings"
TRAINED = "crossings_trained"  # the runs continued on the contours (an experiment folder of results/)
TRAINED_MODELS = ("crbp_continued_twice_steps64", "bptt8_continued_twice", "cnn_continued_twice")
GRAPH_FREE = ("crbp_continued_twice_steps64", "rbp_continued_twice")  # compiled forward past the first cycle
# What tells a model its target: "marker", Pathfinder's dot at the target's first end (an oracle);
# "box", the target's box alone (what a mask head is given): no dot, and every pixel outside the box
# at BOX_DIM of its intensity. Runs trained on a cue are named <model>_<RUN_PREFIX[cue]><N>[x<k>].
CUES = ("marker", "box")
RUN_PREFIX = {"marker": "contours", "box": "boxed"}
BOX_DIM = 0.4
BOX_SECTION = f"""\
The marker is an oracle: a panoptic model's mask head is given a box, not a start. With the box as
the only cue (--cue box: no dot; every pixel outside the target's box at {BOX_DIM} of its intensity) the
task stays a grouping task: the target lies wholly inside its box and a contour that crosses it
leaves the box, so the target is the ink inside the box that is not connected, along a contour, to
ink outside it. Taking all ink inside the box does not group (about half the IoU on crossing
contours); removing the contours that leave the box (ground truth) is the most the cue allows (it
cannot tell a contour lying wholly inside the box); the flood from the ink outside the box is
grouping by nearness, which at a crossing removes the target too. The models are continued from
their experiment weights as with the marker (--train N --cycles K --cue box), so they start as
tracers of a dot and must learn to trace from the box's outside inwards and keep the rest; the rows
"from scratch" (--from-scratch) start from random weights instead."""
DEFAULT_MODELS = ("crbp_continued_twice_steps64", "rbp_continued_twice", "bptt8_continued_twice", "bptt4_continued_twice",
                  "bptt_continued_twice", "cnn_continued_twice")
RADII = (0.5, 1.0, 1.5, 2.0, 2.5)  # px: ink pixels up to twice this apart are grouped
GROUPS = ("crossing", "single")
PATHFINDER_LENGTHS = (14, 18)
PICTURE_SAMPLES = 6
PICTURE_RADIUS = 1.5


# ----------------------------------------------------------------------------- the data
def pathfinder_drawing(strokes: Strokes, count: int, target: int, gen: PathfinderConfig, scale: float,
                       cue: str = "marker") -> Dict:
    """The `count` contours of `strokes` (path ids 0 .. count-1) scaled by `scale` onto the
    generator's canvas with its stroke radius, and the target's cue (CUES): its marker dot at its
    first end, or its box (every pixel outside it dimmed to BOX_DIM).

    Returns {"image": uint8 [S, S], "masks": bool [count, S, S] (the target's with its marker),
    "marker": (x, y) or None, "box": (x0, y0, x1, y1) of the target's pixels, inclusive, or None}:
    with the marker, what generate_sample returns for a Pathfinder sample."""
    if cue not in CUES:
        raise ValueError(f"cue must be one of {CUES}, got {cue!r}")
    canvas = Strokes(gen.size, pad=max(gen.stroke_radius, gen.marker_radius) + 1.0)
    for path in range(count):
        own = strokes.path == path
        canvas.add(strokes.a[own] * scale, strokes.b[own] * scale, gen.stroke_radius, path, 0)
    marker, box = None, None
    if cue == "marker":
        marker = strokes.a[np.flatnonzero(strokes.path == target)[0]] * scale
        canvas.add(marker, marker, gen.marker_radius, target, -1)
    coverage = np.stack([np.clip(0.5 - canvas.fields[p], 0.0, 1.0) for p in range(count)])
    image, masks = coverage.max(0), coverage >= 0.5
    if cue == "box":
        ys, xs = np.nonzero(masks[target])
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        image = np.where(inside_box(box, image.shape), image, BOX_DIM * image)
    return {"image": np.round(image * 255).astype(np.uint8), "masks": masks, "marker": marker, "box": box}


def inside_box(box, shape) -> np.ndarray:
    """bool `shape`: the pixels of the inclusive box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    inside = np.zeros(shape, bool)
    inside[y0:y1 + 1, x0:x1 + 1] = True
    return inside


def contour_samples(gen: PathfinderConfig, split: str = "val", params: ContourParams = ContourParams(),
                    count: int = 0, cue: str = "marker") -> List[Dict]:
    """Every contour of the first `count` images (0: all) of the contour data's `split` as a
    Pathfinder target with its `cue`. Each: {"image", "masks", "marker", "box", "target", "crossing":
    indices of the contours crossing the target, "group", "key": "image/contour"}."""
    images = count or getattr(params, f"{split}_images")
    samples = []
    for index in range(images):
        strokes, paths = contour_strokes(split, index, params)
        crosses = {i: set() for i in range(len(paths))}
        for i, j in crossing_pairs(paths):
            crosses[i].add(j)
            crosses[j].add(i)
        for target in range(len(paths)):
            drawn = pathfinder_drawing(strokes, len(paths), target, gen, gen.size / params.image_size, cue)
            samples.append(dict(drawn, target=target, crossing=sorted(crosses[target]),
                                group="crossing" if crosses[target] else "single", key=f"{index}/{target}"))
    return samples


def write_training_set(cfg, folder: str, split: str = "train", images: int = 0, cue: str = "marker") -> str:
    """Every contour of the first `images` (0: all) of the contour data's `split` drawn as a
    Pathfinder target with its `cue` (contour_samples), written as a prepared set for
    PATHFINDER.DATA.TRAIN_FOLDERS, unless `folder` holds it already."""
    from pathfinder.generator import load_manifest, write_prepared

    gen = generator_config(cfg, PATHFINDER_LENGTHS[0], "train")
    source = {"contours": split, "images": images, "params": ContourParams().__dict__,
              "scale": gen.size / ContourParams().image_size, **({"cue": cue, "box_dim": BOX_DIM} if cue != "marker" else {})}
    manifest = load_manifest(folder)
    if manifest is None or manifest.get("source") != source or manifest["config"] != gen.to_dict():
        samples = contour_samples(gen, split, count=images, cue=cue)
        write_prepared(folder, gen, np.stack([s["image"] for s in samples]),
                       np.stack([s["masks"][s["target"]] for s in samples]), source)
    return folder


SCRATCH_SUFFIX = "_from_scratch"


class RunName(NamedTuple):
    model: str  # the experiment's model (its config and recipe; its weights unless scratch)
    cue: Optional[str]  # None: the model as the experiment trained it
    iterations: int  # per cycle on the contours
    cycles: int
    scratch: bool  # trained on the contours from random weights


def trained_name(model: str, iterations: int, cycle: int = 1, cue: str = "marker", scratch: bool = False) -> str:
    """The run of `model` trained on the contours with `cue` for `cycle` warm-restart cycles of
    `iterations`, continued from its experiment weights or (`scratch`) from random ones."""
    return f"{model}_{RUN_PREFIX[cue]}{iterations}" + (f"x{cycle}" if cycle > 1 else "") + (SCRATCH_SUFFIX * scratch)


def parse_name(name: str) -> RunName:
    """What a run's name (trained_name, or an experiment model's) says of it."""
    scratch = name.endswith(SCRATCH_SUFFIX)
    stem = name[:-len(SCRATCH_SUFFIX)] if scratch else name
    for cue, prefix in RUN_PREFIX.items():
        model, found, tail = stem.partition("_" + prefix)
        if found:
            iterations, _, cycles = tail.partition("x")
            return RunName(model, cue, int(iterations), int(cycles or 1), scratch)
    return RunName(name, None, 0, 0, False)


def contour_iterations(name: str) -> int:
    """Iterations a run was trained on the contours in all (0: a model as the experiment trained it)."""
    run = parse_name(name)
    return run.iterations * run.cycles


def training_runs(models: Sequence[str], seeds: Sequence[int], iterations: int, folder: str, results_dir: str,
                  extra_opts: Sequence = (), cycle: int = 1, cue: str = "marker", scratch: bool = False):
    """One run per model and seed: its one-command config, one cycle of `iterations` on the set in
    `folder` (drawn with `cue`), continued from its experiment weights (`cycle` 1; `scratch`: from
    random weights) or from its previous cycle (later cycles); graph-free steps compiled where a
    model has them, as the experiment's further cycles run, except in the first cycle with the
    marker (those runs were made before); `extra_opts` last: e.g. smaller evaluation sets for a
    smoke run."""
    runs = []
    for name in models:
        config, opts = ONE_COMMAND[name]
        start = (os.path.join(experiment_dir(results_dir, EXPERIMENT), name) if cycle == 1 else
                 os.path.join(experiment_dir(results_dir, TRAINED), trained_name(name, iterations, cycle - 1, cue, scratch)))
        later = (["MODEL.CRBP.FORWARD.COMPILE", True]
                 if name in GRAPH_FREE and (cycle > 1 or cue != "marker" or scratch) else [])
        for seed in seeds:
            weights = "" if cycle == 1 and scratch else os.path.join(start, f"seed{seed}_model.pth")
            if weights and not os.path.exists(weights):
                how = (f"python -m experiments.experiment --models {name} --seeds {seed}" if cycle == 1 else
                       f"python -m experiments.crossings --train {iterations} --cycles {cycle - 1} --cue {cue} "
                       f"{'--from-scratch ' * scratch}--seeds {seed}")
                raise FileNotFoundError(f"{trained_name(name, iterations, cycle, cue, scratch)} seed {seed} is continued "
                                        f"from the weights {weights}, which are missing: {how}")
            runs.append(Run(TRAINED, trained_name(name, iterations, cycle, cue, scratch), seed, config,
                            list(MODEL_OPTS.get(name, [])) + list(opts) + later + [
                "PATHFINDER.CYCLES", 1, "SOLVER.MAX_ITER", iterations,
                "MODEL.WEIGHTS", project_relative(weights) if weights else "",
                "PATHFINDER.DATA.TRAIN_FOLDERS", repr([os.path.abspath(folder)]),
                "PATHFINDER.DATA.TEST_LENGTHS", repr(list(PATHFINDER_LENGTHS)),
                "PATHFINDER.EVAL.SWEEP_LENGTHS", repr([PATHFINDER_LENGTHS[0]])] + list(extra_opts), results_dir=results_dir))
    return runs


def pathfinder_samples(cfg, length: int, count: int) -> List[Dict]:
    """The first `count` test samples of `length` paddles, regenerated with their marker (the
    target is path 0 and crosses nothing)."""
    gen = generator_config(cfg, length)
    seed = split_seed(cfg, "test", length)
    out = []
    for n in range(count):
        s = generate_sample(gen, seed, n, return_parts=True)
        masks = s["coverage"] >= 0.5
        out.append({"image": s["image"], "masks": masks, "marker": s["markers"][0], "target": 0, "crossing": [],
                    "group": f"L{length}", "key": f"{length}/{n}"})
    return out


# ----------------------------------------------------------------------------- the predictors
def proximity_flood(image: np.ndarray, marker, radius: float) -> np.ndarray:
    """The ink (pixels >= half intensity) connected to the marker when every ink pixel is grown by
    a disc of `radius` px (pixel centres within it): grouping by nearness alone."""
    ink = image >= 128
    distance = cv2.distanceTransform((~ink).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    _, labels = cv2.connectedComponents((distance <= radius).astype(np.uint8), connectivity=8)
    x, y = (int(v) for v in np.floor(marker))
    return (labels == labels[y, x]) & ink


def box_ink(image: np.ndarray, box):
    """(inside the box, ink) of a box-cue drawing: pixels >= half intensity, outside the box half of
    the dimmed intensity."""
    inside = inside_box(box, image.shape)
    return inside, image >= np.where(inside, 128, round(128 * BOX_DIM))


def box_flood(image: np.ndarray, box, radius: float) -> np.ndarray:
    """The ink inside the box that is not connected to ink outside it when every ink pixel is grown
    by a disc of `radius` px: grouping by nearness from the box's cue (other contours leave the box,
    the target does not). radius None: all ink inside the box (no grouping)."""
    inside, ink = box_ink(image, box)
    if radius is None:
        return ink & inside
    distance = cv2.distanceTransform((~ink).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    _, labels = cv2.connectedComponents((distance <= radius).astype(np.uint8), connectivity=8)
    leaving = np.unique(labels[ink & ~inside])
    return ink & inside & ~np.isin(labels, leaving[leaving > 0])


def box_grouping_bound(sample: Dict) -> np.ndarray:
    """A perfect grouping of the box cue: the ink inside the box less every contour that leaves it
    (the ground truth's contours; one that lies wholly inside the box stays, as no cue tells it apart)."""
    inside, ink = box_ink(sample["image"], sample["box"])
    leaving = [m for m in sample["masks"] if (m & ~inside).any()]
    return ink & inside & ~np.any(leaving, axis=0) if leaving else ink & inside


@torch.no_grad()
def model_predictions(model, samples: Sequence[Dict], batch_size: int) -> np.ndarray:
    """bool [N, S, S]: logit > 0, in batches as the evaluator batches (the cell's BatchNorm uses the
    batch's statistics)."""
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).float()[:, None] / 255.0
    return torch.cat([model.logits(b) > 0 for b in images.split(batch_size)])[:, 0].numpy()


# ----------------------------------------------------------------------------- the measurement
def grouping_metrics(samples: Sequence[Dict], predicted: np.ndarray) -> Dict[str, Dict[str, float]]:
    """Per group: the pooled IoU with the target, and the mean fraction of the target's pixels,
    of the contours crossing it and of the other contours predicted ('n': samples)."""
    out = {}
    for group in sorted({s["group"] for s in samples}):
        counts, own, crossing, other = PixelCounts(), [], [], []
        for s, pred in zip(samples, predicted):
            if s["group"] != group:
                continue
            target = s["masks"][s["target"]]
            counts.add(torch.from_numpy(pred), torch.from_numpy(target))
            own.append(float((pred & target).sum() / target.sum()))
            crossers = s["masks"][s["crossing"]].any(0) & ~target
            others = np.delete(s["masks"], [s["target"]] + s["crossing"], axis=0).any(0) & ~target
            if crossers.any():
                crossing.append(float((pred & crossers).sum() / crossers.sum()))
            if others.any():
                other.append(float((pred & others).sum() / others.sum()))
        out[group] = {"n": len(own), "iou": counts.metrics()["iou"], "own": float(np.mean(own)),
                      "crossing_contours": float(np.mean(crossing)) if crossing else None,
                      "other_contours": float(np.mean(other)) if other else None}
    return out


def result_path(results_dir: str, name: str) -> str:
    return os.path.join(results_dir, FOLDER, f"{name}.json")


def write_json(path: str, data: Dict):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: json.dump(data, f, indent=1), mode="w")


def flood_predictions(samples: Sequence[Dict], radius: float) -> np.ndarray:
    """bool [N, S, S]: proximity_flood from each sample's marker, or box_flood from its box."""
    return np.stack([proximity_flood(s["image"], s["marker"], radius) if s["marker"] is not None else
                     box_flood(s["image"], s["box"], radius) for s in samples])


def measure_proximity(contours, pathfinder) -> Dict:
    """The flood at every radius on both data sets; with the box cue also all ink inside the box and
    the box's grouping bound (on the contours only: Pathfinder's samples carry the marker)."""
    out = {"radii": {str(r): {"contours": grouping_metrics(contours, flood_predictions(contours, r)),
                              "pathfinder": grouping_metrics(pathfinder, flood_predictions(pathfinder, r))}
                     for r in RADII}}
    if contours and contours[0]["box"] is not None:
        out["in_box"] = {"contours": grouping_metrics(contours, flood_predictions(contours, None))}
        out["bound"] = {"contours": grouping_metrics(contours, np.stack([box_grouping_bound(s) for s in contours]))}
    return out


# ----------------------------------------------------------------------------- the report
def proximity_name(cue: str) -> str:
    """The JSON (without .json) of the proximity predictors on the contours drawn with `cue`."""
    return "proximity" if cue == "marker" else f"proximity_{cue}"


def load(results_dir: str):
    """({model: [runs in seed order]}, {cue: its proximity results}) from the committed JSON."""
    folder = os.path.join(results_dir, FOLDER)
    runs: Dict[str, List[Dict]] = {}
    proximity = {}
    names = {proximity_name(cue) + ".json": cue for cue in CUES}
    for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not f.endswith(".json"):
            continue
        with open(os.path.join(folder, f)) as fh:
            data = json.load(fh)
        if f in names:
            proximity[names[f]] = data
        else:
            runs.setdefault(data["model"], []).append(data)
    return {m: sorted(rs, key=lambda r: r["seed"]) for m, rs in runs.items()}, proximity


def run_label(name: str) -> str:
    """The table's label of an experiment model, or of one continued on the contours."""
    run = parse_name(name)
    if run.cue is None:
        return MODELS[run.model][0]
    drawn = "contours" if run.cue == "marker" else "boxed contours"
    return MODELS[run.model][0] + (", from scratch" if run.scratch else ", then") + (
        f" {run.cycles} x {run.iterations}" if run.cycles > 1 else f" {run.iterations}") + f" iterations on {drawn}"


def _cell(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def report_rows(runs: Dict[str, List[Dict]], proximity) -> List[List[str]]:
    """One row per model (mean ± std over its seeds, the seeds listed) and per proximity predictor
    (with the box cue: all ink inside the box and the box's grouping bound first)."""
    def row(label, seeds, results):
        contours = [r["contours"] for r in results]
        pathfinder = [r.get("pathfinder", {}) for r in results]
        return [label, seeds] + [_cell([p.get(f"L{n}", {}).get("iou") for p in pathfinder])
                                 for n in PATHFINDER_LENGTHS] + [
            _cell([c[g]["iou"] for c in contours]) for g in GROUPS] + [
            _cell([c["crossing"]["own"] for c in contours]), _cell([c["crossing"]["crossing_contours"] for c in contours]),
            _cell([c["crossing"]["other_contours"] for c in contours])]

    def order(name):
        base = parse_name(name).model
        return (contour_iterations(name) > 0, DEFAULT_MODELS.index(base) if base in DEFAULT_MODELS else len(DEFAULT_MODELS),
                contour_iterations(name), name)

    rows = [row(run_label(m), ", ".join(str(r["seed"]) for r in runs[m]), runs[m]) for m in sorted(runs, key=order)]
    if "in_box" in proximity:
        rows += [row("all ink inside the box (no grouping)", "-", [proximity["in_box"]]),
                 row("the box's grouping bound (contours that leave the box removed, ground truth)", "-",
                     [proximity["bound"]])]
    rows += [row(f"flood, radius {r}", "-", [v]) for r, v in proximity["radii"].items()]
    return rows


def write_report(results_dir: str) -> str:
    """The report from the committed JSON, with the commands that measured them: one table per cue."""
    runs, proximity = load(results_dir)
    if "marker" not in proximity:
        raise SystemExit(f"nothing to report: no proximity.json in {os.path.join(results_dir, FOLDER)}")
    commands = "\n".join(c for cue in CUES if cue in proximity for c in proximity[cue]["commands"])

    def table(cue):
        n = {g: proximity[cue]["radii"][str(RADII[0])]["contours"][g]["n"] for g in GROUPS}
        of_cue = {m: r for m, r in runs.items() if (parse_name(m).cue or "marker") == cue}
        return markdown_table(
            ["predictor", "seeds"] + [f"Pathfinder IoU, {k} paddles" for k in PATHFINDER_LENGTHS] +
            [f"contours IoU, {g} ({n[g]})" for g in GROUPS] +
            ["crossing: own pixels predicted", "crossing contours' pixels predicted", "other contours' pixels predicted"],
            report_rows(of_cue, proximity[cue]))

    md = os.path.join(results_dir, "pathfinder_crossings.md")
    pictures = {cue: picture_name(cue) for cue in CUES if os.path.exists(os.path.join(results_dir, picture_name(cue)))}
    text = (f"# Pathfinder's tracers on crossing contours\n\nProduced by (in projects/Pathfinder):\n\n```\n{commands}\n```\n\n"
            f"{__doc__.split(chr(10) + chr(10) + '    python')[0]}\n\n{table('marker')}\n\n"
            + (f"![crossings]({pictures['marker']})\n" if "marker" in pictures else ""))
    if "box" in proximity:
        text += (f"\n## The box as the cue\n\n{BOX_SECTION}\n\n{table('box')}\n\n"
                 + (f"![crossings, the box as the cue]({pictures['box']})\n" if "box" in pictures else ""))
    with open(md, "w") as f:
        f.write(text)
    return md


def picture_name(cue: str) -> str:
    return "pathfinder_crossings.png" if cue == "marker" else f"pathfinder_crossings_{cue}.png"


def write_picture(path: str, samples: Sequence[Dict], columns: Dict[str, np.ndarray]):
    """The first crossing samples: the input, the label and each predictor's mask, coloured by
    whose pixels it covers."""
    plt = headless_pyplot()
    rows = [i for i, s in enumerate(samples) if s["group"] == "crossing"][:PICTURE_SAMPLES]
    given = "marker: the dot" if samples[rows[0]]["marker"] is not None else "the box: outside it dimmed"
    titles = [textwrap.fill(t, 24) for t in [f"input ({given})", "label"] + list(columns)]
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(2.1 * len(titles), 2.2 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        s = samples[i]
        grey = np.repeat(s["image"][..., None], 3, -1)
        own, every = s["masks"][s["target"]], s["masks"].any(0)
        panels = [grey, grouping_colours(grey, own, every, own)] + [grouping_colours(grey, own, every, p[i])
                                                                      for p in columns.values()]
        for c, panel in enumerate(panels):
            axes[r][c].imshow(panel, interpolation="nearest")
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(titles[c], fontsize=8)
    fig.text(0.5, 0.005, GROUPING_LEGEND.replace("the instance's", "the target's"), ha="center", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def measured_models(args) -> List[tuple]:
    """(experiment, run name, JSON name, seed, result, weights) of every run to measure: the
    experiment's models and their runs continued on the contours."""
    out = []
    for experiment, names in ((EXPERIMENT, args.models), (TRAINED, None)):
        found = load_experiment(experiment, args.results)
        for name in names if names is not None else sorted(found):
            for seed in args.seeds:
                weights = os.path.join(experiment_dir(args.results, experiment), name, f"seed{seed}_model.pth")
                if seed in found.get(name, {}) and os.path.exists(weights):
                    out.append((experiment, name, seed, found[name][seed], weights))
                elif experiment == EXPERIMENT:
                    print(f"skipping {name} seed {seed}: no result and weights ({weights})")
    return out


def drawn_samples(data: Dict, cfg, args, cue: str = "marker"):
    """(contour samples with `cue`, Pathfinder samples) as the run's config draws them, made once per
    drawing and cue."""
    gen = generator_config(cfg, PATHFINDER_LENGTHS[0])
    key = json.dumps([gen.to_dict(), cue], sort_keys=True)
    if key not in data:
        data[key] = (contour_samples(gen, args.split, count=args.images, cue=cue),
                     [s for n in PATHFINDER_LENGTHS for s in pathfinder_samples(cfg, n, args.count)])
    return data[key]


def measure_run(model, cfg, contours, pathfinder, record: Dict, results_dir: str) -> np.ndarray:
    """Writes the run's JSON (`record` and its metrics on both data sets); returns its masks on the contours."""
    batch = cfg.PATHFINDER.EVAL.BATCH_SIZE
    on_contours = model_predictions(model, contours, batch)
    result = dict(record, contours=grouping_metrics(contours, on_contours),
                  pathfinder=grouping_metrics(pathfinder, model_predictions(model, pathfinder, batch)))
    write_json(result_path(results_dir, f"{record['model']}_seed{record['seed']}"), result)
    print(record["model"], record["seed"], json.dumps(result["contours"]),
          {k: round(v["iou"], 3) for k, v in result["pathfinder"].items()}, flush=True)
    return on_contours


def record_measurement(args, contours, pathfinder, gen: PathfinderConfig, command: str, cue: str = "marker"):
    """proximity.json (proximity_<cue>.json): the proximity predictors' results on the contours drawn
    with `cue` and the commands that measured the runs (--new-only adds its command to the earlier ones)."""
    path = result_path(args.results, proximity_name(cue))
    if args.new_only and os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
        write_json(path, dict(earlier, commands=earlier["commands"] + [command]))
    else:
        write_json(path, dict(measure_proximity(contours, pathfinder), generator=gen.to_dict(), commands=[command]))


def picture_runs(names: Sequence[str]) -> set:
    """The runs drawn in the pictures: with the marker, the recipe's model as trained and after each
    training on the contours; with another cue, each model (and start) after its longest training."""
    drawn, longest = set(), {}
    for name in sorted(set(names), key=contour_iterations):
        run = parse_name(name)
        if (run.cue or "marker") != "marker":
            longest[run.model, run.cue, run.scratch] = name
        elif run.model == DEFAULT_MODELS[0]:
            drawn.add(name)
    return drawn | set(longest.values())


def picture_order(name: str):
    """Zero-shot first, then by iterations on the contours, then the table's order of models."""
    run = parse_name(name)
    return (contour_iterations(name), run.scratch,
            DEFAULT_MODELS.index(run.model) if run.model in DEFAULT_MODELS else len(DEFAULT_MODELS))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--split", default="val", help="split of the contour data measured (crbp_detectron.data.contours)")
    p.add_argument("--images", type=int, default=0, help="contour images (0: the whole split)")
    p.add_argument("--count", type=int, default=300, help="Pathfinder test samples per length")
    p.add_argument("--train", type=int, default=0, metavar="ITERATIONS",
                   help="first continue TRAINED_MODELS (--trained-models) on the train split's contours")
    p.add_argument("--cycles", type=int, default=1,
                   help="with --train: warm-restart cycles of ITERATIONS, each from the previous one's weights")
    p.add_argument("--cue", choices=CUES, default="marker",
                   help="with --train: what the contours drawn for training tell of the target (CUES)")
    p.add_argument("--from-scratch", action="store_true",
                   help="with --train: the first cycle starts from random weights, not the experiment's")
    p.add_argument("--trained-models", nargs="+", default=list(TRAINED_MODELS), choices=list(ONE_COMMAND))
    p.add_argument("--train-images", type=int, default=0, help="contour images trained on (0: the whole train split)")
    p.add_argument("--scratch", default="", help="the continued runs' output folders (with --train)")
    p.add_argument("--workers", type=int, default=3, help="runs at once, one thread each (with --train)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ... for the continued runs (last)")
    p.add_argument("--results", default=RESULTS_DIR)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--new-only", action="store_true", help="measure only the runs without a JSON yet")
    p.add_argument("--picture-only", action="store_true",
                   help="only draw the picture (the recipe's seed 0, before and after the contours) from the weights")
    args = p.parse_args(argv)
    command = "python -m experiments.crossings " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.report_only:
        md = write_report(args.results)
        print(f"wrote {md}")
        return
    torch.set_num_threads(1)
    setting = Setting(args.results, os.environ.get("CRBP_PATHFINDER_DIR", ""))
    if args.train:
        if not args.scratch:
            raise SystemExit("--train needs --scratch (where the runs write their checkpoints)")
        cfg = setting.cfg(args.trained_models[0])
        folder = write_training_set(cfg, os.path.join(args.scratch, f"{RUN_PREFIX[args.cue]}_train"),
                                    images=args.train_images, cue=args.cue)
        for cycle in range(1, args.cycles + 1):  # the runs of a cycle exist already: execute skips them
            execute_all(training_runs(args.trained_models, args.seeds, args.train, folder, args.results, args.opts, cycle,
                                      args.cue, args.from_scratch), args.scratch, args.workers,
                        keep_weights=lambda run: True)
    data = {}  # per Pathfinder drawing and cue: (contour samples, Pathfinder samples)
    pictured: Dict[str, Dict[str, np.ndarray]] = {cue: {} for cue in CUES}  # cue: {run name: its masks}
    drawn_contours = {}  # cue: the contour samples the picture's runs were measured on
    written = set()  # cues whose proximity JSON this call wrote
    listed = measured_models(args)
    in_pictures = picture_runs([name for _, name, seed, _, _ in listed if seed == args.seeds[0]])
    for experiment, name, seed, found, weights in listed:
        cue = parse_name(name).cue or "marker"
        in_picture = seed == args.seeds[0] and name in in_pictures
        measured = os.path.exists(result_path(args.results, f"{name}_seed{seed}"))
        if (args.picture_only or (args.new_only and measured)) and not in_picture:
            continue
        model, cfg = trained_model(found, weights, setting.data_root, datasets=False)
        contours, pathfinder = drawn_samples(data, cfg, args, cue)
        if args.picture_only or (args.new_only and measured):
            on_contours = model_predictions(model, contours, cfg.PATHFINDER.EVAL.BATCH_SIZE)
        else:
            on_contours = measure_run(model, cfg, contours, pathfinder, dict(
                model=name, experiment=experiment, seed=seed, weights=os.path.relpath(weights, args.results),
                split=args.split, steps=found.get("steps"), iterations=found.get("iterations")), args.results)
            if cue not in written:
                record_measurement(args, contours, pathfinder, generator_config(cfg, PATHFINDER_LENGTHS[0]), command, cue)
                written.add(cue)
        if in_picture:
            pictured[cue][name], drawn_contours[cue] = on_contours, contours
    for cue, runs in pictured.items():
        if not runs:
            continue
        contours = drawn_contours[cue]
        baselines = {f"flood, radius {PICTURE_RADIUS}": flood_predictions(contours, PICTURE_RADIUS)}
        if cue != "marker":
            baselines = {"all ink inside the box": flood_predictions(contours, None), **baselines}
        write_picture(os.path.join(args.results, picture_name(cue)), contours, {
            **baselines, **{f"{run_label(name)}, seed {args.seeds[0]}": runs[name] for name in sorted(runs, key=picture_order)}})
    md = write_report(args.results)
    print(f"wrote {md}")
    with open(md) as f:
        print(f.read())


if __name__ == "__main__":
    main()

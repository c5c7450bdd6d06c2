#!/usr/bin/env python
"""The contour-grouping benchmark: does a recurrent mask head group what a feed-forward one cannot?

Data: crbp_detectron/data/contours.py (thin dashed contours in one colour, most crossing another
near its middle, among the demo's shapes and stuff). Every model is trained with
tools/train_net.py on the train split with the same schedule and seeds, then measured on the
test split (tuning used the val split only):

- grouping bounds of the data (no model): the resolution bound (each ground-truth mask cropped to
  its box at the mask head's resolution, as Detectron2 makes mask targets, and pasted back as it
  pastes predictions) and the non-grouping bound (every contour pixel inside the ground-truth
  box taken as the mask), for crossing and for single contours;
- mask IoU with oracle boxes: ground-truth boxes and classes go into the mask head (detection
  out of the way), the mask is pasted at the image's size and thresholded at 0.5 as in inference;
- probability on own vs crossing dashes: the mean mask probability on the instance's own pixels
  and on other contours' pixels inside its box;
- detection recall: ground-truth instances with a detection of their class at box IoU >= 0.5 and
  score >= the panoptic confidence threshold;
- PQ, PQ per class (Detectron2's COCO panoptic evaluator), box AP;
- training memory (bytes autograd saves in one training forward on the same batch), seconds per
  training iteration.

    python benchmarks/contour_grouping.py --bounds                  # the data's bounds only
    python benchmarks/contour_grouping.py --models feedforward crbp --seeds 0 1 2 --threads 1
    python benchmarks/contour_grouping.py --report-only             # table + picture from the JSONs

One JSON per run under benchmarks/results/contour_grouping/ (a finished run is not trained
again), bounds.json beside them; the report (contour_grouping.md, contour_grouping.png) is rebuilt
from those files alone.
"""
import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.demo_compare import (_rle, command_line, comparison_parser, mean_std, panoptic_results,  # noqa: E402
                                     seconds_per_iteration, train_and_measure, training_saved_bytes)
from crbp_detectron.utils.plotting import GROUPING_LEGEND, grouping_colours  # noqa: E402
from crbp_detectron.utils.tables import markdown_table  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
FOLDER = "contour_grouping"
MODELS = {  # name: (config, label)
    "feedforward": ("contours/panoptic_fpn_contours.yaml", "Panoptic FPN (feed-forward)"),
    "crbp": ("contours/panoptic_crbp_contours.yaml", "C-RBP Panoptic FPN"),
    "crbp_state8": ("contours/panoptic_crbp_state8_contours.yaml", "C-RBP Panoptic FPN, 8-channel state"),
    "bptt": ("contours/panoptic_bptt_contours.yaml", "BPTT, memory-matched (1 step)"),
    "rbp": ("contours/panoptic_rbp_contours.yaml", "RBP, no penalty"),
    "tracer": ("contours/panoptic_tracer_contours.yaml", "C-RBP tracer mask head"),
    "tracer_cnn": ("contours/panoptic_tracer_cnn_contours.yaml", "CNN tracer mask head (feed-forward)"),
    "tracer_ink": ("contours/panoptic_tracer_ink_contours.yaml", "C-RBP tracer mask head on an ink net"),
    "tracer_cnn_ink": ("contours/panoptic_tracer_cnn_ink_contours.yaml", "CNN tracer mask head on an ink net"),
}
DEFAULT_MODELS = tuple(m for m in MODELS if not m.startswith("tracer"))
# The tracer heads start from Pathfinder's runs trained with the box as the cue, the run's seed's
# (projects/Pathfinder/experiments/crossings.py; both: Pathfinder's three cycles, then two of 1000
# on the contours drawn as Pathfinder's with the box).
BOXED_TRACER = os.path.join("projects", "Pathfinder", "results", "crossings_trained", "%s_boxed1000x2",
                            "seed{seed}_model.pth")
MODEL_OPTS = {"tracer": ["MODEL.CRBP.TRACER.INIT_WEIGHTS", BOXED_TRACER % "crbp_continued_twice_steps64"],
              "tracer_cnn": ["MODEL.CRBP.TRACER.INIT_WEIGHTS", BOXED_TRACER % "cnn_continued_twice"]}
MODEL_OPTS.update(tracer_ink=MODEL_OPTS["tracer"], tracer_cnn_ink=MODEL_OPTS["tracer_cnn"])  # the same tracers


def model_opts(model, seed):
    """The model's own overrides for `seed` (paths in the repository made absolute)."""
    opts = [v.format(seed=seed) for v in MODEL_OPTS.get(model, [])]
    return [os.path.join(ROOT, v) if v.endswith(".pth") else v for v in opts]
SPLIT = "test"
TEST_STEPS_PREFIX = "test_steps_"  # the --test-steps diagnostic's JSON, beside the runs'
COMPOSITION_PREFIX = "composition_"  # the --composition diagnostic's JSON
GROUPS = ("crossing", "single")
PICTURE_INSTANCES = 6
TEST_OPTS = ["DATASETS.TEST", f"('crbp_contours_{SPLIT}_separated',)"]  # every run is evaluated on the test split


def run_json(results_dir, model, seed):
    return os.path.join(results_dir, FOLDER, f"{model}_seed{seed}.json")


# ----------------------------------------------------------------------------- the data's side
def split_images(paths):
    """Per annotated image: its files and things, contours marked crossing or not.

    Yields {"file_name", "image_path", "ids", "things": [{"id", "category_id", "box" (XYXY,
    pixel edges), "crossing" (contours: bool; other things: None)}]}."""
    from crbp_detectron.data.coco_panoptic import read_panoptic_png
    from crbp_detectron.data.contours import CONTOUR_CATEGORY

    with open(paths["panoptic_json"]) as f:
        panoptic = json.load(f)
    with open(paths["extra_json"]) as f:
        crossings = {e["image_id"]: {c["id"]: bool(c["crosses"]) for c in e["contours"]} for e in json.load(f)["images"]}
    isthing = {c["id"]: c["isthing"] for c in panoptic["categories"]}
    files = {im["id"]: im["file_name"] for im in panoptic["images"]}
    for ann in panoptic["annotations"]:
        ids = read_panoptic_png(os.path.join(paths["panoptic_root"], ann["file_name"]))
        things = []
        for seg in ann["segments_info"]:
            if not isthing[seg["category_id"]]:
                continue
            x, y, w, h = seg["bbox"]
            contour = seg["category_id"] == CONTOUR_CATEGORY["id"]
            things.append({"id": seg["id"], "category_id": seg["category_id"], "box": [x, y, x + w, y + h],
                           "crossing": crossings[ann["image_id"]][seg["id"]] if contour else None})
        yield {"image_id": ann["image_id"], "file_name": files[ann["image_id"]],
               "image_path": os.path.join(paths["image_root"], files[ann["image_id"]]), "ids": ids, "things": things}


def box_region(box, shape):
    """Pixels whose centres lie inside an XYXY box given by pixel edges."""
    region = np.zeros(shape, bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    region[max(y0, 0):y1, max(x0, 0):x1] = True
    return region


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def contour_instances(image):
    """(contours, their masks [N, H, W], every contour pixel of the image)."""
    contours = [t for t in image["things"] if t["crossing"] is not None]
    masks = np.stack([image["ids"] == t["id"] for t in contours]) if contours else np.zeros((0,) + image["ids"].shape, bool)
    return contours, masks, masks.any(0)


CORNER_REACH = 0.15  # of the box's shorter side: how near a box corner a contour must come to "reach" it


def spans_box_diagonal(pixels, box, reach=CORNER_REACH):
    """Whether the pixels (a boolean image) come within `reach` x the box's shorter side (at least
    2 px) of both corners of one of the XYXY box's diagonals: a contour running corner to corner."""
    ys, xs = np.nonzero(pixels)
    if len(xs) == 0:
        return False
    x0, y0, x1, y1 = box
    radius = max(reach * min(x1 - x0, y1 - y0), 2.0)
    centres_x, centres_y = xs + 0.5, ys + 0.5
    near = {(cx, cy): bool((np.hypot(centres_x - cx, centres_y - cy) <= radius).any())
            for cx in (x0, x1) for cy in (y0, y1)}
    return (near[x0, y0] and near[x1, y1]) or (near[x1, y0] and near[x0, y1])


def through_grid(masks, boxes, mask_size: int):
    """Boolean masks [N, H, W] cropped to their XYXY boxes at the mask head's resolution and pasted
    back as Detectron2 pastes predictions: the masks a perfect mask head would give."""
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.structures import BitMasks, Boxes

    boxes = torch.tensor(boxes, dtype=torch.float32)
    grid = BitMasks(torch.from_numpy(masks)).crop_and_resize(boxes, mask_size).float()
    return paste_masks_in_image(grid, Boxes(boxes), masks.shape[1:], threshold=0.5).numpy()


def grouping_bounds(paths, mask_size: int) -> dict:
    """Per contour of the split: the resolution bound and the non-grouping bound (see the module's
    docstring), and how often, inside the instance's box, the contour itself and another contour
    each run corner to corner (`spans_box_diagonal`): then the box alone does not say which of the
    two is the instance. Returns {group: {"n", "resolution_bound", "non_grouping_bound",
    "own_spans_box", "other_spans_box"}} (means) and "all"."""
    keys = ("resolution_bound", "non_grouping_bound", "own_spans_box", "other_spans_box")
    values = {g: {k: [] for k in keys} for g in GROUPS}
    for image in split_images(paths):
        contours, masks, every = contour_instances(image)
        if not contours:
            continue
        for t, mask, back in zip(contours, masks, through_grid(masks, [t["box"] for t in contours], mask_size)):
            group = values["crossing" if t["crossing"] else "single"]
            group["resolution_bound"].append(iou(back, mask))
            in_box = box_region(t["box"], mask.shape)
            group["non_grouping_bound"].append(iou(every & in_box, mask))
            group["own_spans_box"].append(float(spans_box_diagonal(mask & in_box, t["box"])))
            group["other_spans_box"].append(float(spans_box_diagonal(every & ~mask & in_box, t["box"])))
    out = {g: {"n": len(v["resolution_bound"]), **{k: float(np.mean(x)) if x else None for k, x in v.items()}}
           for g, v in values.items()}
    both = {k: values["crossing"][k] + values["single"][k] for k in keys}
    out["all"] = {"n": len(both["resolution_bound"]), **{k: float(np.mean(x)) for k, x in both.items()}}
    return out


DEPTH_BINS = [0.0, 0.1, 0.2, 0.3, 0.51]


def box_depth(box, shape):
    """Per pixel: distance (px) of its centre to the nearest side of the XYXY box over the box's
    shorter side (0 at the sides, 0.5 at the centre of a square box); < 0 outside the box."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    inside = np.minimum.reduce([xs - x0, x1 - xs, ys - y0, y1 - ys])
    return inside / max(min(x1 - x0, y1 - y0), 1e-6)


# ---------------------------------------------------------------------------- the model's side
def _model_input(cfg, rgb):
    from detectron2.data import transforms as T

    height, width = rgb.shape[:2]
    transform = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST).get_transform(rgb)
    image = transform.apply_image(rgb[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else rgb)
    scale = (image.shape[1] / width, image.shape[0] / height)
    tensor = torch.as_tensor(np.ascontiguousarray(image).astype("float32").transpose(2, 0, 1))
    return {"image": tensor, "height": height, "width": width}, scale


@torch.no_grad()
def oracle_mask_probabilities(model, cfg, rgb, boxes, classes):
    """The mask head's masks and probabilities [N, H, W] for ground-truth boxes (XYXY, image pixels)
    and contiguous classes, pasted at the image's size as Detectron2 pastes predictions: the masks
    thresholded at 0.5 exactly as in inference, the probabilities to 1/255."""
    from detectron2.structures import Boxes, Instances

    from crbp_detectron.modeling import TracerROIHeads

    inputs, (sx, sy) = _model_input(cfg, rgb)
    images = model.preprocess_image([inputs])
    features = model.backbone(images.tensor)
    if isinstance(model.roi_heads, TracerROIHeads):  # its mask head sees the image itself
        features = TracerROIHeads.features_with_image(images, features)
    given = Instances(images.image_sizes[0])
    scaled = torch.tensor(boxes, dtype=torch.float32) * torch.tensor([sx, sy, sx, sy])
    given.pred_boxes = Boxes(scaled)
    given.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
    out = model.roi_heads.forward_with_given_boxes(features, [given])[0]
    return pasted(out.pred_masks[:, 0], boxes, rgb.shape[:2])


def pasted(mask_probabilities, boxes, shape):
    """RoI mask probabilities [N, M, M] pasted into boxes (XYXY, image pixels) of an image of
    `shape`: (masks thresholded at 0.5 exactly as Detectron2's inference does, probabilities to 1/255)."""
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.structures import Boxes

    image_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    masks = paste_masks_in_image(mask_probabilities, image_boxes, shape, threshold=0.5)
    probs = paste_masks_in_image(mask_probabilities, image_boxes, shape, threshold=-1)  # x 255, uint8
    return masks.numpy(), probs.float().numpy() / 255.0


def box_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def measure_grouping(predictor, paths, picture_keys=()):
    """Per ground-truth thing of the split: oracle-box mask IoU, own / crossing-dash probability
    (contours), detected or not. Returns (instances, pictures): instances a list of dicts,
    pictures {key: oracle mask as RLE} for the (image_id, segment id) keys asked for."""
    from crbp_detectron.inference import read_image_rgb

    cfg, model = predictor.cfg, predictor.model
    to_contiguous = predictor.metadata.thing_dataset_id_to_contiguous_id
    threshold = cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH
    instances, pictures = [], {}
    for image in split_images(paths):
        if not image["things"]:
            continue
        rgb = read_image_rgb(image["image_path"])
        boxes = [t["box"] for t in image["things"]]
        classes = [to_contiguous[t["category_id"]] for t in image["things"]]
        masks, probs = oracle_mask_probabilities(model, cfg, rgb, boxes, classes)
        detections = predictor(rgb)["instances"].to("cpu")
        keep = detections.scores >= threshold
        det_boxes = detections.pred_boxes.tensor[keep].tolist()
        det_classes = detections.pred_classes[keep].tolist()
        _, _, every_contour = contour_instances(image)
        for t, predicted, prob, cls in zip(image["things"], masks, probs, classes):
            mask = image["ids"] == t["id"]
            record = {"image_id": image["image_id"], "id": t["id"], "category_id": t["category_id"],
                      "crossing": t["crossing"], "mask_iou": iou(predicted, mask),
                      "detected": any(c == cls and box_iou(b, t["box"]) >= 0.5 for b, c in zip(det_boxes, det_classes))}
            if t["crossing"] is not None:
                others = every_contour & ~mask & box_region(t["box"], mask.shape)
                record["own_probability"] = float(prob[mask].mean())
                record["other_probability"] = float(prob[others].mean()) if others.any() else None
            instances.append(record)
            if (image["image_id"], t["id"]) in picture_keys:
                pictures[f"{image['image_id']}/{t['id']}"] = _rle(predicted)
    return instances, pictures


class DepthProfile:
    """Mean mask probability on an instance's own pixels and on other contours' pixels in its box, by
    depth into the box (`box_depth`, DEPTH_BINS): a head that follows its contour keeps own above
    other at the box's centre, where the crossing is, as well as at its sides, where the contour
    enters the box."""

    def __init__(self):
        self.sums = {k: np.zeros((len(DEPTH_BINS) - 1, 2)) for k in ("own", "other")}  # (sum, count) per bin

    def add(self, probability, own, others, box):
        depth = box_depth(box, own.shape)
        for key, where in (("own", own), ("other", others)):
            bins = np.clip(np.digitize(depth[where], DEPTH_BINS) - 1, 0, len(DEPTH_BINS) - 2)
            np.add.at(self.sums[key], (bins, 0), probability[where])
            np.add.at(self.sums[key], (bins, 1), 1)

    def result(self):
        return {"bins": DEPTH_BINS, **{k: [float(s / n) if n else None for s, n in v] for k, v in self.sums.items()}}


@torch.no_grad()
def probability_by_depth(predictor, paths):
    """The DepthProfile of the split's crossing contours, oracle boxes."""
    from crbp_detectron.inference import read_image_rgb

    to_contiguous = predictor.metadata.thing_dataset_id_to_contiguous_id
    profile = DepthProfile()
    for image in split_images(paths):
        crossing = [t for t in image["things"] if t["crossing"]]
        if not crossing:
            continue
        rgb = read_image_rgb(image["image_path"])
        _, probs = oracle_mask_probabilities(predictor.model, predictor.cfg, rgb, [t["box"] for t in crossing],
                                             [to_contiguous[t["category_id"]] for t in crossing])
        _, _, every = contour_instances(image)
        for t, prob in zip(crossing, probs):
            own = image["ids"] == t["id"]
            profile.add(prob, own, every & ~own & box_region(t["box"], own.shape), t["box"])
    return profile.result()


def test_steps_diagnostic(model_name, weights, steps_list, threads, paths, split="val"):
    """One trained recurrent model at several test-time steps: oracle-box grouping measurements and
    the probabilities by depth into the box, on the validation split."""
    from crbp_detectron.config import load_config
    from crbp_detectron.data.contours import CONTOUR_CATEGORY
    from crbp_detectron.engine import register_datasets
    from crbp_detectron.inference import Predictor

    torch.set_num_threads(threads)
    rows = []
    for steps in steps_list:
        cfg = load_config(MODELS[model_name][0], ["MODEL.WEIGHTS", weights, "MODEL.CRBP.STEPS", str(steps),
                                                  "DATASETS.TEST", f"('crbp_contours_{split}_separated',)"])
        register_datasets(cfg)
        predictor = Predictor(cfg)
        instances, _ = measure_grouping(predictor, paths[split])
        rows.append({"steps": steps, "grouping": summarise(instances, CONTOUR_CATEGORY["id"]),
                     "crossing_by_depth": probability_by_depth(predictor, paths[split])})
        print(json.dumps(rows[-1]), flush=True)
    return {"model": model_name, "label": MODELS[model_name][1], "weights": os.path.basename(weights),
            "split": split, "rows": rows}


def mask_composition(predictor, paths, mask_size):
    """Where each contour's oracle-box mask falls, by group (crossing / single): the fraction of its
    pixels on its own contour, on other contours and on no contour (gaps, background, shapes), and
    the fraction of its own contour it covers; the same for the ground truth through the mask grid
    and back (the resolution bound's masks), the reference a perfect head would give."""
    from crbp_detectron.inference import read_image_rgb

    to_contiguous = predictor.metadata.thing_dataset_id_to_contiguous_id
    keys = ("on_own", "on_other_contours", "on_no_contour", "own_covered")
    values = {source: {g: {k: [] for k in keys} for g in ("crossing", "single")} for source in ("model", "grid")}
    for image in split_images(paths):
        contours, truth, every = contour_instances(image)
        if not contours:
            continue
        boxes = [t["box"] for t in contours]
        predicted, _ = oracle_mask_probabilities(predictor.model, predictor.cfg, read_image_rgb(image["image_path"]),
                                                 boxes, [to_contiguous[t["category_id"]] for t in contours])
        for source, masks in (("model", predicted), ("grid", through_grid(truth, boxes, mask_size))):
            for t, mask, own in zip(contours, masks, truth):
                group = values[source]["crossing" if t["crossing"] else "single"]
                area = max(int(mask.sum()), 1)
                group["on_own"].append((mask & own).sum() / area)
                group["on_other_contours"].append((mask & every & ~own).sum() / area)
                group["on_no_contour"].append((mask & ~every).sum() / area)
                group["own_covered"].append((mask & own).sum() / max(int(own.sum()), 1))
    return {source: {g: {"n": len(v["on_own"]), **{k: float(np.mean(x)) if x else None for k, x in v.items()}}
                     for g, v in groups.items()} for source, groups in values.items()}


def composition_diagnostic(model_name, weights, threads, paths, split=SPLIT):
    from crbp_detectron.config import load_config
    from crbp_detectron.engine import register_datasets
    from crbp_detectron.inference import Predictor

    torch.set_num_threads(threads)
    cfg = load_config(MODELS[model_name][0], ["MODEL.WEIGHTS", weights, "DATASETS.TEST",
                                              f"('crbp_contours_{split}_separated',)"])
    register_datasets(cfg)
    mask_size = 2 * cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION  # the mask head's deconv doubles it
    return {"model": model_name, "label": MODELS[model_name][1], "weights": os.path.basename(weights),
            "split": split, "mask_size": mask_size,
            "composition": mask_composition(Predictor(cfg), paths[split], mask_size)}


def composition_report(folder):
    """Lines for the report: one table of every --composition JSON in `folder` (none: no lines)."""
    found = []
    for name in sorted(n for n in os.listdir(folder) if n.startswith(COMPOSITION_PREFIX) and n.endswith(".json")):
        with open(os.path.join(folder, name)) as f:
            found.append(json.load(f))
    if not found:
        return []
    rows = []
    for diag in found:
        for source, label in (("model", f"{diag['label']} ({diag['weights']})"),
                              ("grid", f"ground truth through the {diag['mask_size']}x{diag['mask_size']} grid")):
            if source == "grid" and diag is not found[0]:
                continue  # the same for every model
            for group in ("single", "crossing"):
                c = diag["composition"][source][group]
                rows.append([label, group, str(c["n"])] + [f"{100 * c[k]:.1f}" for k in
                                                            ("on_own", "on_other_contours", "on_no_contour", "own_covered")])
    return [f"## Where the oracle-box masks fall ({found[0]['split']} split)", "", "```",
            *sorted({d["command"] for d in found}), "```", "",
            markdown_table(["masks", "contours", "instances", "% of mask on own contour", "% on other contours",
                            "% on no contour", "% of own contour covered"], rows), "",
            "Pixels of each contour's mask (ground-truth box and class into the mask head, pasted, threshold 0.5), "
            "by what lies under them; mean over instances. 'No contour': gaps between dashes, background, stuff "
            "and shapes.", ""]


def picture_instances(paths, count=PICTURE_INSTANCES):
    """The crossing contours shown in the picture: the first `count` of the split, one per image."""
    keys = []
    for image in split_images(paths):
        crossing = [t for t in image["things"] if t["crossing"]]
        if crossing:
            keys.append((image["image_id"], crossing[0]["id"]))
        if len(keys) == count:
            break
    return keys


def summarise(instances, contour_id):
    """Means per group of the per-instance measurements."""
    out = {}
    groups = {g: [r for r in instances if r["crossing"] is (g == "crossing")] for g in GROUPS}
    groups["shapes"] = [r for r in instances if r["category_id"] != contour_id]
    for name, rows in groups.items():
        if not rows:
            continue
        out[name] = {"n": len(rows), "mask_iou": float(np.mean([r["mask_iou"] for r in rows])),
                     "detection_recall": float(np.mean([r["detected"] for r in rows]))}
        for key in ("own_probability", "other_probability"):
            vals = [r[key] for r in rows if r.get(key) is not None]
            if vals:
                out[name][key] = float(np.mean(vals))
    return out


def trained_run_config(model_name, seed, run_dir, opts):
    """The config of a run trained in `run_dir`, its trained weights loaded (run_dir/model_final.pth)."""
    from crbp_detectron.config import load_config

    return load_config(MODELS[model_name][0], ["OUTPUT_DIR", run_dir, "SEED", str(seed)] + TEST_OPTS + list(opts)
                       + model_opts(model_name, seed)
                       + ["DATALOADER.NUM_WORKERS", "0", "MODEL.WEIGHTS", os.path.join(run_dir, "model_final.pth")])


def measure(model_name, seed, run_dir, threads, opts, paths):
    from crbp_detectron.data.contours import CONTOUR_CATEGORY
    from crbp_detectron.engine import register_datasets
    from crbp_detectron.inference import Predictor

    torch.set_num_threads(threads)
    cfg = trained_run_config(model_name, seed, run_dir, opts)
    register_datasets(cfg)
    predictor = Predictor(cfg)
    model = predictor.model
    metrics_json = os.path.join(run_dir, "metrics.json")
    instances, pictures = measure_grouping(predictor, paths[SPLIT], set(picture_instances(paths[SPLIT])))
    result = {"model": model_name, "label": MODELS[model_name][1], "config": MODELS[model_name][0], "seed": seed,
              "opts": list(opts), "model_opts": list(MODEL_OPTS.get(model_name, [])), "threads": threads, "iterations": cfg.SOLVER.MAX_ITER,
              "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH, "split": SPLIT, "evaluation": panoptic_results(metrics_json),
              "seconds_per_iteration": seconds_per_iteration(metrics_json),
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "grouping": summarise(instances, CONTOUR_CATEGORY["id"]), "instances": instances, "pictures": pictures}
    result["saved_for_backward_bytes"] = training_saved_bytes(model, cfg)
    return result


def remeasure_memory(model_name, seed, run_dir, path, threads, opts, command):
    """The saved bytes of a kept run's trained model (run_dir/model_final.pth) with the current
    config, written into its JSON (the value measured at training kept beside it)."""
    from crbp_detectron.engine import register_datasets
    from crbp_detectron.inference import Predictor

    weights = os.path.join(run_dir, "model_final.pth")
    if not os.path.isfile(path) or not os.path.isfile(weights):
        raise SystemExit(f"--memory needs the run's JSON ({path}) and its kept weights ({weights}: --keep-models)")
    torch.set_num_threads(threads)
    cfg = trained_run_config(model_name, seed, run_dir, opts)
    register_datasets(cfg)
    model = Predictor(cfg).model
    with open(path) as f:
        result = json.load(f)
    result.setdefault("saved_for_backward_bytes_as_trained", result["saved_for_backward_bytes"])
    result["saved_for_backward_bytes"] = training_saved_bytes(model, cfg)
    result["memory_command"] = command
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(path, result["saved_for_backward_bytes_as_trained"] / 2**20, "->", result["saved_for_backward_bytes"] / 2**20)


# ------------------------------------------------------------------------------------- report
def load_runs(results_dir):
    folder = os.path.join(results_dir, FOLDER)
    runs = {m: [] for m in MODELS}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json") and name != "bounds.json" and not name.startswith((TEST_STEPS_PREFIX, COMPOSITION_PREFIX)):
            with open(os.path.join(folder, name)) as f:
                run = json.load(f)
            runs[run["model"]].append(run)
    return {m: sorted(r, key=lambda run: run["seed"]) for m, r in runs.items() if r}


def report_tables(runs, bounds):
    g = lambda run, group, key, scale=100: (run["grouping"].get(group, {}).get(key) or float("nan")) * scale  # noqa: E731
    ev = lambda run, key: run["evaluation"].get(f"panoptic_seg/{key}")  # noqa: E731
    rows = []
    for model, model_runs in runs.items():
        rows.append([MODELS[model][1], ", ".join(str(r["seed"]) for r in model_runs)]
                    + [mean_std([g(r, grp, "mask_iou") for r in model_runs]) for grp in GROUPS]
                    + [mean_std([g(r, "crossing", k) for r in model_runs]) for k in ("own_probability", "other_probability")]
                    + [mean_std([g(r, grp, "detection_recall") for r in model_runs]) for grp in GROUPS]
                    + [mean_std([ev(r, k) for r in model_runs]) for k in ("PQ/contour", "PQ", "PQ_th", "PQ_st")])
    main = markdown_table(
        ["model", "seeds", "oracle-box mask IoU, crossing", "oracle-box mask IoU, single",
         "probability on own dashes (crossing)", "probability on crossing dashes", "detection recall, crossing",
         "detection recall, single", "PQ contour", "PQ", "PQ_th", "PQ_st"], rows)
    cost = markdown_table(
        ["model", "trainable parameters", "saved for backward (MiB)", "s / training iteration",
         "training iterations", "training wall time (min)"],
        [[MODELS[m][1], f"{rs[0]['trainable_parameters']:,}", f"{rs[0]['saved_for_backward_bytes'] / 2**20:.1f}",
          mean_std([r["seconds_per_iteration"] for r in rs], 2), str(rs[0]["iterations"]),
          mean_std([r["training_wall_seconds"] / 60 or float("nan") for r in rs], 0)] for m, rs in runs.items()])
    from crbp_detectron.data.contours import CATEGORIES

    per_class = markdown_table(["class"] + [MODELS[m][1] for m in runs],
                               [[c["name"]] + [mean_std([ev(r, f"PQ/{c['name']}") for r in rs]) for rs in runs.values()]
                                for c in CATEGORIES])
    share = lambda b, key: "-" if b.get(key) is None else f"{100 * b[key]:.1f}"  # noqa: E731
    bound_rows = [[split, grp, str(b[grp]["n"]), f"{100 * b[grp]['resolution_bound']:.1f}",
                   f"{100 * b[grp]['non_grouping_bound']:.1f}", share(b[grp], "own_spans_box"),
                   share(b[grp], "other_spans_box")]
                  for split, b in sorted(bounds["splits"].items()) for grp in GROUPS + ("all",) if b[grp]["n"]]
    bound_table = markdown_table(["split", "contours", "instances", "resolution bound (mask IoU)",
                                  "non-grouping bound (mask IoU)", "own contour runs box corner to corner (%)",
                                  "another contour does (%)"], bound_rows)
    return main, cost, per_class, bound_table


def write_picture(runs, paths, path):
    """Crossing contours with their ground-truth box: each model's oracle-box mask (first seed),
    coloured by whose pixels it covers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pycocotools import mask as mask_util

    from crbp_detectron.inference import read_image_rgb

    shown = {m: rs[0] for m, rs in runs.items()}
    keys = sorted(next(iter(shown.values()))["pictures"], key=lambda k: tuple(map(int, k.split("/"))))
    images = {im["image_id"]: im for im in split_images(paths)}
    columns = ["input and box", "ground truth"] + [f"{MODELS[m][1]}\n(seed {r['seed']})" for m, r in shown.items()]
    fig, axes = plt.subplots(len(keys), len(columns), figsize=(2.6 * len(columns), 2.7 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        image_id, segment = map(int, key.split("/"))
        image = images[image_id]
        thing = next(t for t in image["things"] if t["id"] == segment)
        rgb = read_image_rgb(image["image_path"])
        own = image["ids"] == segment
        _, _, every = contour_instances(image)
        panels = [rgb, grouping_colours(rgb, own, every, own)]
        for run in shown.values():
            rle = run["pictures"][key]
            mask = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
            panels.append(grouping_colours(rgb, own, every, mask))
        x0, y0, x1, y1 = thing["box"]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(panel, interpolation="nearest")
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="cyan", lw=1))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
    fig.text(0.5, 0.005, GROUPING_LEGEND, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def test_steps_report(folder):
    """Lines for the report: one table per --test-steps diagnostic JSON in `folder` (none: no lines)."""
    lines = []
    for name in sorted(n for n in os.listdir(folder) if n.startswith(TEST_STEPS_PREFIX) and n.endswith(".json")):
        with open(os.path.join(folder, name)) as f:
            diag = json.load(f)
        rows = [[str(r["steps"]), f"{100 * r['grouping']['crossing']['mask_iou']:.1f}",
                 f"{100 * r['grouping']['single']['mask_iou']:.1f}",
                 f"{r['grouping']['crossing']['own_probability']:.2f} / {r['grouping']['crossing']['other_probability']:.2f}"]
                + [" ".join("-" if x is None else f"{x:.2f}" for x in r["crossing_by_depth"][k]) for k in ("own", "other")]
                for r in diag["rows"]]
        lines += [f"## Test-time steps: {diag['label']} ({diag['weights']}, {diag['split']} split)", "",
                  "```", diag["command"], "```", "",
                  markdown_table(["steps", "oracle-box mask IoU, crossing", "single", "own / other probability",
                                  f"own probability by depth {DEPTH_BINS}", "other probability by depth"], rows), "",
                  "Depth: a pixel's distance to the nearest side of the instance's box over the box's shorter side "
                  "(0 at the sides, 0.5 at the centre, where contours cross).", ""]
    return lines


def write_report(results_dir, paths):
    runs = load_runs(results_dir)
    bounds_path = os.path.join(results_dir, FOLDER, "bounds.json")
    if not runs or not os.path.isfile(bounds_path):
        raise FileNotFoundError(f"no run results or bounds.json under {os.path.join(results_dir, FOLDER)}: "
                                "run without --report-only")
    with open(bounds_path) as f:
        bounds = json.load(f)
    main, cost, per_class, bound_table = report_tables(runs, bounds)
    steps_lines = test_steps_report(os.path.join(results_dir, FOLDER))
    steps_lines += composition_report(os.path.join(results_dir, FOLDER))
    write_picture(runs, paths[SPLIT], os.path.join(results_dir, "contour_grouping.png"))
    all_runs = [r for rs in runs.values() for r in rs]
    commands = sorted({r["command"] for r in all_runs} | {bounds["command"]})
    lines = [
        "# Contour grouping: feed-forward and recurrent mask heads on contours that only continuity tells apart", "",
        "Produced by (one command per line when the runs were made by several):", "", "```", *commands, "```", "",
        f"(`--report-only` rebuilds this file and the picture from `{FOLDER}/`.)", "",
        f"Data: `crbp_detectron/data/contours.py` ({bounds['data']}). Every model: the same train split, "
        f"{all_runs[0]['iterations']} iterations of batch {all_runs[0]['ims_per_batch']}, the same seeds (the seed sets "
        f"the initial weights and the data order); everything measured on the {SPLIT} split. Mean ± standard deviation "
        "over seeds, in percent.", "",
        "## The data's grouping bounds", "", bound_table, "",
        "- resolution bound: the ground-truth mask through the mask head's grid and back (Detectron2's "
        "`BitMasks.crop_and_resize` at the mask resolution, then `paste_masks_in_image`): what a perfect mask head "
        "could score. Non-grouping bound: every contour pixel inside the ground-truth box: what a head that "
        "segments contours without grouping them scores. Corner to corner: the contour's pixels inside the box come "
        f"within {CORNER_REACH} x the box's shorter side of both corners of one diagonal; that the instance does "
        "and the contour crossing it does not is what a head can follow from the box's corners to the crossing "
        "(the information is inside the box).", "",
        "## Results", "", main, "", "Costs:", "", cost, "", "Panoptic quality per class:", "", per_class, "",
        "- oracle-box mask IoU: ground-truth boxes and classes into the mask head, mask pasted and thresholded at 0.5.",
        "- probabilities: the mean mask probability on the instance's own pixels and on other contours' pixels inside "
        "its box (crossing contours).",
        "- detection recall: a detection of the class at box IoU >= 0.5 with score >= the panoptic confidence "
        "threshold.",
        "- saved for backward: bytes autograd keeps for the backward pass in one training forward on the same batch "
        "(parameters excluded)."]
    remeasured = {}
    for r in all_runs:
        if "saved_for_backward_bytes_as_trained" in r:
            remeasured.setdefault((r["label"], r["memory_command"]), []).append(r["saved_for_backward_bytes_as_trained"])
    lines += [f"- {label}: measured again on the trained weights with the current config ({command}); as trained "
              f"{' / '.join(f'{b / 2**20:.1f}' for b in trained)} MiB (the ink net's activations saved; "
              "MODEL.CRBP.TRACER.INK_RECOMPUTE, exact, recomputes them in the backward)."
              for (label, command), trained in sorted(remeasured.items())]
    lines += [
        "",
        "Machines (per run; a CPU shared with other jobs, so times are indicative):", "",
        *sorted({f"- {r['label']}, seed {r['seed']}: {r['machine']}" for r in all_runs}), "",
        "![oracle-box masks on crossing contours](contour_grouping.png)", "", *steps_lines,
    ]
    with open(os.path.join(results_dir, "contour_grouping.md"), "w") as f:
        f.write("\n".join(lines))
    print(bound_table + "\n\n" + main + "\n\n" + cost)


def data_description(params):
    return (f"{params.image_size} px, {params.train_images} train / {params.val_images} val / "
            f"{params.test_images} test images, {params.min_contours}-{params.max_contours} contours per image")


# --------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = comparison_parser(__doc__, MODELS, DEFAULT_MODELS, FOLDER, threads=1)
    parser.add_argument("--bounds", action="store_true", help="measure the data's bounds only")
    parser.add_argument("--test-steps", type=int, nargs="+", metavar="STEPS",
                        help="diagnostic: the trained --weights of the one recurrent model in --models at these "
                             "test-time steps (validation split); then the report")
    parser.add_argument("--composition", action="store_true",
                        help="diagnostic: where the oracle-box masks of the trained --weights of the one model in "
                             "--models fall (own contour, other contours, no contour), test split; then the report")
    parser.add_argument("--weights", help="for --test-steps and --composition: a trained model_final.pth of that model")
    parser.add_argument("--memory", action="store_true",
                        help="measure again the training memory of the --models' --seeds runs kept in --out "
                             "(--keep-models) with the current config (e.g. after an exact recomputation option "
                             "changed it), keeping the value measured at training as saved_for_backward_bytes_as_trained")
    args = parser.parse_args(argv)
    if (args.test_steps or args.composition) and (len(args.models) != 1 or not args.weights):
        parser.error("--test-steps and --composition need one model in --models and its trained --weights")

    import crbp_detectron  # noqa: F401
    from detectron2.utils.logger import setup_logger

    from crbp_detectron.config import load_config
    from crbp_detectron.data.contours import ContourParams, generate_contour_dataset, register_contour_datasets

    setup_logger()
    paths = generate_contour_dataset()
    register_contour_datasets(progress=False)
    command = command_line("benchmarks/contour_grouping.py", argv)
    os.makedirs(os.path.join(args.results, FOLDER), exist_ok=True)
    bounds_path = os.path.join(args.results, FOLDER, "bounds.json")
    if args.bounds or not os.path.isfile(bounds_path):
        cfg = load_config(MODELS["feedforward"][0])
        mask_size = 2 * cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION  # the mask head's deconv doubles it
        bounds = {"command": command, "mask_size": mask_size, "data": data_description(ContourParams()),
                  "splits": {s: grouping_bounds(paths[s], mask_size) for s in ("val", SPLIT)}}
        with open(bounds_path, "w") as f:
            json.dump(bounds, f, indent=1)
        print(json.dumps(bounds, indent=1))
        if args.bounds:
            return 0
    if args.test_steps:
        result = test_steps_diagnostic(args.models[0], args.weights, args.test_steps, args.threads, paths)
        result["command"] = command
        with open(os.path.join(args.results, FOLDER, f"{TEST_STEPS_PREFIX}{args.models[0]}.json"), "w") as f:
            json.dump(result, f, indent=1)
    elif args.composition:
        result = composition_diagnostic(args.models[0], args.weights, args.threads, paths)
        result["command"] = command
        with open(os.path.join(args.results, FOLDER, f"{COMPOSITION_PREFIX}{args.models[0]}.json"), "w") as f:
            json.dump(result, f, indent=1)
    elif args.memory:
        for model_name in args.models:
            for seed in args.seeds:
                remeasure_memory(model_name, seed, os.path.join(args.out, f"{model_name}_seed{seed}"),
                                 run_json(args.results, model_name, seed), args.threads, args.opts, command)
    elif not args.report_only:
        train_and_measure(args, MODELS, run_json, TEST_OPTS + list(args.opts),
                          lambda model, seed, run_dir: measure(model, seed, run_dir, args.threads, args.opts, paths),
                          model_opts=model_opts, command=command)
    write_report(args.results, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())

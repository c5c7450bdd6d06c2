#!/usr/bin/env python
"""Mask heads alone on the contour-grouping data: a diagnostic that isolates grouping from detection.

The backbone and FPN of one trained Panoptic FPN (its weights file) are frozen and run once over
the train and val splits; mask heads are then trained on those features with Detectron2's own
pooler, targets and loss (mask_rcnn_loss, plus a recurrent head's penalty), on proposals made by
jittering the ground-truth boxes (IoU >= 0.5 with their box, as the heads' training proposals
are), and measured with the ground-truth boxes (oracle) on the val split: mask IoU for crossing
and single contours and the probability on own vs crossing dashes. Every head sees the same
features, boxes and iterations, so a difference between heads is the head's.

    python benchmarks/contour_mask_head.py --weights output/contours_fpn/model_final.pth \
        --heads feedforward crbp_state8 --iterations 2000 --seeds 0 1 2 \
        --out benchmarks/results/contour_mask_head

A head is a config (the model's) plus overrides: HEADS below, or --head NAME CONFIG KEY VALUE...
With --pixels every head also sees the image itself (the backbone's input over its std), pooled on
the same box at the same resolution and stacked onto the RoI features: whether grouping is limited by
what the stride-4 (and coarser) FPN features keep of 3 px contours. With --marker every head also
gets, as Pathfinder's marker, where its own contour enters its box: the ground truth's pixels within
0.1 x the box's shorter side of the box's sides (an oracle cue, so a diagnostic only: whether a head
can follow its contour from there to the crossing when it is told where to start), and the report
says how far each such head carries it (marker_influence; --influence measures it for saved runs):

    python benchmarks/contour_mask_head.py --weights W --heads feedforward crbp_state16 --marker --out DIR
    python benchmarks/contour_mask_head.py --weights W --marker --influence --out DIR
"""
import argparse
import glob
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.contour_grouping import (DEPTH_BINS, DepthProfile, box_depth, box_region,  # noqa: E402
                                         contour_instances, iou, pasted, split_images)

FF = "contours/panoptic_fpn_contours.yaml"
CRBP = "contours/panoptic_crbp_contours.yaml"
HEADS = {  # name: (config, overrides)
    "feedforward": (FF, []),
    "crbp": (CRBP, []),
    "crbp_state8": (CRBP, ["MODEL.CRBP.MASK_HEAD.STATE_CHANNELS", "8", "MODEL.CRBP.CELL.NUM_GROUPS", "4",
                           "MODEL.CRBP.STEPS", "20"]),
    "crbp_state16": (CRBP, ["MODEL.CRBP.MASK_HEAD.STATE_CHANNELS", "16", "MODEL.CRBP.CELL.NUM_GROUPS", "8",
                            "MODEL.CRBP.STEPS", "20"]),
}
PIXELS = "pixels"  # the normalised image among the cached features
MARKER_DEPTH = DEPTH_BINS[1]  # --marker: own pixels nearer the box's sides than this x its shorter side


def start_markers(masks, boxes):
    """Per instance: its own pixels within MARKER_DEPTH x its box's shorter side of the box's sides
    (where the contour enters its box; the box is the mask's own)."""
    return np.stack([m & (box_depth(b, m.shape) < MARKER_DEPTH) for m, b in zip(masks, boxes)])


class RoIInputs:
    """What a head sees of each box: the model's mask pooler on its FPN features and, stacked as
    extra channels, with `pixels` the image itself and with `marker` the instance's start marker,
    each pooled on the same box at the same resolution (ROIAlignV2 at scale 1)."""

    def __init__(self, pooler, feature_names, pixels: bool = False, marker: bool = False):
        from detectron2.layers import ROIAlign
        from detectron2.modeling.poolers import ROIPooler

        self.pooler, self.names = pooler, list(feature_names)
        self.pixel_pooler = ROIPooler(pooler.output_size, scales=(1.0,), sampling_ratio=0,
                                      pooler_type="ROIAlignV2") if pixels else None
        self.marker_align = ROIAlign(pooler.output_size, 1.0, 0, aligned=True) if marker else None

    @property
    def extra_channels(self) -> int:
        return (3 if self.pixel_pooler else 0) + (1 if self.marker_align else 0)

    def __call__(self, features, index, boxes, markers=()):
        """`boxes`: one Boxes per image of `index`; `markers`: with `marker`, one (boxes, H, W) bool
        array per image, an instance's marker for each of its boxes."""
        pooled = [self.pooler([features[n][index] for n in self.names], boxes)]
        if self.pixel_pooler is not None:
            pooled.append(self.pixel_pooler([features[PIXELS][index]], boxes))
        if self.marker_align is not None:
            maps = torch.from_numpy(np.concatenate(list(markers))).float()[:, None]
            rois = torch.cat([b.tensor for b in boxes])
            rois = torch.cat([torch.arange(len(rois), dtype=rois.dtype)[:, None], rois], dim=1)
            pooled.append(self.marker_align(maps, rois))
        return torch.cat(pooled, dim=1)


# ------------------------------------------------------------------------------------ features
@torch.no_grad()
def cached_features(model, paths):
    """FPN features of every image of a split (eval mode), the normalised image itself ("pixels"),
    and its things, in memory."""
    from crbp_detectron.inference import read_image_rgb

    images, features = [], {}
    for image in split_images(paths):
        if not image["things"]:
            continue
        rgb = read_image_rgb(image["image_path"])
        bgr = np.ascontiguousarray(rgb[:, :, ::-1]).astype("float32").transpose(2, 0, 1)
        batch = model.preprocess_image([{"image": torch.as_tensor(bgr)}])
        for name, f in model.backbone(batch.tensor).items():
            features.setdefault(name, []).append(f[0])
        features.setdefault(PIXELS, []).append(batch.tensor[0])
        masks = np.stack([image["ids"] == t["id"] for t in image["things"]])
        images.append({**image, "masks": masks, "markers": start_markers(masks, [t["box"] for t in image["things"]])})
    return images, {k: torch.stack(v) for k, v in features.items()}


def jittered_boxes(rng, boxes, size, min_iou=0.5):
    """Each box moved and rescaled at random until its IoU with the original is >= min_iou."""
    from benchmarks.contour_grouping import box_iou

    out = []
    for b in boxes:
        w, h = b[2] - b[0], b[3] - b[1]
        for _ in range(50):
            dx, dy = rng.normal(0, 0.12, 2) * (w, h)
            sw, sh = np.exp(rng.normal(0, 0.15, 2))
            cx, cy = (b[0] + b[2]) / 2 + dx, (b[1] + b[3]) / 2 + dy
            j = [max(cx - sw * w / 2, 0), max(cy - sh * h / 2, 0), min(cx + sw * w / 2, size), min(cy + sh * h / 2, size)]
            if box_iou(j, b) >= min_iou:
                break
        else:
            j = list(b)
        out.append(j)
    return out


def make_instances(image, boxes, to_contiguous, train: bool):
    from detectron2.structures import BitMasks, Boxes, Instances

    size = image["masks"].shape[1:]
    inst = Instances(size)
    classes = torch.tensor([to_contiguous[t["category_id"]] for t in image["things"]])
    if train:
        inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = classes
        inst.gt_masks = BitMasks(torch.from_numpy(image["masks"]))
    else:
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.pred_classes = classes
    return inst


# ---------------------------------------------------------------------------------------- heads
def build_head(config, overrides, seed, extra_channels=0):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.mask_head import build_mask_head

    from crbp_detectron.config import load_config

    cfg = load_config(config, list(overrides))
    torch.manual_seed(seed)
    channels = cfg.MODEL.FPN.OUT_CHANNELS + extra_channels
    res = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
    return cfg, build_mask_head(cfg, ShapeSpec(channels=channels, width=res, height=res))


def train_head(head, cfg, inputs, images, features, to_contiguous, iterations, seed, batch=4, lr=None, log=None,
               optimizer="sgd", min_iou=0.5):
    from detectron2.utils.events import EventStorage

    from crbp_detectron.crbp import collect_recurrence, penalty_losses

    lr = lr or cfg.SOLVER.BASE_LR
    params = [p for p in head.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    warmup = min(100, iterations // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * i / iterations)))
    rng = np.random.default_rng(seed)
    size = images[0]["masks"].shape[1]
    head.train()
    history, start = [], time.time()
    for it in range(iterations):
        pick = rng.choice(len(images), batch, replace=False)
        instances = [make_instances(images[i], jittered_boxes(rng, [t["box"] for t in images[i]["things"]], size, min_iou),
                                    to_contiguous, train=True) for i in pick]
        pooled = inputs(features, pick, [x.proposal_boxes for x in instances], [images[i]["markers"] for i in pick])
        with EventStorage(it):  # mask_rcnn_loss logs its accuracy there
            losses = head(pooled, instances)
        summaries = collect_recurrence(head)
        losses.update(penalty_losses(summaries))
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"iteration {it}: non-finite loss {losses}")
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
        history[-1].update({f"residual/{name}": s.stats[-1].residual for name, s in summaries.items() if s.stats})
        if log and (it + 1) % 100 == 0:
            log(f"iter {it + 1} ({(time.time() - start) / (it + 1):.2f} s/it): " + ", ".join(f"{k} {np.mean([h[k] for h in history[-100:]]):.4f}" for k in history[-1]))
    return history


@torch.no_grad()
def evaluate_head(head, inputs, images, features, to_contiguous):
    """Oracle-box mask IoU and own / other probabilities per group, and for crossing contours the
    probabilities by depth into the box (a pixel's distance to the nearest box side over the box's
    shorter side, in DEPTH_BINS): where a head without reach sees the box's sides and where not."""
    head.eval()
    rows = []
    profile = DepthProfile()
    for i, image in enumerate(images):
        boxes = [t["box"] for t in image["things"]]
        inst = make_instances(image, boxes, to_contiguous, train=False)
        pooled = inputs(features, slice(i, i + 1), [inst.pred_boxes], [image["markers"]])
        out = head(pooled, [inst])[0]
        masks, probs = pasted(out.pred_masks[:, 0], boxes, image["masks"].shape[1:])
        _, _, every = contour_instances(image)
        for t, predicted, prob, mask in zip(image["things"], masks, probs, image["masks"]):
            row = {"crossing": t["crossing"], "mask_iou": iou(predicted, mask)}
            if t["crossing"] is not None:
                others = every & ~mask & box_region(t["box"], mask.shape)
                row["own_probability"] = float(prob[mask].mean())
                row["other_probability"] = float(prob[others].mean()) if others.any() else None
                if t["crossing"]:
                    profile.add(prob, mask, others, t["box"])
            rows.append(row)
    out = {}
    for group, sel in (("crossing", lambda r: r["crossing"] is True), ("single", lambda r: r["crossing"] is False),
                       ("shapes", lambda r: r["crossing"] is None)):
        rs = [r for r in rows if sel(r)]
        out[group] = {"n": len(rs), "mask_iou": float(np.mean([r["mask_iou"] for r in rs]))}
        for k in ("own_probability", "other_probability"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                out[group][k] = float(np.mean(vals))
    out["crossing_by_depth"] = profile.result()
    return out


INFLUENCE_BINS = [0.0, 0.1, 0.2, 0.3, 0.5, 1.5]  # distance from the marker, in box sides


@torch.no_grad()
def marker_influence(head, inputs, images, features, to_contiguous):
    """How far a --marker head carries its marker: for every crossing contour (oracle box), the
    change of the head's mask logit when the marker channel is zeroed, on the head's output grid,
    by distance from the marker (in box sides: the grid spans the box) on the contour's own pixels
    and on the other contours' pixels. A head that follows its contour from the marker changes
    its own pixels far from it; one that does not, only near it."""
    import cv2
    from detectron2.structures import BitMasks, Boxes

    head.eval()
    sums = {k: np.zeros((len(INFLUENCE_BINS) - 1, 2)) for k in ("own", "other")}  # (sum, count) per bin
    for i, image in enumerate(images):
        crossing = [k for k, t in enumerate(image["things"]) if t["crossing"]]
        if not crossing:
            continue
        boxes = Boxes(torch.tensor([image["things"][k]["box"] for k in crossing], dtype=torch.float32))
        x = inputs(features, slice(i, i + 1), [boxes], [image["markers"][crossing]])
        erased = x.clone()
        erased[:, -1] = 0  # the marker is the last channel
        classes = torch.tensor([to_contiguous[image["things"][k]["category_id"]] for k in crossing])
        rows = torch.arange(len(crossing))
        change = (head.layers(x)[rows, classes] - head.layers(erased)[rows, classes]).abs().numpy()
        size = change.shape[-1]
        _, _, every = contour_instances(image)
        own = BitMasks(torch.from_numpy(image["masks"][crossing])).crop_and_resize(boxes.tensor, size).numpy()
        marker = BitMasks(torch.from_numpy(image["markers"][crossing])).crop_and_resize(boxes.tensor, size).numpy()
        contours = BitMasks(torch.from_numpy(np.repeat(every[None], len(crossing), 0))).crop_and_resize(
            boxes.tensor, size).numpy()
        for k in range(len(crossing)):
            if not marker[k].any():
                continue
            distance = cv2.distanceTransform((~marker[k]).astype(np.uint8), cv2.DIST_L2, 5) / size
            bins = np.clip(np.digitize(distance, INFLUENCE_BINS) - 1, 0, len(INFLUENCE_BINS) - 2)
            for key, where in (("own", own[k]), ("other", contours[k] & ~own[k])):
                np.add.at(sums[key], (bins[where], 0), change[k][where])
                np.add.at(sums[key], (bins[where], 1), 1)
    return {"bins": INFLUENCE_BINS, **{k: [float(s / n) if n else None for s, n in v] for k, v in sums.items()}}


# ----------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="a trained model whose backbone and FPN are frozen")
    parser.add_argument("--backbone-config", default=FF, help="the config of --weights")
    parser.add_argument("--heads", nargs="*", default=[], choices=list(HEADS))
    parser.add_argument("--head", nargs="+", action="append", default=[], metavar=("NAME", "CONFIG"),
                        help="another head: NAME CONFIG [KEY VALUE ...]")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=None, help="default: the config's SOLVER.BASE_LR")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--min-iou", type=float, default=0.5, help="training boxes' IoU with their ground truth at least")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--pixels", action="store_true", help="the image's pixels on the box as 3 more input channels")
    parser.add_argument("--marker", action="store_true",
                        help="where the instance's contour enters its box (oracle) as one more input channel")
    parser.add_argument("--influence", action="store_true",
                        help="only measure how far the marker reaches (marker_influence) for the folder's --marker "
                             "runs that lack it, from their saved heads")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="folder for one JSON per head and seed, and the report")
    parser.add_argument("--report-only", action="store_true", help="the report from the folder's JSONs")
    args = parser.parse_args(argv)
    if args.report_only:
        print(write_report(args.out))
        return 0
    if not args.weights:
        parser.error("--weights is required (a trained model whose backbone and FPN are frozen)")
    torch.set_num_threads(args.threads)

    import crbp_detectron  # noqa: F401
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    from crbp_detectron.checkpoint import Checkpointer
    from crbp_detectron.config import load_config
    from crbp_detectron.data.contours import generate_contour_dataset, register_contour_datasets

    paths = generate_contour_dataset(progress=False)
    register_contour_datasets(progress=False)
    base = load_config(args.backbone_config, ["MODEL.WEIGHTS", args.weights])
    model = build_model(base).eval()
    Checkpointer(model).load(args.weights)
    to_contiguous = MetadataCatalog.get("crbp_contours_train_separated").thing_dataset_id_to_contiguous_id
    start = time.time()
    train_images, train_features = cached_features(model, paths["train"])
    val_images, val_features = cached_features(model, paths["val"])
    print(f"features of {len(train_images)} + {len(val_images)} images in {time.time() - start:.0f} s", flush=True)
    inputs = RoIInputs(model.roi_heads.mask_pooler, model.roi_heads.mask_in_features, args.pixels, args.marker)
    keep = inputs.names + ([PIXELS] if args.pixels else [])
    train_features = {n: train_features[n] for n in keep}
    val_features = {n: val_features[n] for n in keep}
    pixel_scale = float(train_features[PIXELS].std()) if args.pixels else None
    if args.pixels:  # the backbone's input units (std ~60) to unit std, as the features' scale is a few units
        for split in (train_features, val_features):
            split[PIXELS] = split[PIXELS] / pixel_scale
    if args.influence:
        if not args.marker:
            parser.error("--influence measures --marker runs: give --marker (and --pixels if they had it)")
        for path in sorted(glob.glob(os.path.join(args.out, "*.json"))):
            with open(path) as f:
                result = json.load(f)
            if (not result.get("marker") or bool(result.get("pixels")) != args.pixels
                    or "marker_influence" in result["val"]):
                continue
            _, head = build_head(result["config"], result["overrides"], result["seed"], inputs.extra_channels)
            head.load_state_dict(torch.load(path[:-len(".json")] + ".pth"))
            result["val"]["marker_influence"] = marker_influence(head, inputs, val_images, val_features, to_contiguous)
            with open(path, "w") as f:
                json.dump(result, f, indent=1)
            print(path, json.dumps(result["val"]["marker_influence"]), flush=True)
        print(write_report(args.out))
        return 0
    heads = {name: HEADS[name] for name in args.heads}
    heads.update({h[0]: (h[1], h[2:]) for h in args.head})
    os.makedirs(args.out, exist_ok=True)
    for name, (config, overrides) in heads.items():
        for seed in args.seeds:
            variant = ("_pixels" if args.pixels else "") + ("_marker" if args.marker else "")
            path = os.path.join(args.out, f"{name}{variant}_seed{seed}.json")
            if os.path.isfile(path):
                continue
            cfg, head = build_head(config, overrides, seed, inputs.extra_channels)
            start = time.time()
            history = train_head(head, cfg, inputs, train_images, train_features, to_contiguous, args.iterations, seed,
                                 lr=args.lr, optimizer=args.optimizer, min_iou=args.min_iou,
                                 log=lambda m: print(f"{name} seed {seed} {m}", flush=True))
            seconds = time.time() - start
            result = {"head": name, "config": config, "overrides": list(overrides), "seed": seed,
                      "iterations": args.iterations, "weights": args.weights, "train_seconds": seconds,
                      "optimizer": args.optimizer, "lr": args.lr, "min_iou": args.min_iou, "pixels": args.pixels,
                      "pixel_scale": pixel_scale, "marker": args.marker,
                      "loss_last_100": {k: float(np.mean([h[k] for h in history[-100:]])) for k in history[-1]},
                      "val": evaluate_head(head, inputs, val_images, val_features, to_contiguous)}
            if args.marker:
                result["val"]["marker_influence"] = marker_influence(head, inputs, val_images, val_features,
                                                                     to_contiguous)
            with open(path, "w") as f:
                json.dump(result, f, indent=1)
            torch.save(head.state_dict(), path[:-len(".json")] + ".pth")  # small: for diagnostics
            print(json.dumps(result["val"]), flush=True)
    print(write_report(args.out))
    return 0


def input_label(run) -> str:
    """What a run's heads saw: the RoI features, and the pixels and the marker where it added them."""
    return " + ".join(["features"] + ["pixels"] * bool(run.get("pixels"))
                      + ["start marker (oracle)"] * bool(run.get("marker")))


def write_report(folder):
    """contour_mask_head.md in `folder`: one row per head and seed from its JSONs."""
    from crbp_detectron.utils.tables import markdown_table

    runs = [json.load(open(os.path.join(folder, n))) for n in sorted(os.listdir(folder)) if n.endswith(".json")]
    if not runs:
        raise SystemExit(f"{folder}: no head JSONs to report")
    rows = []
    for r in runs:
        v = r["val"]
        depth = v.get("crossing_by_depth")  # absent from runs before the depth bins were measured
        by_depth = [" ".join(f"{x:.2f}" for x in depth[k]) if depth else "-" for k in ("own", "other")]
        rows.append([r["head"], input_label(r), " ".join(r["overrides"]) or "-",
                     f"{r.get('optimizer', 'sgd')} {r.get('lr') or 'config'}", str(r.get("min_iou", 0.5)),
                     str(r["iterations"]), str(r["seed"]), f"{v['crossing']['mask_iou']:.3f}",
                     f"{v['single']['mask_iou']:.3f}",
                     f"{v['crossing']['own_probability']:.2f} / {v['crossing']['other_probability']:.2f}"] + by_depth)
    bins = DEPTH_BINS
    reach = [r for r in runs if r["val"].get("marker_influence")]
    reach_table = markdown_table(
        ["head", "input", "seed", "on"] + [f"{a}-{b}" for a, b in zip(INFLUENCE_BINS, INFLUENCE_BINS[1:])],
        [[r["head"], input_label(r), str(r["seed"]), key] + ["-" if v is None else f"{v:.3f}" for v in r["val"]["marker_influence"][key]]
         for r in reach for key in ("own", "other")]) if reach else ""
    text = "\n".join([
        "# Mask heads alone on frozen features (benchmarks/contour_mask_head.py)", "",
        "A diagnostic, not a comparison of trained models: one backbone's features, oracle boxes, val split.",
        "Depth: a pixel's distance to the nearest side of the instance's box over the box's shorter side",
        "(0 at the sides, 0.5 at the centre); 'own' is the mean mask probability on the contour's pixels,",
        "'other' on the other contours' pixels inside its box. Input: the RoI features of the mask pooler",
        "(FPN levels, 28 x 28); with --pixels also the image's pixels on the box at the same resolution; with",
        f"--marker also the instance's own pixels within {MARKER_DEPTH} x its box's shorter side of the box's sides",
        "(where its contour enters the box: an oracle cue, as Pathfinder's marker).",
        f"Backbone weights: {sorted({r['weights'] for r in runs})}.", "",
        markdown_table(["head", "input", "overrides", "optimizer, lr", "train box IoU >=", "iterations", "seed",
                        "crossing IoU", "single IoU", "crossing own / other prob.",
                        f"own prob. by depth {bins}", "other prob. by depth"], rows), ""]
        + (["## How far the marker reaches", "",
            "The mean change of the mask logit (absolute) when the marker channel is zeroed, crossing contours,",
            "oracle boxes, val split, by distance from the marker in box sides (on the head's output grid), on",
            "the contour's own pixels and on the other contours' pixels in its box: a head that follows its",
            "contour from the marker changes its own pixels far from the marker, and not the other contours'.",
            "(python benchmarks/contour_mask_head.py --influence --marker ...)", "", reach_table, ""] if reach else []))
    with open(os.path.join(folder, "contour_mask_head.md"), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    sys.exit(main())

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

With --context F every head sees and predicts its box scaled by F about its centre: an instance's own
contour never leaves its box and a crossing contour does, so what lies just outside the box tells the
contours apart, but only at the box's sides; carrying that inwards along each contour is grouping, a
cue that needs no oracle. --cycles N trains as Pathfinder's recipe does: N warm restarts of
--iterations, each with a fresh optimizer and the same warm-up and cosine schedule. Every run also
records the resolution bound of its region (what a head that outputs the ground truth scores).

--tracer trains tracer heads (TracerMaskHead: Pathfinder's tracer on each RoI's window of the image
itself, the box told by dimming what lies outside it; no backbone, so no --weights), from the
Pathfinder runs given the box as their cue; --oracle-ink gives them the contours' ground-truth pixels
(1 on 0) in place of the image: what a tracer groups with a perfect ink front-end. The ink heads
(tracer_ink, tracer_cnn_ink) are that front-end learnt: an ink net trained on the union of the thing
masks gives the tracer its map of thing pixels (TRACER.INK_LAYERS; its quality on the val split is
recorded as "ink"):

    python benchmarks/contour_mask_head.py --tracer --heads tracer tracer_cnn --iterations 1000 --cycles 2 \
        --optimizer adam --lr 0.002 --seeds 0 1 2 --out benchmarks/results/contour_mask_head
    python benchmarks/contour_mask_head.py --tracer --oracle-ink --heads tracer tracer_cnn ... (the same)
    python benchmarks/contour_mask_head.py --tracer --heads tracer_ink tracer_cnn_ink ... (the same)

For saved runs (each run keeps its head's weights beside its JSON), with the input flags they had:
--equilibrium asks of each recurrent head what Pathfinder's equilibrium diagnostic asks (does its
state settle past its training steps, and is dF/dh contractive there: head_equilibrium), --bound
adds the resolution bound to runs from before it was recorded, --influence the marker's reach,
--lost where each head's IoU goes (to other contours' dashes, to no contour, own dashes left out,
own dashes' edges: iou_lost; every run records it), and --picture draws each head's mask
probability on the first crossing contours.
"""
import argparse
import functools
import glob
import json
import os
import sys
import textwrap
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.demo_compare import mean_std  # noqa: E402
from benchmarks.contour_grouping import (DEPTH_BINS, DepthProfile, box_depth, box_region,  # noqa: E402
                                         contour_instances, iou, pasted, split_images)

FF = "contours/panoptic_fpn_contours.yaml"
CRBP = "contours/panoptic_crbp_contours.yaml"
TRACER = "contours/panoptic_tracer_contours.yaml"
TRACER_CNN = "contours/panoptic_tracer_cnn_contours.yaml"
TRACER_INK = "contours/panoptic_tracer_ink_contours.yaml"
TRACER_CNN_INK = "contours/panoptic_tracer_cnn_ink_contours.yaml"
# The tracer heads start from Pathfinder's runs trained with the box as the cue (same seed; both
# models: Pathfinder's three cycles, then two cycles of 1000 on the contours drawn as Pathfinder's
# with the box; projects/Pathfinder/experiments/crossings.py). {root}, {seed}: see build_head.
BOXED_TRACER = "{root}/projects/Pathfinder/results/crossings_trained/%s_boxed1000x2/seed{seed}_model.pth"
HEADS = {  # name: (config, overrides)
    "feedforward": (FF, []),
    "crbp": (CRBP, []),
    "crbp_state8": (CRBP, ["MODEL.CRBP.MASK_HEAD.STATE_CHANNELS", "8", "MODEL.CRBP.CELL.NUM_GROUPS", "4",
                           "MODEL.CRBP.STEPS", "20"]),
    "crbp_state16": (CRBP, ["MODEL.CRBP.MASK_HEAD.STATE_CHANNELS", "16", "MODEL.CRBP.CELL.NUM_GROUPS", "8",
                            "MODEL.CRBP.STEPS", "20"]),
    # --tracer: TracerMaskHead on the image itself (C-RBP hGRU / Pathfinder's CNN), from Pathfinder
    "tracer": (TRACER, ["MODEL.CRBP.TRACER.INIT_WEIGHTS", BOXED_TRACER % "crbp_continued_twice_steps64"]),
    "tracer_cnn": (TRACER_CNN, ["MODEL.CRBP.TRACER.INIT_WEIGHTS", BOXED_TRACER % "cnn_continued_twice"]),
    # ... on the ink net's map of thing pixels (TRACER.INK_LAYERS), the tracers from the same runs
    "tracer_ink": (TRACER_INK, ["MODEL.CRBP.TRACER.INIT_WEIGHTS", BOXED_TRACER % "crbp_continued_twice_steps64"]),
    "tracer_cnn_ink": (TRACER_CNN_INK, ["MODEL.CRBP.TRACER.INIT_WEIGHTS", BOXED_TRACER % "cnn_continued_twice"]),
    "tracer_scratch": (TRACER, []),
    "tracer_cnn_scratch": (TRACER_CNN, []),
}
PIXELS = "pixels"  # the normalised image among the cached features
MARKER_DEPTH = DEPTH_BINS[1]  # --marker: own pixels nearer the box's sides than this x its shorter side


def start_markers(masks, boxes):
    """Per instance: its own pixels within MARKER_DEPTH x its box's shorter side of the box's sides
    (where the contour enters its box; the box is the mask's own)."""
    return np.stack([m & (box_depth(b, m.shape) < MARKER_DEPTH) for m, b in zip(masks, boxes)])


def with_masks(image):
    """A split's image (split_images) with its things' masks and start markers, in their order."""
    masks = np.stack([image["ids"] == t["id"] for t in image["things"]])
    return {**image, "masks": masks, "markers": start_markers(masks, [t["box"] for t in image["things"]])}


class RoIInputs:
    """What a head sees of each box: the model's mask pooler on its FPN features and, stacked as
    extra channels, with `pixels` the image itself and with `marker` the instance's start marker,
    each pooled on the same box at the same resolution (ROIAlignV2 at scale 1). With `tracer`, the
    image alone, whole ({"image": [B, 3, H, W]}, as TracerROIHeads gives TracerMaskHead)."""

    def __init__(self, pooler, feature_names, pixels: bool = False, marker: bool = False, context: float = 1.0,
                 tracer: bool = False):
        from detectron2.layers import ROIAlign
        from detectron2.modeling.poolers import ROIPooler

        if tracer and (pixels or marker or context != 1):
            raise ValueError("tracer heads see the image itself and their box: no pixels, marker or context")
        self.tracer = tracer
        self.pooler, self.names = pooler, [] if tracer else list(feature_names)
        self.pixel_pooler = ROIPooler(pooler.output_size, scales=(1.0,), sampling_ratio=0,
                                      pooler_type="ROIAlignV2") if pixels else None
        self.marker_align = ROIAlign(pooler.output_size, 1.0, 0, aligned=True) if marker else None
        self.context = context

    def rois(self, boxes):
        """The region a head sees and predicts for each XYXY box: the box scaled by `context` about
        its centre (not clipped: ROIAlign reads zeros outside the image). With context > 1 a head
        sees where contours continue beyond the box; its instance's own pixels never do."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        centre, half = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]) / 2 * self.context
        return np.concatenate([centre - half, centre + half], axis=1).tolist()

    @property
    def extra_channels(self) -> int:
        return (3 if self.pixel_pooler else 0) + (1 if self.marker_align else 0)

    def __call__(self, features, index, boxes, markers=()):
        """`boxes`: one Boxes per image of `index`; `markers`: with `marker`, one (boxes, H, W) bool
        array per image, an instance's marker for each of its boxes."""
        if self.tracer:
            from crbp_detectron.modeling.tracer_mask_head import IMAGE, THING_PIXELS

            return {IMAGE: features[PIXELS][index], THING_PIXELS: features[THING_PIXELS][index]}
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
def cached_features(model, paths, backbone: bool = True, oracle_ink: bool = False):
    """FPN features of every image of a split (eval mode; not with `backbone` False), the normalised
    image itself ("pixels"; with `oracle_ink` its contours' ground-truth pixels instead, 1 on 0 in
    every channel), the union of its thing masks (THING_PIXELS, an ink net's target), and its
    things, in memory."""
    from crbp_detectron.inference import read_image_rgb
    from crbp_detectron.modeling.tracer_mask_head import THING_PIXELS

    images, features = [], {}
    for image in split_images(paths):
        if not image["things"]:
            continue
        rgb = read_image_rgb(image["image_path"])
        bgr = np.ascontiguousarray(rgb[:, :, ::-1]).astype("float32").transpose(2, 0, 1)
        batch = model.preprocess_image([{"image": torch.as_tensor(bgr)}])
        for name, f in (model.backbone(batch.tensor).items() if backbone else ()):
            features.setdefault(name, []).append(f[0])
        if oracle_ink:
            ink = torch.from_numpy(contour_instances(image)[2]).float()
            features.setdefault(PIXELS, []).append(ink.expand_as(batch.tensor[0]).contiguous())
        else:
            features.setdefault(PIXELS, []).append(batch.tensor[0])
        images.append(with_masks(image))
        features.setdefault(THING_PIXELS, []).append(torch.from_numpy(images[-1]["masks"].any(0)).float()[None])
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
    """The head of `config` with `overrides` (in a value, {root} is the repository and {seed} the
    run's seed), its weights drawn with `seed`."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.mask_head import build_mask_head

    from crbp_detectron.config import load_config
    from crbp_detectron.modeling.tracer_mask_head import IMAGE

    cfg = load_config(config, [str(v).format(root=ROOT, seed=seed) for v in overrides])
    torch.manual_seed(seed)
    if is_tracer(cfg):
        return cfg, build_mask_head(cfg, {IMAGE: ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN), stride=1)})
    channels = cfg.MODEL.FPN.OUT_CHANNELS + extra_channels
    res = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
    return cfg, build_mask_head(cfg, ShapeSpec(channels=channels, width=res, height=res))


def is_tracer(cfg) -> bool:
    return cfg.MODEL.ROI_MASK_HEAD.NAME == "TracerMaskHead"


def train_head(head, cfg, inputs, images, features, to_contiguous, iterations, seed, batch=4, lr=None, log=None,
               optimizer="sgd", min_iou=0.5, cycles=1):
    """`cycles` warm restarts of `iterations` each (Pathfinder's recipe): every cycle starts from the
    previous one's weights with a fresh optimizer and the same warm-up and cosine schedule."""
    from detectron2.utils.events import EventStorage

    from crbp_detectron.crbp import collect_recurrence, penalty_losses

    lr = lr or cfg.SOLVER.BASE_LR
    params = [p for p in head.parameters() if p.requires_grad]
    warmup = max(1, min(100, iterations // 10))
    rng = np.random.default_rng(seed)
    size = images[0]["masks"].shape[1]
    head.train()
    history, start = [], time.time()
    for it in range(iterations * cycles):
        if it % iterations == 0:
            if optimizer == "adam":
                opt = torch.optim.Adam(params, lr=lr)
            else:
                opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * i / iterations)))
        pick = rng.choice(len(images), batch, replace=False)
        instances = [make_instances(images[i], inputs.rois(jittered_boxes(rng, [t["box"] for t in images[i]["things"]], size,
                                                                          min_iou)), to_contiguous, train=True) for i in pick]
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
        history[-1].update({f"backward_residual/{name}": s.stats[-1].backward.residual for name, s in summaries.items()
                            if s.stats and s.stats[-1].backward is not None})  # the RBP solve's, this step
        if log and (it + 1) % 100 == 0:
            log(f"iter {it + 1} ({(time.time() - start) / (it + 1):.2f} s/it): " + ", ".join(f"{k} {np.mean([h[k] for h in history[-100:]]):.4f}" for k in history[-1]))
    return history


@torch.no_grad()
def head_predictions(head, inputs, images, features, to_contiguous):
    """Per image: the head's masks and probabilities on its things' oracle boxes (their regions),
    pasted into the image, in the order of its things."""
    head.eval()
    for i, image in enumerate(images):
        rois = inputs.rois([t["box"] for t in image["things"]])
        inst = make_instances(image, rois, to_contiguous, train=False)
        pooled = inputs(features, slice(i, i + 1), [inst.pred_boxes], [image["markers"]])
        out = head(pooled, [inst])[0]
        yield pasted(out.pred_masks[:, 0], rois, image["masks"].shape[1:])


def evaluate_head(head, inputs, images, features, to_contiguous):
    """Oracle-box mask IoU and own / other probabilities per group, and for crossing contours the
    probabilities by depth into the box (a pixel's distance to the nearest box side over the box's
    shorter side, in DEPTH_BINS): where a head without reach sees the box's sides and where not."""
    rows = []
    profile = DepthProfile()
    for image, (masks, probs) in zip(images, head_predictions(head, inputs, images, features, to_contiguous)):
        _, _, every = contour_instances(image)
        for t, predicted, prob, mask in zip(image["things"], masks, probs, image["masks"]):
            row = {"crossing": t["crossing"], "mask_iou": iou(predicted, mask)}
            if t["crossing"] is not None:
                row["iou_lost"] = iou_lost(predicted, mask, every)
                others = every & ~mask & box_region(t["box"], mask.shape)
                row["own_probability"] = float(prob[mask].mean())
                row["other_probability"] = float(prob[others].mean()) if others.any() else None
                if t["crossing"]:
                    profile.add(prob, mask, others, t["box"])
            rows.append(row)
    out = {"iou_lost": {}}
    for group, sel in (("crossing", lambda r: r["crossing"] is True), ("single", lambda r: r["crossing"] is False),
                       ("shapes", lambda r: r["crossing"] is None)):
        rs = [r for r in rows if sel(r)]
        out[group] = {"n": len(rs), "mask_iou": float(np.mean([r["mask_iou"] for r in rs]))}
        for k in ("own_probability", "other_probability"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                out[group][k] = float(np.mean(vals))
        if group != "shapes":  # contours only
            out["iou_lost"][group] = ({part: float(np.mean([r["iou_lost"][part] for r in rs])) for part in IOU_LOST}
                                      if rs else None)
    out["crossing_by_depth"] = profile.result()
    return out


@torch.no_grad()
def ink_quality(head, images, features, threshold: float = 0.5):
    """How well a tracer head's ink net finds the thing pixels on a split (whole images, eval
    mode): IoU, precision and recall of its probability > `threshold` against the union of the
    thing masks, and its recall of the contours' pixels alone."""
    from crbp_detectron.modeling.tracer_mask_head import THING_PIXELS

    head.eval()
    found = head.ink_net(features[PIXELS]).sigmoid()[:, 0].numpy() > threshold
    things = features[THING_PIXELS][:, 0].numpy() > 0.5
    contours = np.stack([contour_instances(image)[2] for image in images])
    both = (found & things).sum()
    return {"threshold": threshold, "iou": float(both / max((found | things).sum(), 1)),
            "precision": float(both / max(found.sum(), 1)), "recall": float(both / max(things.sum(), 1)),
            "contour_recall": float((found & contours).sum() / max(contours.sum(), 1))}


IOU_LOST = ("other_contours", "background", "missed_dashes", "missed_edges")


def iou_lost(predicted, own, every):
    """Where a contour's mask IoU goes: the union of its predicted and its own pixels split into
    own pixels predicted (the IoU), other contours' pixels predicted (a grouping error), pixels of
    no contour predicted (gaps between dashes, background: imprecision), own pixels missed in dashes
    the mask leaves out (under half of the dash predicted: a decision against the dash) and own
    pixels missed at the edges of dashes it keeps (imprecision); the shares of the last four
    (IOU_LOST), which sum with the IoU to 1."""
    import cv2

    union = max(int((predicted | own).sum()), 1)
    extra, missed = predicted & ~own, own & ~predicted
    count, dashes = cv2.connectedComponents(own.astype(np.uint8), connectivity=8)
    kept = np.bincount(dashes[predicted & own], minlength=count) >= np.bincount(dashes.ravel(), minlength=count) / 2
    left_out = missed & ~kept[dashes]
    return {"other_contours": float((extra & every).sum() / union),
            "background": float((extra & ~every).sum() / union),
            "missed_dashes": float(left_out.sum() / union),
            "missed_edges": float((missed & ~left_out).sum() / union)}


class GroundTruthHead(torch.nn.Module):
    """A perfect mask head: for each RoI, its own instance's ground-truth mask cropped to the RoI's
    region on the mask head's output grid (`side`), as Detectron2 makes mask targets. `images`: the
    images the head is called on, in that order (one call per image, its things' RoIs)."""

    def __init__(self, side: int, images):
        super().__init__()
        self.side, self.masks = side, iter([image["masks"] for image in images])

    def forward(self, x, instances):
        from detectron2.structures import BitMasks

        inst = instances[0]
        inst.pred_masks = BitMasks(torch.from_numpy(next(self.masks))).crop_and_resize(
            inst.pred_boxes.tensor, self.side).float()[:, None]
        return instances


def resolution_bound(inputs, images, features, to_contiguous):
    """What a perfect head scores with these inputs (with --context, on the larger region at the
    same grid): crossing and single contours' mask IoU, oracle boxes, and where the rest is lost."""
    side = 2 * inputs.pooler.output_size[0]  # the deconv doubles the pooler's grid
    result = evaluate_head(GroundTruthHead(side, images), inputs, images, features, to_contiguous)
    scores = {group: result[group]["mask_iou"] if result[group]["n"] else None for group in ("crossing", "single")}
    return {**scores, "iou_lost": result["iou_lost"]}


def crossing_inputs(inputs, features, index, image):
    """The image's crossing contours (their indices among its things), their regions (Boxes) and
    what a head sees on them; None where the image has no crossing contour."""
    from detectron2.structures import Boxes

    crossing = [k for k, t in enumerate(image["things"]) if t["crossing"]]
    if not crossing:
        return None
    boxes = Boxes(torch.tensor(inputs.rois([image["things"][k]["box"] for k in crossing]), dtype=torch.float32))
    return crossing, boxes, inputs(features, slice(index, index + 1), [boxes], [image["markers"][crossing]])


INFLUENCE_BINS = [0.0, 0.1, 0.2, 0.3, 0.5, 1.5]  # distance from the marker, in box sides


@torch.no_grad()
def marker_influence(head, inputs, images, features, to_contiguous):
    """How far a --marker head carries its marker: for every crossing contour (oracle box), the
    change of the head's mask logit when the marker channel is zeroed, on the head's output grid,
    by distance from the marker (in box sides: the grid spans the box) on the contour's own pixels
    and on the other contours' pixels. A head that follows its contour from the marker changes
    its own pixels far from it; one that does not, only near it."""
    import cv2
    from detectron2.structures import BitMasks

    head.eval()
    sums = {k: np.zeros((len(INFLUENCE_BINS) - 1, 2)) for k in ("own", "other")}  # (sum, count) per bin
    for i, image in enumerate(images):
        found = crossing_inputs(inputs, features, i, image)
        if found is None:
            continue
        crossing, boxes, x = found
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


def head_equilibrium(head, inputs, images, features, to_contiguous, far_factor: int = 4):
    """Whether a recurrent head's state is at its equilibrium on the val split's crossing contours
    (oracle boxes), as Pathfinder's equilibrium diagnostic asks of its hGRU: the cell run from h0
    to `far_factor` x its training steps (the horizon), the relative step size ||h_t - h_(t-1)|| /
    ||h_t|| per step (mean over RoIs), the distance of h_horizon to h_far, the spectral radius of
    dF/dh at the horizon and at the far step (power iteration; the RBP gradient is the fixed
    point's only if the state is there and rho < 1), the largest column sum of dF/dh at the horizon
    (what C-RBP's Lipschitz-constant penalty holds under its lambda: 1^T J, signed), and the crossing
    IoU with the head evaluated at the horizon, 2x and far_factor x its steps."""
    from crbp_detectron.crbp import lipschitz_penalty, relative_distance, spectral_radius

    head.eval()
    recurrence = head.recurrence
    horizon = recurrence.steps
    far = far_factor * horizon
    found = [crossing_inputs(inputs, features, i, image) for i, image in enumerate(images)]
    with torch.no_grad():
        pooled = torch.cat([x for _, _, x in filter(None, found)])
        x = pooled if head.drive is None else head.drive(pooled)
        h = recurrence.initial_state(x)
        steps = []
        for t in range(far):  # keep only the states reported on (one is 13 MB for 266 RoIs; 256 would be 3.4 GB)
            h_next = recurrence.cell(x, h)
            steps.append(relative_distance(h, h_next))
            h = h_next
            if t == horizon - 1:
                h_horizon = h
    at_horizon = h_horizon.detach().requires_grad_(True)
    with torch.enable_grad():
        _, column_sums = lipschitz_penalty(recurrence.cell(x, at_horizon), at_horizon, create_graph=False)
    crossing_iou = {}
    saved = recurrence.test_steps
    try:
        for label, k in (("horizon", horizon), ("2x", 2 * horizon), (f"{far_factor}x", far)):
            recurrence.test_steps = k
            crossing_iou[label] = evaluate_head(head, inputs, images, features, to_contiguous)["crossing"]["mask_iou"]
    finally:
        recurrence.test_steps = saved
    return {"horizon": horizon, "far": far, "rois": int(x.shape[0]),
            "step_size": [float(f"{v:.4g}") for v in steps],
            "distance_to_far_at_horizon": relative_distance(h_horizon, h),
            "rho_at_horizon": spectral_radius(recurrence.cell, x, h_horizon),
            "rho_at_far": spectral_radius(recurrence.cell, x, h),
            "max_column_sum_at_horizon": float(column_sums.max()),
            "crossing_iou": crossing_iou}


PICTURE_CONTOURS = 6


def picture_contours(images, count=PICTURE_CONTOURS):
    """The crossing contours a picture shows: (image index, thing index) of the first crossing
    contour of the first `count` images that have one."""
    shown = []
    for i, image in enumerate(images):
        crossing = [k for k, t in enumerate(image["things"]) if t["crossing"]]
        if crossing:
            shown.append((i, crossing[0]))
        if len(shown) == count:
            break
    return shown


@torch.no_grad()
def write_head_picture(runs, inputs, images, features, to_contiguous, path):
    """Crossing contours (picture_contours) in columns: the input with the box (and the oracle
    marker in magenta where the heads saw it), the ground truth, and each run's head's mask
    probability, coloured by whose pixels it covers. `runs`: (run JSON, its trained head) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crbp_detectron.utils.plotting import GROUPING_LEGEND, grouping_colours
    from crbp_detectron.inference import read_image_rgb

    shown = picture_contours(images)
    chosen = [images[i] for i, _ in shown]
    chosen_features = {n: f[[i for i, _ in shown]] for n, f in features.items()}
    probabilities = [[probs[k] for (_, probs), (_, k) in zip(
        head_predictions(head, inputs, chosen, chosen_features, to_contiguous), shown)] for _, head in runs]
    columns = ["input and box" + (" (marker: magenta)" if inputs.marker_align is not None else ""), "ground truth"] + [
        f"{run['head']}, seed {run['seed']}\n{training_label(run)}\n(crossing IoU {run['val']['crossing']['mask_iou']:.3f})"
        for run, _ in runs]
    fig, axes = plt.subplots(len(shown), len(columns), figsize=(2.6 * len(columns), 2.8 * len(shown)), squeeze=False)
    for row, (image, (_, k)) in enumerate(zip(chosen, shown)):
        rgb = read_image_rgb(image["image_path"])
        own = image["masks"][k]
        _, _, every = contour_instances(image)
        given = rgb.copy()
        if inputs.marker_align is not None:
            given[image["markers"][k]] = (255, 0, 255)
        panels = [given, grouping_colours(rgb, own, every, own)] + [
            grouping_colours(rgb, own, every, probs[row]) for probs in probabilities]
        box = image["things"][k]["box"]
        region = inputs.rois([box])[0]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(panel, interpolation="nearest")
            for (x0, y0, x1, y1), style in ((box, "-"), (region, "--")):
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="cyan", lw=1,
                                           ls=style))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=8)
    legend = textwrap.fill("mask probability blended in: " + GROUPING_LEGEND, width=30 * len(columns))
    fig.text(0.5, 0.005, legend, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def input_variant(pixels: bool, marker: bool, context: float, oracle_ink: bool = False) -> str:
    """The file-name suffix of a run's inputs, e.g. '_pixels_marker', '_context1.25', '_oracle_ink'."""
    return ("_pixels" if pixels else "") + ("_marker" if marker else "") + (f"_context{context:g}" if context != 1 else "") \
        + ("_oracle_ink" if oracle_ink else "")


# ----------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="a trained model whose backbone and FPN are frozen")
    parser.add_argument("--backbone-config", default=FF, help="the config of --weights")
    parser.add_argument("--heads", nargs="*", default=[], choices=list(HEADS))
    parser.add_argument("--head", nargs="+", action="append", default=[], metavar=("NAME", "CONFIG"),
                        help="another head: NAME CONFIG [KEY VALUE ...]")
    parser.add_argument("--iterations", type=int, default=2000, help="per cycle")
    parser.add_argument("--cycles", type=int, default=1,
                        help="warm restarts: cycles of --iterations, each with a fresh optimizer and schedule")
    parser.add_argument("--lr", type=float, default=None, help="default: the config's SOLVER.BASE_LR")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--min-iou", type=float, default=0.5, help="training boxes' IoU with their ground truth at least")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--pixels", action="store_true", help="the image's pixels on the box as 3 more input channels")
    parser.add_argument("--marker", action="store_true",
                        help="where the instance's contour enters its box (oracle) as one more input channel")
    for flag, what in (("influence", "how far the marker reaches (marker_influence; give --marker)"),
                       ("equilibrium", "whether the recurrent heads are at their equilibrium (head_equilibrium)"),
                       ("bound", "the resolution bound of these inputs' region and where it loses (resolution_bound)"),
                       ("lost", "where the heads lose their IoU (iou_lost)")):
        parser.add_argument(f"--{flag}", action="store_true",
                            help=f"only measure {what}, from the folder's saved runs with these input flags that lack it")
    parser.add_argument("--picture", action="store_true",
                        help="only draw the masks of the folder's heads (saved runs with these input flags, the "
                             "lowest seed of each) on crossing contours: contour_mask_head_masks[_tracer]<inputs>.png")
    parser.add_argument("--context", type=float, default=1.0,
                        help="each head sees and predicts its box scaled by this about its centre: > 1 shows where "
                             "contours leave the box (an instance's own never do)")
    parser.add_argument("--tracer", action="store_true",
                        help="the heads are tracer heads (TracerMaskHead: the image itself, the box dimmed around): "
                             "no backbone features, so --weights is not needed")
    parser.add_argument("--oracle-ink", action="store_true",
                        help="with --tracer: the image replaced by its contours' ground-truth pixels (1 on 0, every "
                             "channel), as Pathfinder draws its paths: what a tracer groups given a perfect ink "
                             "front-end (a diagnostic; --iterations 0 measures the start weights as they are)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="folder for one JSON per head and seed, and the report")
    parser.add_argument("--report-only", action="store_true", help="the report from the folder's JSONs")
    args = parser.parse_args(argv)
    if args.report_only:
        print(write_report(args.out))
        return 0
    if not args.weights and not args.tracer:
        parser.error("--weights is required (a trained model whose backbone and FPN are frozen)")
    if args.oracle_ink and not args.tracer:
        parser.error("--oracle-ink is for --tracer heads")
    if args.tracer and (args.pixels or args.marker or args.context != 1 or args.equilibrium or args.influence):
        parser.error("--tracer heads see the image and their box only: no --pixels, --marker, --context, "
                     "--equilibrium or --influence")
    torch.set_num_threads(args.threads)

    import crbp_detectron  # noqa: F401
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    from crbp_detectron.checkpoint import Checkpointer
    from crbp_detectron.config import load_config
    from crbp_detectron.data.contours import generate_contour_dataset, register_contour_datasets
    from crbp_detectron.modeling.tracer_mask_head import THING_PIXELS

    paths = generate_contour_dataset(progress=False)
    register_contour_datasets(progress=False)
    base = load_config(args.backbone_config, ["MODEL.WEIGHTS", args.weights or ""])
    model = build_model(base).eval()
    if args.weights:  # a tracer head needs only the model's input normalisation
        Checkpointer(model).load(args.weights)
    to_contiguous = MetadataCatalog.get("crbp_contours_train_separated").thing_dataset_id_to_contiguous_id
    start = time.time()
    train_images, train_features = cached_features(model, paths["train"], not args.tracer, args.oracle_ink)
    val_images, val_features = cached_features(model, paths["val"], not args.tracer, args.oracle_ink)
    print(f"features of {len(train_images)} + {len(val_images)} images in {time.time() - start:.0f} s", flush=True)
    inputs = RoIInputs(model.roi_heads.mask_pooler, model.roi_heads.mask_in_features, args.pixels, args.marker,
                       args.context, args.tracer)
    keep = inputs.names + ([PIXELS] if args.pixels or args.tracer else []) + ([THING_PIXELS] if args.tracer else [])
    train_features = {n: train_features[n] for n in keep}
    val_features = {n: val_features[n] for n in keep}
    pixel_scale = float(train_features[PIXELS].std()) if args.pixels else None
    if args.pixels:  # the backbone's input units (std ~60) to unit std, as the features' scale is a few units
        for split in (train_features, val_features):
            split[PIXELS] = split[PIXELS] / pixel_scale
    val = (val_images, val_features, to_contiguous)
    bound = functools.lru_cache(maxsize=None)(lambda: resolution_bound(inputs, *val))  # one per region, not per head
    # flag: (key in a run's "val", the runs that need it (lack it, or an older form of it), the measurement of a head)
    measurements = {
        "influence": ("marker_influence", lambda run, head: run.get("marker") and "marker_influence" not in run["val"],
                      lambda head: marker_influence(head, inputs, *val)),
        "equilibrium": ("equilibrium", lambda run, head: hasattr(head, "recurrence") and "equilibrium" not in run["val"],
                        lambda head: head_equilibrium(head, inputs, *val)),
        "bound": ("resolution_bound", lambda run, head: "iou_lost" not in run["val"].get("resolution_bound", {}),
                  lambda head: bound()),
        "lost": ("iou_lost", lambda run, head: "iou_lost" not in run["val"],
                 lambda head: evaluate_head(head, inputs, *val)["iou_lost"]),
    }
    measure = [flag for flag in measurements if getattr(args, flag)]

    def saved_runs():
        """The folder's runs whose heads saw these inputs: (JSON path, run)."""
        for path in sorted(glob.glob(os.path.join(args.out, "*.json"))):
            with open(path) as f:
                result = json.load(f)
            if (bool(result.get("marker")) == args.marker and bool(result.get("pixels")) == args.pixels
                    and result.get("context", 1.0) == args.context and bool(result.get("tracer")) == args.tracer
                    and bool(result.get("oracle_ink")) == args.oracle_ink):
                yield path, result

    def trained_head(path, result):
        _, head = build_head(result["config"], result["overrides"], result["seed"], inputs.extra_channels)
        head.load_state_dict(torch.load(path[:-len(".json")] + ".pth"))
        return head

    if args.picture:
        lowest = {}
        for path, result in saved_runs():
            if result["head"] not in lowest or result["seed"] < lowest[result["head"]][1]["seed"]:
                lowest[result["head"]] = (path, result)
        if not lowest:
            parser.error(f"--picture: no runs in {args.out} with these input flags")
        kind = "_tracer" if args.tracer else ""  # the runs are told apart by their heads, the pictures by this
        picture = os.path.join(args.out, f"contour_mask_head_masks{kind}"
                                         f"{input_variant(args.pixels, args.marker, args.context, args.oracle_ink)}.png")
        write_head_picture([(result, trained_head(path, result)) for path, result in lowest.values()], inputs, *val,
                           picture)
        print(picture)
        if not measure:
            return 0
    if measure:
        if args.influence and not args.marker:
            parser.error("--influence measures --marker runs: give --marker (and --pixels if they had it)")
        for path, result in saved_runs():
            head = trained_head(path, result)
            todo = [(key, fn) for key, applies, fn in (measurements[f] for f in measure)
                    if applies(result, head)]
            if not todo:
                continue
            for key, fn in todo:
                result["val"][key] = fn(head)
                print(path, key, json.dumps(result["val"][key])[:400], flush=True)
            with open(path, "w") as f:
                json.dump(result, f, indent=1)
        print(write_report(args.out))
        return 0
    heads = {name: HEADS[name] for name in args.heads}
    heads.update({h[0]: (h[1], h[2:]) for h in args.head})
    mismatched = [name for name, (config, _) in heads.items() if is_tracer(load_config(config)) != args.tracer]
    if mismatched:
        parser.error(f"heads {mismatched}: " + ("not tracer heads: leave out --tracer" if args.tracer else
                                                "tracer heads (TracerMaskHead) need --tracer"))
    os.makedirs(args.out, exist_ok=True)
    for name, (config, overrides) in heads.items():
        for seed in args.seeds:
            start_only = "" if args.iterations else "_start"  # --iterations 0: the start weights measured
            path = os.path.join(args.out, f"{name}{input_variant(args.pixels, args.marker, args.context, args.oracle_ink)}"
                                          f"{start_only}_seed{seed}.json")
            if os.path.isfile(path):
                continue
            cfg, head = build_head(config, overrides, seed, inputs.extra_channels)
            start = time.time()
            history = train_head(head, cfg, inputs, train_images, train_features, to_contiguous, args.iterations, seed,
                                 lr=args.lr, optimizer=args.optimizer, min_iou=args.min_iou, cycles=args.cycles,
                                 log=lambda m: print(f"{name} seed {seed} {m}", flush=True))
            seconds = time.time() - start
            result = {"head": name, "config": config, "overrides": list(overrides), "seed": seed,
                      "iterations": args.iterations, "cycles": args.cycles, "weights": args.weights, "train_seconds": seconds,
                      "optimizer": args.optimizer, "lr": args.lr, "min_iou": args.min_iou, "pixels": args.pixels,
                      "pixel_scale": pixel_scale, "marker": args.marker, "context": args.context,
                      "tracer": args.tracer, "oracle_ink": args.oracle_ink, "train_threads": args.threads,
                      "loss_last_100": {k: float(np.mean([h[k] for h in history[-100:]])) for k in history[-1]}
                      if history else {},
                      "val": evaluate_head(head, inputs, val_images, val_features, to_contiguous)}
            if getattr(head, "ink_net", None) is not None:
                result["val"]["ink"] = ink_quality(head, val_images, val_features)
            if args.marker:
                result["val"]["marker_influence"] = marker_influence(head, inputs, val_images, val_features,
                                                                     to_contiguous)
            result["val"]["resolution_bound"] = bound()
            with open(path, "w") as f:
                json.dump(result, f, indent=1)
            torch.save(head.state_dict(), path[:-len(".json")] + ".pth")  # small: for diagnostics
            print(json.dumps(result["val"]), flush=True)
    print(write_report(args.out))
    return 0


def region_label(run) -> str:
    context = run.get("context", 1.0)  # runs before --context saw the box itself
    return f"box x {context:g}" if context != 1 else "box"


def input_label(run) -> str:
    """What a run's heads saw: the RoI features, and the pixels and the marker where it added them,
    on the box or (--context) a larger region; a tracer head, the image around the box."""
    if run.get("tracer"):
        seen = ("contours' true pixels as ink (oracle)" if run.get("oracle_ink")
                else "ink net's thing pixels" if "ink" in run["val"] else "image")
        return f"{seen} window, outside the box dimmed (tracer)"
    region = region_label(run)
    return (" + ".join(["features"] + ["pixels"] * bool(run.get("pixels"))
                       + ["start marker (oracle)"] * bool(run.get("marker")))
            + (f", {region}" if region != "box" else ""))


def plot_equilibrium(runs, path):
    """The relative step size against the step for every run with an equilibrium measurement (one
    colour per head and input, a marker at its training horizon)."""
    from crbp_detectron.utils.plotting import saved_panels

    kinds = sorted({(r["head"], input_label(r), training_label(r)) for r in runs})
    labelled = set()  # one legend entry per kind
    with saved_panels(path, "Recurrent mask heads past their training steps (val, crossing contours)",
                      [("step", "relative step size ||h_t - h_t-1|| / ||h_t||")], figsize=(9, 5)) as (ax,):
        for r in runs:
            e, kind = r["val"]["equilibrium"], (r["head"], input_label(r), training_label(r))
            color = f"C{kinds.index(kind)}"
            label = None if kind in labelled else f"{r['head']}: {input_label(r)}, {iterations_label(r)} its"
            labelled.add(kind)
            ax.semilogy(range(1, len(e["step_size"]) + 1), e["step_size"], color=color, label=label, lw=1)
            ax.plot([e["horizon"]], [e["step_size"][e["horizon"] - 1]], "o", color=color, ms=4)


def iterations_label(run) -> str:
    cycles = run.get("cycles", 1)  # runs before --cycles trained one
    if not run["iterations"]:
        return "none (start weights)"
    return f"{cycles} x {run['iterations']}" if cycles > 1 else str(run["iterations"])


def optimizer_label(run) -> str:
    return f"{run.get('optimizer', 'sgd')} {run.get('lr') or 'config'}"


def training_label(run) -> str:
    """Optimizer, learning rate and iterations, e.g. 'adam 0.002, 3 x 1000'."""
    if not run["iterations"]:
        return iterations_label(run)
    return f"{optimizer_label(run)}, {iterations_label(run)}"


TRACER_NOTE = """\
Tracer heads (--tracer: TracerMaskHead) see no backbone features: each RoI's 128 px window of the
image about its box, at half scale (64 x 64), every pixel outside the box at 0.4 of its value; the
C-RBP tracer (hGRU, 64 steps) and the CNN tracer (six 3 x 3 conv layers) start from Pathfinder's runs
given the box as their cue (projects/Pathfinder/results/pathfinder_crossings.md), the same seed.
The ink heads (tracer_ink, tracer_cnn_ink: TRACER.INK_LAYERS 4) trace an ink net's probability that a
pixel is a thing's (four 3 x 3 convs at full resolution, trained on the union of the thing masks)
instead of the image; ink IoU: its map > 0.5 against that union on the val split's whole images.
Seconds per iteration: one thread, on a CPU shared with the other runs (indicative)."""


def seeds_table(runs, min_seeds: int = 3) -> str:
    """One row per head, input and training with at least `min_seeds` seeds: mean ± std of the
    oracle-box IoUs and crossing contours' own / other probability, seconds per iteration."""
    from crbp_detectron.utils.tables import markdown_table

    groups = {}
    for r in runs:
        groups.setdefault((r["head"], input_label(r), training_label(r)), []).append(r)
    pct = lambda rs, group, key: mean_std([100 * r["val"][group].get(key, float("nan")) for r in rs])  # noqa: E731
    rows = [[head, label, training, ", ".join(str(r["seed"]) for r in rs),
             pct(rs, "crossing", "mask_iou"), pct(rs, "single", "mask_iou"), pct(rs, "shapes", "mask_iou"),
             pct(rs, "crossing", "own_probability"), pct(rs, "crossing", "other_probability"),
             mean_std([100 * r["val"]["ink"]["iou"] if "ink" in r["val"] else None for r in rs]),
             mean_std([r["train_seconds"] / (r["iterations"] * r.get("cycles", 1)) if r["iterations"] else None
                       for r in rs], 2)]
            for (head, label, training), rs in sorted(groups.items()) if len(rs) >= min_seeds]
    return markdown_table(["head", "input", "training", "seeds", "crossing IoU (%)", "single IoU (%)",
                           "shapes IoU (%)", "own prob. (crossing, %)", "other prob. (crossing, %)", "ink IoU (%)",
                           "s / iteration"],
                          rows)


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
                     optimizer_label(r), str(r.get("min_iou", 0.5)),
                     iterations_label(r), str(r["seed"]), f"{v['crossing']['mask_iou']:.3f}",
                     f"{v['single']['mask_iou']:.3f}",
                     f"{v['crossing']['own_probability']:.2f} / {v['crossing']['other_probability']:.2f}"] + by_depth)
    bins = DEPTH_BINS
    reach = [r for r in runs if r["val"].get("marker_influence")]
    reach_table = markdown_table(
        ["head", "input", "training", "seed", "on"] + [f"{a}-{b}" for a, b in zip(INFLUENCE_BINS, INFLUENCE_BINS[1:])],
        [[r["head"], input_label(r), training_label(r), str(r["seed"]), key] + ["-" if v is None else f"{v:.3f}" for v in r["val"]["marker_influence"][key]]
         for r in reach for key in ("own", "other")]) if reach else ""
    settled = [r for r in runs if r["val"].get("equilibrium")]
    settled_table = markdown_table(
        ["head", "input", "training", "seed", "horizon", "step size at horizon", "at 4x", "distance to h_far at horizon",
         "rho(J) at horizon", "rho(J) at far", "max column sum 1^T J at horizon", "crossing IoU at horizon / 2x / 4x"],
        [[r["head"], input_label(r), training_label(r), str(r["seed"]), str(e["horizon"]), f"{e['step_size'][e['horizon'] - 1]:.4f}",
          f"{e['step_size'][-1]:.4f}", f"{e['distance_to_far_at_horizon']:.3f}", f"{e['rho_at_horizon']:.3f}",
          f"{e['rho_at_far']:.3f}", f"{e['max_column_sum_at_horizon']:.3f}" if "max_column_sum_at_horizon" in e else "-",
          " / ".join(f"{v:.3f}" for v in e["crossing_iou"].values())]
         for r in settled for e in [r["val"]["equilibrium"]]]) if settled else ""
    bounds = {region_label(r): r["val"]["resolution_bound"] for r in runs
              if r["val"].get("resolution_bound")}
    lost = [r for r in runs if r["val"].get("iou_lost")]
    parts = lambda scores, lost: [f"{x:.3f}" for group in ("crossing", "single")  # noqa: E731
                                  for x in [scores[group]] + [lost[group][p] for p in IOU_LOST]]
    lost_table = markdown_table(
        ["head", "input", "training", "seed"] + [h for group in ("crossing", "single") for h in (
            f"{group} IoU", "lost to other contours", "to no contour", "own dashes left out", "own dashes' edges")],
        [["ground truth (the bound)", region, "-", "-"] + parts(b, b["iou_lost"])
         for region, b in sorted(bounds.items()) if "iou_lost" in b]
        + [[r["head"], input_label(r), training_label(r), str(r["seed"])]
           + parts({g: r["val"][g]["mask_iou"] for g in ("crossing", "single")}, r["val"]["iou_lost"]) for r in lost]
    ) if lost else ""
    bounds_table = markdown_table(["region", "crossing IoU", "single IoU"],
                                  [[region, f"{b['crossing']:.3f}", f"{b['single']:.3f}"]
                                   for region, b in sorted(bounds.items())]) if bounds else ""
    if settled:
        plot_equilibrium(settled, os.path.join(folder, "contour_mask_head_equilibrium.png"))
    pictures = sorted(n for n in os.listdir(folder) if n.startswith("contour_mask_head_masks") and n.endswith(".png"))
    text = "\n".join([
        "# Mask heads alone on frozen features (benchmarks/contour_mask_head.py)", "",
        "A diagnostic, not a comparison of trained models: one backbone's features, oracle boxes, val split.",
        "Depth: a pixel's distance to the nearest side of the instance's box over the box's shorter side",
        "(0 at the sides, 0.5 at the centre); 'own' is the mean mask probability on the contour's pixels,",
        "'other' on the other contours' pixels inside its box. Input: the RoI features of the mask pooler",
        "(FPN levels, 28 x 28); with --pixels also the image's pixels on the box at the same resolution; with",
        f"--marker also the instance's own pixels within {MARKER_DEPTH} x its box's shorter side of the box's sides",
        "(where its contour enters the box: an oracle cue, as Pathfinder's marker); 'box x F' (--context F):",
        "the head sees and predicts its box scaled by F about its centre (where contours leave the box).",
        f"Backbone weights: {sorted({r['weights'] for r in runs if r['weights']})} (tracer heads: none).", "",
        "## Every head trained on three or more seeds (mean ± std over seeds)", "",
        TRACER_NOTE, "", seeds_table(runs), "", "## Every run", "",
        markdown_table(["head", "input", "overrides", "optimizer, lr", "train box IoU >=", "iterations", "seed",
                        "crossing IoU", "single IoU", "crossing own / other prob.",
                        f"own prob. by depth {bins}", "other prob. by depth"], rows), ""]
        + (["## The resolution bound of each region", "",
            "What a perfect head scores (each RoI's own ground-truth mask on the head's 56 x 56 output grid over",
            "its region, pasted back; val split, oracle boxes): a larger region (--context) samples the box more",
            "coarsely. (python benchmarks/contour_mask_head.py --bound ...; every run since measures it)", "",
            bounds_table, ""] if bounds else [])
        + (["## Where the IoU is lost", "",
            "Each contour's predicted and own pixels together (oracle box, val split, mask pasted into the image)",
            "split five ways: own pixels predicted (the IoU), other contours' pixels predicted (grouping errors),",
            "pixels of no contour predicted (the gaps between dashes and the background beside them: imprecision),",
            "own pixels missed in dashes the mask leaves out (under half of the dash predicted: a decision against",
            "the dash) and at the edges of the dashes it keeps (imprecision); mean over contours, so each group's",
            "five numbers sum to 1. The ground truth's row is the perfect head's (the resolution bound).",
            "(python benchmarks/contour_mask_head.py --lost [--marker] [--pixels] [--context F] ...; every run since",
            "measures it)", "", lost_table, ""] if lost else [])
        + (["## How far the marker reaches", "",
            "The mean change of the mask logit (absolute) when the marker channel is zeroed, crossing contours,",
            "oracle boxes, val split, by distance from the marker in box sides (on the head's output grid), on",
            "the contour's own pixels and on the other contours' pixels in its box: a head that follows its",
            "contour from the marker changes its own pixels far from the marker, and not the other contours'.",
            "(python benchmarks/contour_mask_head.py --influence --marker ...)", "", reach_table, ""] if reach else [])
        + (["## Is the recurrent head at its equilibrium?", "",
            "Each recurrent head's cell run from h0 to 4x its training steps (the horizon) on the val split's",
            "crossing contours (oracle boxes): the relative step size ||h_t - h_t-1|| / ||h_t|| (what the forward's",
            "residual test sees), the distance of h at the horizon to h at 4x, the spectral radius of dF/dh by",
            "power iteration (the RBP gradient is the fixed point's only where the state is there and rho < 1), the",
            "largest column sum of dF/dh (what the LCP holds under its lambda; '-': runs measured before it was",
            "recorded), and the crossing IoU with the head evaluated at 1x, 2x and 4x its steps.",
            "(python benchmarks/contour_mask_head.py --equilibrium [--marker] [--context F] ...)", "", settled_table, "",
            "![step size per step](contour_mask_head_equilibrium.png)", ""]
           if settled else [])
        + (["## Masks on crossing contours", "",
            "Each head's mask probability (the lowest seed of each head trained on those inputs) on the first",
            f"{PICTURE_CONTOURS} crossing contours of the val split, oracle boxes; one picture per input.",
            "(python benchmarks/contour_mask_head.py --picture [--marker] [--pixels] [--context F] ...)", ""]
           + [f"![masks]({name})" for name in pictures] + [""] if pictures else []))
    with open(os.path.join(folder, "contour_mask_head.md"), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    sys.exit(main())

"""The embedded demo dataset: a small, seeded, synthetic COCO-panoptic dataset, so that the whole
pipeline (training, PQ evaluation, pictures) runs on any machine with no download.

Things are shapes (disc, triangle, square, cross) of varied size and pose, each class in its own
colour family (jittered per object, with texture noise), with partial occlusion, and dashed
curves: smooth curves drawn as separate dashes, all curves of an image in ONE colour (their
class's, jittered per image) and often crossing. The curves were meant to need grouping but
barely do (a median of 3 fat dashes per curve, crossing curves merge; issue 26's measurements):
the grouping benchmark is the contour dataset, `crbp_detectron/data/contours.py`. Stuff is three textured regions
(sand, water, grass) with irregular borders. Written in exact COCO panoptic format (JPEG images,
panoptic PNGs + JSON with `isthing` categories), plus the instances JSON and the stuff PNGs that
Detectron2's separated loader needs, and registered with `register_coco_panoptic_separated` as
`crbp_demo_train_separated` and `crbp_demo_val_separated`.
"""
import os
from dataclasses import dataclass
from typing import Dict, Optional

import cv2
import numpy as np

from .synthetic import (SyntheticDataset, generate_synthetic_dataset, params_digest, register_synthetic_datasets,
                        segment_record)

VERSION = 4
DEMO_DATASETS = ("crbp_demo_train", "crbp_demo_val")
# A thing's colour is its class's "color" jittered by up to COLOUR_JITTER per channel. Form alone
# (v1) was not learned in the demo's budget: after 900 iterations the detector found the shapes
# (RPN recall 0.93 at IoU 0.5) but classified them at chance (31% right of 4 classes, scores
# ~0.19 = P(thing) / 4), so at any ordinary confidence threshold nothing was left.
THINGS = [
    {"id": 1, "name": "disc", "isthing": 1, "color": [215, 40, 40]},
    {"id": 2, "name": "triangle", "isthing": 1, "color": [235, 205, 30]},
    {"id": 3, "name": "square", "isthing": 1, "color": [190, 40, 190]},
    {"id": 4, "name": "cross", "isthing": 1, "color": [45, 40, 50]},
    {"id": 5, "name": "curve", "isthing": 1, "color": [235, 235, 235]},
]
COLOUR_JITTER = 25
CURVE = len(THINGS) - 1  # class index of the dashed curves
STUFF = [
    {"id": 10, "name": "sand", "isthing": 0, "color": [194, 178, 128]},
    {"id": 11, "name": "water", "isthing": 0, "color": [60, 110, 190]},
    {"id": 12, "name": "grass", "isthing": 0, "color": [70, 150, 60]},
]
CATEGORIES = THINGS + STUFF


@dataclass(frozen=True)
class DemoParams:
    image_size: int = 128
    train_images: int = 300
    val_images: int = 32
    max_objects: int = 4  # shapes per image: 1..max_objects
    min_object_size: int = 24
    max_object_size: int = 60
    max_curves: int = 2  # dashed curves per image: 0..max_curves
    seed: int = 0

    def digest(self) -> str:
        return params_digest(DEMO, self)


def default_root(env: str = "CRBP_DEMO_DIR", name: str = "demo") -> str:
    """Where a synthetic dataset is cached: $`env`, or ~/.cache/crbp_detectron/`name`."""
    return os.environ.get(env, os.path.join(os.path.expanduser("~"), ".cache", "crbp_detectron", name))


# ------------------------------------------------------------------------------ drawing
def _smooth_noise(rng, size, cells):
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _stuff_layout(rng, size):
    """Label map over the three stuff classes with irregular borders (argmax of smooth noise)."""
    present = rng.choice(len(STUFF), size=rng.integers(2, 4), replace=False)
    fields = np.stack([_smooth_noise(rng, size, rng.integers(3, 6)) for _ in present])
    return present[np.argmax(fields, axis=0)]


def _stuff_texture(rng, kind, size):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.array(STUFF[kind]["color"], np.float32) + rng.normal(0, 12, 3)
    if STUFF[kind]["name"] == "sand":
        pattern = rng.normal(0, 18, (size, size))
    elif STUFF[kind]["name"] == "water":
        freq, phase = rng.uniform(0.25, 0.45), rng.uniform(0, 2 * np.pi)
        pattern = 22 * np.sin(freq * yy + 0.3 * np.sin(0.1 * xx) + phase) + rng.normal(0, 5, (size, size))
    else:  # grass: vertical streaks
        pattern = np.repeat(rng.normal(0, 22, (1, size)), size, axis=0) + rng.normal(0, 8, (size, size))
    return np.clip(base[None, None, :] + pattern[..., None], 0, 255)


def _shape_polygon(rng, kind, size, center):
    """Outline of a thing of class index `kind` (0 disc, 1 triangle, 2 square, 3 cross), rotated."""
    angle = rng.uniform(0, 2 * np.pi)
    r = size / 2
    if kind == 0:
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        ratio = rng.uniform(0.75, 1.0)
        pts = np.stack([r * np.cos(t), ratio * r * np.sin(t)], 1)
    elif kind == 1:
        t = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.normal(0, 0.1, 3)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif kind == 2:
        s = r * 0.8
        pts = np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    else:
        a, b = r, r * 0.33
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b],
                        [-a, -b], [-b, -b]])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (pts @ rot.T + center).round().astype(np.int32)


def _curve_path(rng, size, length, through=None, heading=None, split=0.5, turn_sd=0.01, max_turn=0.05,
                margin=None):
    """A smooth random curve of about `length` px (1-px steps, turning rate a clipped AR(1):
    innovations `turn_sd`, at most `max_turn` rad/px), grown both ways from `through` (default: a
    random central point) in direction `heading` (default: random), `split` of its length on the
    heading's side; None if it comes within `margin` (default size/32) of the image's border."""
    margin = size / 32 if margin is None else margin
    centre = np.asarray(through, np.float64) if through is not None else rng.uniform(0.25 * size, 0.75 * size, 2)
    heading = rng.uniform(0, 2 * np.pi) if heading is None else heading
    halves = []
    for start, part in ((heading, split), (heading + np.pi, 1 - split)):
        p, h, turn, pts = centre, start, 0.0, []
        for _ in range(int(length * part)):
            turn = float(np.clip(0.9 * turn + rng.normal(0, turn_sd), -max_turn, max_turn))
            h += turn
            p = p + (np.cos(h), np.sin(h))
            pts.append(p)
        halves.append(pts)
    path = np.array(halves[1][::-1] + [centre] + halves[0])
    return path if path.min() >= margin and path.max() <= size - 1 - margin else None


def dash_runs(rng, path, dash, gap):
    """Index ranges [start, stop) of `path`'s points that are on: dashes of `dash` px of arc
    every `dash + gap` px, at a random phase; runs of a single point are dropped."""
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    on = (arc + rng.uniform(0, dash + gap)) % (dash + gap) < dash
    runs, start = [], None
    for i, drawn in enumerate(np.append(on, False)):
        if drawn and start is None:
            start = i
        elif not drawn and start is not None:
            if i - start > 1:
                runs.append((start, i))
            start = None
    return runs


def _dashed_curve_mask(rng, size, path):
    """Dashes along `path`: size/10 wide (13 px at 128 px, round ends), centre lines size/8 long,
    size/5 apart (about 13 px of visible gap at 128 px). Thinner dashes (5 px) were lost by the
    mask head's 28 x 28 targets over a curve's box (~4 px a cell): no curve was segmented."""
    thickness = max(1, round(size / 10))
    mask = np.zeros((size, size), np.uint8)
    fixed = np.round(path * 4).astype(np.int32)  # 2 fractional bits (cv2 shift=2)
    for start, stop in dash_runs(rng, path, size / 8, size / 5):
        cv2.polylines(mask, [fixed[start:stop]], False, 1, thickness=thickness, shift=2)
    return mask.astype(bool)


def _thing_mask(rng, kind, params, curves):
    """(full mask, curve path or None) of a new thing of class index `kind`; mask None if it did
    not fit. `curves`: the paths of the curves drawn so far."""
    size = params.image_size
    if kind == CURVE:
        # Most later curves cross an earlier one: only continuity tells their dashes apart.
        through = None
        if curves and rng.random() < 0.7:
            other = curves[int(rng.integers(len(curves)))]
            through = other[int(rng.integers(len(other) // 4, 3 * len(other) // 4))]
        path = _curve_path(rng, size, rng.uniform(0.7, 1.1) * size, through)
        return (None, None) if path is None else (_dashed_curve_mask(rng, size, path), path)
    obj_size = rng.uniform(params.min_object_size, params.max_object_size)
    center = rng.uniform(obj_size / 3, size - obj_size / 3, 2)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [_shape_polygon(rng, kind, obj_size, center)], 1)
    return mask.astype(bool), None


def _thing_colour(rng, kind):
    return np.asarray(THINGS[kind]["color"], np.float64) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3)


def stuff_background(rng, size):
    """(stuff label map, float RGB image of the textured stuff regions)."""
    stuff = _stuff_layout(rng, size)
    image = np.zeros((size, size, 3), np.float32)
    for kind in np.unique(stuff):
        image[stuff == kind] = _stuff_texture(rng, kind, size)[stuff == kind]
    return stuff, image


def render_image(rng, params: DemoParams):
    """One image: RGB uint8, segment id map (int64) and segments_info."""
    size = params.image_size
    stuff, image = stuff_background(rng, size)

    kinds = [int(rng.integers(CURVE)) for _ in range(rng.integers(1, params.max_objects + 1))]
    kinds += [CURVE] * int(rng.integers(0, params.max_curves + 1))
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    curve_colour = _thing_colour(rng, CURVE)  # one colour for every curve of the image
    min_area = 60 * (size / 64) ** 2  # pixels; a curve needs a quarter of it
    things, curves = [], []  # things: (class index, full mask, visible mask); curves: their paths
    for kind in kinds:
        for _attempt in range(10):
            mask, path = _thing_mask(rng, kind, params, curves)
            if mask is None or mask.sum() < (min_area / 4 if kind == CURVE else min_area):
                continue
            # Occlusion is allowed, but every earlier object keeps most of itself.
            if all((t[2] & ~mask).sum() >= 0.6 * t[1].sum() for t in things):
                for t in things:
                    t[2][mask] = False
                things.append((kind, mask, mask.copy()))
                colour = curve_colour if kind == CURVE else _thing_colour(rng, kind)
                texture = rng.normal(0, 10, (size, size, 1)) + 12 * _smooth_noise(rng, size, 6)[..., None]
                image[mask] = np.clip(colour + texture, 0, 255)[mask]
                if path is not None:
                    curves.append(path)
                break

    image = cv2.GaussianBlur(image, (3, 3), 0.6) + rng.normal(0, 4, image.shape)
    ids = np.zeros((size, size), np.int64)
    segments = []

    def add(segment_id, category, mask):
        record = segment_record(segment_id, category["id"], mask)
        if record is not None:
            ids[mask] = segment_id
            segments.append(record)

    occupied = np.zeros((size, size), bool)
    for i, (kind, _, visible) in enumerate(things):
        add(i + 1, THINGS[kind], visible)
        occupied |= visible
    for kind in np.unique(stuff):
        add(1000 + int(kind), STUFF[kind], (stuff == kind) & ~occupied)
    return np.clip(image, 0, 255).astype(np.uint8), ids, segments


# ------------------------------------------------------------------------------ writing
DEMO = SyntheticDataset(
    name="crbp_demo", version=VERSION, description="crbp-detectron demo", label="demo", env="CRBP_DEMO_DIR",
    categories=CATEGORIES,
    splits=(("train", "train_images", 1), ("val", "val_images", 2)),
    render=lambda rng, params: render_image(rng, params) + (None,))


def generate_demo_dataset(root: Optional[str] = None, params: DemoParams = DemoParams(), progress: bool = True,
                          force: bool = False) -> Dict[str, dict]:
    """Writes the dataset under `root` (default: $CRBP_DEMO_DIR or ~/.cache/crbp_detectron/demo)
    unless a complete copy with the same version and parameters is there. Returns the paths."""
    return generate_synthetic_dataset(DEMO, root or default_root(), params, progress, force)


def register_demo_datasets(root: Optional[str] = None, params: DemoParams = DemoParams(), progress: bool = True):
    """Generates the dataset if needed and registers crbp_demo_{train,val}_separated."""
    return register_synthetic_datasets(DEMO, root or default_root(), params, progress)

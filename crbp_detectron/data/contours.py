"""The contour-grouping dataset: panoptic scenes whose "contour" instances can only be told apart
by following them from dash to dash (Pathfinder's grouping problem inside a Detectron2 task).

Each image has 3-5 thin dashed contours (3 px wide, 6 px dashes, 5 px gaps at 128 px) in ONE
colour, most of them crossing an earlier contour near its middle (30-70% of its length) at 30-90
degrees, along the diagonal of its box that it does not follow, so that inside one contour's box
lie long runs of other contours' dashes that look exactly like its own. Dashes
of different contours never touch: a dash that would come within `clearance` blank pixels of
another contour is left out (a crossing shows as a gap in the later contour), so every ground-truth
pixel is visible and no instance owns a sliver of another. Beside them: 0-2 of the demo's shapes
(kept clear of the contours) and the demo's three textured stuff regions.

Why the dashes are thin and the gaps short: a contour's identity is carried along its length,
not by any local feature, and the mask head (RoI features 28 x 28 for these configs, masks
56 x 56) resolves a 3 px line (the resolution bound, measured by benchmarks/contour_grouping.py).

Splits: train (tuning happens on val), val, and a test split that only the benchmark's final
numbers use. Besides the COCO panoptic files each split has `contours.json`: for every image, the
segment ids of its contours and which other contours each one crosses (the COCO format has no
field for it). Registered as `crbp_contours_{train,val,test}_separated`; cached under
$CRBP_CONTOURS_DIR or ~/.cache/crbp_detectron/contours.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import cv2
import numpy as np

from .demo import (COLOUR_JITTER, STUFF, THINGS, _curve_path, _smooth_noise, _thing_colour, _thing_mask, dash_runs,
                   default_root, stuff_background)
from .strokes import Strokes, segment_distance
from .synthetic import (SyntheticDataset, generate_synthetic_dataset, image_rng, register_synthetic_datasets,
                        segment_record)

VERSION = 1
SHAPES = THINGS[:4]  # the demo's disc, triangle, square, cross
CONTOUR_CATEGORY = {"id": 5, "name": "contour", "isthing": 1, "color": [235, 235, 235]}
CATEGORIES = SHAPES + [CONTOUR_CATEGORY] + STUFF
CONTOUR = len(SHAPES)  # class index of the contours
CONTOUR_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ContourParams:
    image_size: int = 128
    train_images: int = 1000
    val_images: int = 100
    test_images: int = 200
    min_contours: int = 3
    max_contours: int = 5
    min_length: float = 0.7  # contour length (arc, before dashing) as a fraction of image_size
    max_length: float = 1.1
    dash_length: float = 6.0  # px of centre line
    gap: float = 5.0  # px of centre line between dashes
    width: float = 3.0  # stroke width, px
    clearance: float = 1.5  # blank px between dashes of different contours (and shapes)
    # A later contour crosses an earlier one near its middle with this probability; otherwise it
    # crosses none (single contours, the control group).
    crossing_probability: float = 0.8
    attempts: int = 40  # draws of a contour before it is given up
    min_crossing_angle: float = 30.0  # degrees
    max_crossing_angle: float = 90.0
    turn_sd: float = 0.02  # curvature: AR(1) turning rate innovations, rad/px
    max_turn: float = 0.06  # rad/px
    max_shapes: int = 2  # demo shapes per image: 0..max_shapes
    min_object_size: int = 24
    max_object_size: int = 48
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.min_contours <= self.max_contours:
            raise ValueError(f"need 1 <= min_contours <= max_contours, got {self.min_contours}, {self.max_contours}")
        if not 0 < self.min_crossing_angle <= self.max_crossing_angle <= 90:
            raise ValueError(f"crossing angles must satisfy 0 < min <= max <= 90 degrees, got "
                             f"{self.min_crossing_angle}, {self.max_crossing_angle}")


def _tangent_angle(path, i):
    t = path[min(i + 1, len(path) - 1)] - path[max(i - 1, 0)]
    return math.atan2(t[1], t[0])


def _new_contour_path(rng, params: ContourParams, paths, crossing: bool):
    """A path crossing an earlier contour near its middle, or (not `crossing`) anywhere; None if
    the draw failed.

    A crossing contour runs along the diagonal of the other's box that the other does not follow
    (within 15 degrees), so that as much of it as the geometry allows lies inside the other's box:
    there a mask head that does not group sees two contours."""
    size, through, heading = params.image_size, None, None
    if crossing:
        other = paths[int(rng.integers(len(paths)))]
        i = int(rng.integers(int(0.3 * len(other)), int(0.7 * len(other))))
        through = other[i]
        (x0, y0), (x1, y1) = other.min(0), other.max(0)
        chord = other[-1] - other[0]
        diagonal = (x1 - x0, y0 - y1) if chord[0] * chord[1] > 0 else (x1 - x0, y1 - y0)
        heading = math.atan2(diagonal[1], diagonal[0]) + math.radians(rng.uniform(-15, 15))
        tangent = _tangent_angle(other, i)
        angle = abs((heading - tangent + math.pi / 2) % math.pi - math.pi / 2)  # between the lines, 0..90
        if not math.radians(params.min_crossing_angle) <= angle <= math.radians(params.max_crossing_angle):
            return None
        heading += math.pi * (rng.random() < 0.5)
    length = rng.uniform(params.min_length, params.max_length) * size
    return _curve_path(rng, size, length, through, heading, split=rng.uniform(0.4, 0.6), turn_sd=params.turn_sd,
                       max_turn=params.max_turn, margin=params.width / 2 + 2)


def _fitting_runs(strokes, path, runs, radius, pid, clearance, min_points: int = 3):
    """The parts of the dash runs [start, stop) whose 1-px segments keep `clearance` from every
    other contour: a dash that would touch another is trimmed, and left out if under 2 px remain."""
    fits = strokes.fits_each(path[:-1], path[1:], radius, pid, clearance)  # segment i: points i, i + 1
    kept = []
    for a, b in runs:
        start = None
        for i in range(a, b):  # segments a .. b-2 belong to the run; b-1 closes an open stretch
            if i < b - 1 and fits[i]:
                start = i if start is None else start
            elif start is not None:
                if i + 1 - start >= min_points:
                    kept.append((start, i + 1))
                start = None
    return kept


def _place_contours(rng, params: ContourParams):
    """Strokes of the accepted contours (path id = contour index) and their centre lines."""
    radius = params.width / 2
    strokes = Strokes(params.image_size, pad=radius + 1.0 + params.clearance)
    paths: List[np.ndarray] = []
    for _ in range(int(rng.integers(params.min_contours, params.max_contours + 1))):
        crossing = bool(paths) and rng.random() < params.crossing_probability
        for _attempt in range(params.attempts):
            path = _new_contour_path(rng, params, paths, crossing)
            if path is None or (not crossing and any(_paths_cross(path, p) for p in paths)):
                continue
            runs = dash_runs(rng, path, params.dash_length, params.gap)
            kept = _fitting_runs(strokes, path, runs, radius, len(paths), params.clearance)
            # Crossings cost the later contour parts of dashes; one that would lose more is redrawn.
            if len(kept) < 4 or sum(b - a for a, b in kept) < 0.8 * sum(b - a for a, b in runs):
                continue
            for a, b in kept:
                strokes.add(path[a:b - 1], path[a + 1:b], radius, len(paths), 0)
            paths.append(path)
            break
    return strokes, paths


def _paths_cross(a, b) -> bool:
    return bool((segment_distance(a[:-1, None], a[1:, None], b[None, :-1], b[None, 1:]) == 0).any())


def crossing_pairs(paths) -> List[tuple]:
    """(i, j) for every two centre lines that cross (dashes or not)."""
    return [(i, j) for i in range(len(paths)) for j in range(i + 1, len(paths)) if _paths_cross(paths[i], paths[j])]


def _background_and_contours(rng, params: ContourParams):
    stuff, image = stuff_background(rng, params.image_size)
    strokes, paths = _place_contours(rng, params)
    return stuff, image, strokes, paths


def render_contour_image(rng, params: ContourParams):
    """One image: RGB uint8, segment ids, segments_info and {"contours": [{"id", "crosses"}]}."""
    size = params.image_size
    stuff, image, strokes, paths = _background_and_contours(rng, params)
    coverage = [np.clip(0.5 - strokes.fields[p], 0.0, 1.0) for p in range(len(paths))]
    contour_masks = [c >= 0.5 for c in coverage]
    near_contour = strokes.occupied_field() < params.clearance + 1.0  # shapes keep clear of the contours

    min_area = 60 * (size / 64) ** 2
    shapes = []  # (class index, full mask, visible mask)
    for _ in range(int(rng.integers(0, params.max_shapes + 1))):
        kind = int(rng.integers(CONTOUR))
        for _attempt in range(10):
            mask, _ = _thing_mask(rng, kind, params, [])
            if mask is None or mask.sum() < min_area or (mask & near_contour).any():
                continue
            if all((s[2] & ~mask).sum() >= 0.6 * s[1].sum() for s in shapes):
                for s in shapes:
                    s[2][mask] = False
                shapes.append((kind, mask, mask.copy()))
                texture = rng.normal(0, 10, (size, size, 1)) + 12 * _smooth_noise(rng, size, 6)[..., None]
                image[mask] = np.clip(_thing_colour(rng, kind) + texture, 0, 255)[mask]
                break

    if coverage:  # one colour for every contour of the image, anti-aliased over what is below
        alpha = np.max(coverage, axis=0)[..., None]
        colour = np.asarray(CONTOUR_CATEGORY["color"], np.float64) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3)
        image = image * (1 - alpha) + (colour + rng.normal(0, 6, (size, size, 1))) * alpha
    image = cv2.GaussianBlur(image, (3, 3), 0.6) + rng.normal(0, 4, image.shape)

    ids = np.zeros((size, size), np.int64)
    segments, occupied = [], np.zeros((size, size), bool)

    def add(segment_id, category, mask):
        record = segment_record(segment_id, category["id"], mask)
        if record is not None:
            ids[mask] = segment_id
            segments.append(record)
        return record is not None

    for i, (kind, _, visible) in enumerate(shapes):
        add(i + 1, SHAPES[kind], visible)
        occupied |= visible
    ids_of_contours = contour_ids(len(paths))
    for segment_id, mask in zip(ids_of_contours, contour_masks):
        added = add(segment_id, CONTOUR_CATEGORY, mask)
        assert added, "a contour with kept dashes has pixels"
        occupied |= mask
    for kind in np.unique(stuff):
        add(1000 + int(kind), STUFF[kind], (stuff == kind) & ~occupied)
    crosses: Dict[int, list] = {i: [] for i in ids_of_contours}
    for i, j in crossing_pairs(paths):
        crosses[ids_of_contours[i]].append(ids_of_contours[j])
        crosses[ids_of_contours[j]].append(ids_of_contours[i])
    extra = {"contours": [{"id": i, "crosses": crosses[i]} for i in ids_of_contours]}
    return np.clip(image, 0, 255).astype(np.uint8), ids, segments, extra


def contour_ids(count: int) -> List[int]:
    """Segment ids of an image's contours, in the order they were drawn (path id i: 100 + i)."""
    return [100 + i for i in range(count)]


def contour_strokes(split: str, index: int, params: ContourParams = ContourParams()):
    """(strokes, centre lines) of the contours of image `index` of `split`, drawn again from the
    image's seed: the dashes as kept (path id i is the segment contour_ids(...)[i]), which the COCO
    files do not store. Pictures and experiments that re-render the contours start here."""
    _, _, strokes, paths = _background_and_contours(image_rng(CONTOURS, params, split, index), params)
    return strokes, paths


CONTOURS = SyntheticDataset(
    name="crbp_contours", version=VERSION, description="crbp-detectron contour grouping", label="contour",
    env="CRBP_CONTOURS_DIR", categories=CATEGORIES,
    splits=(("train", "train_images", 1), ("val", "val_images", 2), ("test", "test_images", 3)),
    render=render_contour_image, extra_json="contours.json")


def contours_root() -> str:
    return default_root(CONTOURS.env, "contours")


def generate_contour_dataset(root: Optional[str] = None, params: ContourParams = ContourParams(),
                             progress: bool = True, force: bool = False) -> Dict[str, dict]:
    """Writes the dataset under `root` (default: $CRBP_CONTOURS_DIR or ~/.cache/crbp_detectron/contours)
    unless a complete copy with the same version and parameters is there. Returns the paths."""
    return generate_synthetic_dataset(CONTOURS, root or contours_root(), params, progress, force)


def register_contour_datasets(root: Optional[str] = None, params: ContourParams = ContourParams(),
                              progress: bool = True):
    """Generates the dataset if needed and registers crbp_contours_{train,val,test}_separated."""
    return register_synthetic_datasets(CONTOURS, root or contours_root(), params, progress)

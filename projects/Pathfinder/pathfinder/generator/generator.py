"""Pathfinder: a synthetic contour-tracing data set (written from the task's description).

A sample is a square grey-level canvas with several dashed paths. Each path is a chain of short
straight strokes ("paddles") separated by gaps; between two paddles the direction turns by an
angle drawn uniformly from [-continuity, +continuity] degrees, so a path is a smooth, broken
contour. One path, the target, has `length` paddles and a marker dot at one of its ends; the
distractor paths are shorter (`long_distractors` of them as long as the target) and never touch
the target (nor each other, nor themselves): every two strokes of different paths keep at least `clearance` blank pixels between their
anti-aliased footprints.

Segmentation variant: the label is the marked path (its paddles and its marker), i.e. the pixels
whose centre lies inside one of its strokes (anti-aliased coverage >= 0.5).
Classification variant: two paths of `length` paddles and two markers; class 1 when both markers
sit on the two ends of the same path, 0 when they sit on different paths.

Rendering: a stroke is a segment with a radius; a pixel's coverage is clip(radius + 0.5 - d, 0, 1)
with d the distance from the pixel centre to the segment (a one-pixel linear ramp: anti-aliased).
The image is the maximum coverage over all strokes, stored as uint8.

Generation is seeded per sample (`numpy.random.default_rng([seed, index])`), so a data set is the
same whatever the number of workers.

Storage on disk: `storage.py`; pictures: `preview.py`; command line: `python -m pathfinder.generator`.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from crbp_detectron.data.strokes import Strokes, segment_distance, unit

VARIANTS = ("segmentation", "classification")


@dataclass
class PathfinderConfig:
    """Generator parameters (lengths in pixels, angles in degrees)."""

    size: int = 64  # canvas side (150 for the paper's scale)
    length: int = 14  # paddles in the target path
    paddle_length: float = 3.0  # length of one paddle's centre line
    paddle_width: float = 1.5  # stroke width
    gap: float = 2.0  # distance between two paddles of a path (end to start of the centre lines)
    continuity: float = 30.0  # largest turn between consecutive paddles
    distractors: int = 4  # number of distractor paths
    distractor_length: Optional[int] = None  # paddles per distractor (default: max(1, length // 2))
    # How many of the distractors have the target's length instead. Shorter distractors alone
    # leave a local cue (a pixel far from every path end lies on the long, marked path) that a
    # model with a small receptive field can use without tracing; long distractors remove it.
    long_distractors: int = 0
    marker_radius: float = 1.75  # radius of the marker dot
    clearance: float = 1.0  # blank pixels between strokes of different paths
    margin: float = 1.0  # blank pixels kept from the canvas border
    variant: str = "segmentation"
    max_tries: int = 200  # attempts at the whole sample before giving up

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        if not 0 <= self.long_distractors <= self.distractors:
            raise ValueError(f"long_distractors must be in [0, distractors], got {self.long_distractors}")

    @property
    def distractor_paddles(self) -> int:
        return self.distractor_length if self.distractor_length is not None else max(1, self.length // 2)

    @property
    def stroke_radius(self) -> float:
        return self.paddle_width / 2.0

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)



def _path_shape(rng, cfg: PathfinderConfig, paddles: int, angle_tries: int = 8, backtrack: int = 3):
    """A self-avoiding path of `paddles` paddles in the free plane, starting at the origin:
    arrays a, b [paddles, 2] (paddle k runs from a[k] to b[k]). Turns between consecutive
    paddles are uniform in [-continuity, continuity]; the gap bends half-way. Non-neighbouring
    paddles keep the clearance a path keeps from others (no loop touches itself); a dead end
    steps back `backtrack` paddles."""
    r = cfg.stroke_radius
    turn = math.radians(cfg.continuity)
    min_dist = 2 * r + 1.0 + cfg.clearance
    a = np.zeros((paddles, 2))
    b = np.zeros((paddles, 2))
    theta = np.zeros(paddles)
    tries = [0] * paddles
    theta0 = rng.uniform(-math.pi, math.pi)
    k, budget = 0, 40 * paddles + 40
    while k < paddles:
        if budget <= 0:
            return None
        if tries[k] >= angle_tries and k > 0:
            back = min(k, backtrack)
            for j in range(k - back + 1, k + 1):
                tries[j] = 0
            k -= back
            continue
        tries[k] += 1
        budget -= 1
        if k == 0:
            theta[0] = theta0
            a[0] = 0.0
        else:
            theta[k] = theta[k - 1] + rng.uniform(-turn, turn)
            a[k] = b[k - 1] + cfg.gap * unit(0.5 * (theta[k - 1] + theta[k]))
        b[k] = a[k] + cfg.paddle_length * unit(theta[k])
        if k >= 2:
            dist = segment_distance(a[k], b[k], a[:k - 1], b[:k - 1])
            if np.any(dist < min_dist):
                continue
        k += 1
        if k < paddles:
            tries[k] = 0
    return a, b


def _place_shape(rng, cfg: PathfinderConfig, strokes: Strokes, a, b, radius, path_id, tries: int = 30):
    """Puts a shape at a random rotation and position inside the canvas where it touches no
    other path; returns the placed (a, b) or None."""
    lo = cfg.margin + float(np.max(radius)) + 0.5
    hi = cfg.size - 1 - cfg.margin - float(np.max(radius)) - 0.5
    pts = np.concatenate([a, b])
    # Points every <= 0.5 px along the strokes, for the raster prefilter: a point p whose pixel
    # centre q (|p - q| <= 0.71) has field(q) + 0.71 < required distance is too close for sure.
    field = strokes.occupied_field() if path_id not in strokes.fields else None
    required = float(np.max(radius)) + 1.0 + cfg.clearance
    if field is not None:
        steps = max(2, int(math.ceil(cfg.paddle_length / 0.5)) + 1)
        t = np.linspace(0.0, 1.0, steps)[None, :, None]
        samples = (a[:, None] + t * (b - a)[:, None]).reshape(-1, 2)
    for _ in range(tries):
        phi = rng.uniform(-math.pi, math.pi)
        rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
        p = pts @ rot.T
        pmin, pmax = p.min(0), p.max(0)
        room_lo, room_hi = lo - pmin, hi - pmax  # allowed translations
        if np.any(room_hi < room_lo):
            continue  # does not fit at this rotation
        shift = rng.uniform(room_lo, room_hi)
        p = p + shift
        pa, pb = p[:len(a)], p[len(a):]
        if field is not None:
            q = np.rint(samples @ rot.T + shift).astype(np.int64)
            q = np.clip(q, 0, cfg.size - 1)
            if np.any(field[q[:, 1], q[:, 0]] + 0.71 < required):
                continue
        if strokes.fits(pa, pb, radius, path_id, cfg.clearance):
            return pa, pb
    return None


def _add_path(rng, cfg, strokes, path_id, paddles, shapes: int = 20):
    for _ in range(shapes):
        shape = _path_shape(rng, cfg, paddles)
        if shape is None:
            continue
        placed = _place_shape(rng, cfg, strokes, *shape, cfg.stroke_radius, path_id)
        if placed is not None:
            strokes.add(placed[0], placed[1], cfg.stroke_radius, path_id, np.arange(paddles))
            return placed[0][0].copy(), placed[1][-1].copy()
    return None


def _add_marker(cfg, strokes, path_id, point):
    if not strokes.fits(point, point, cfg.marker_radius, path_id, cfg.clearance):
        return False
    strokes.add(point, point, cfg.marker_radius, path_id, -1)
    return True


def _try_sample(rng, cfg: PathfinderConfig):
    """Target path(s), marker(s), then distractors; None when something could not be placed."""
    # The fields must be exact wherever the placement prefilter could reject: up to the
    # distance a new stroke keeps (its radius + 1 + clearance).
    strokes = Strokes(cfg.size, pad=cfg.stroke_radius + 1.0 + cfg.clearance)
    main_paths = 2 if cfg.variant == "classification" else 1
    ends = []
    for pid in range(main_paths):
        e = _add_path(rng, cfg, strokes, pid, cfg.length)
        if e is None:
            return None
        ends.append(e)
    flip = rng.random() < 0.5  # which end of the target carries the marker
    markers = [ends[0][1] if flip else ends[0][0]]
    cls = None
    if cfg.variant == "classification":
        cls = int(rng.random() < 0.5)
        markers.append((ends[0][0] if flip else ends[0][1]) if cls else ends[1][int(rng.random() < 0.5)])
    for m, point in enumerate(markers):
        if not _add_marker(cfg, strokes, 0 if m == 0 or cls else 1, point):
            return None
    for j in range(cfg.distractors):
        paddles = cfg.length if j < cfg.long_distractors else cfg.distractor_paddles
        if _add_path(rng, cfg, strokes, main_paths + j, paddles) is None:
            return None
    return strokes, markers, cls


def generate_sample(cfg: PathfinderConfig, seed: int = 0, index: int = 0, return_parts: bool = False) -> Dict:
    """One sample, determined by (seed, index).

    Returns {"image": uint8 [S,S], "mask": bool [S,S], "class": int or None}; with `return_parts`
    also "coverage" (float32 [P,S,S], one per path, path 0 the target, markers included),
    "markers" (their centres, (x, y)), "ends" (the target's two end points), "strokes".
    """
    rng = np.random.default_rng([int(seed), int(index)])
    for _ in range(cfg.max_tries):
        out = _try_sample(rng, cfg)
        if out is not None:
            break
    else:
        raise RuntimeError(f"Pathfinder: could not place the paths in {cfg.max_tries} tries; the canvas "
                           f"is too crowded for {cfg}")
    strokes, markers, cls = out
    n_paths = int(strokes.path.max()) + 1
    coverage = np.stack([np.clip(0.5 - strokes.fields[p], 0.0, 1.0) for p in range(n_paths)])
    image = np.round(coverage.max(0) * 255).astype(np.uint8)
    mask = coverage[0] >= 0.5
    result = {"image": image, "mask": mask, "class": cls}
    if return_parts:
        target = [(a.copy(), b.copy()) for a, b, _, pid, i in strokes.items() if pid == 0 and i >= 0]
        result.update(coverage=coverage, markers=[np.asarray(m) for m in markers],
                      ends=[target[0][0], target[-1][1]], strokes=strokes)
    return result


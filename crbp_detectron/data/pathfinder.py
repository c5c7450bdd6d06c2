"""Pathfinder: a synthetic contour-tracing data set (written from the task's description).

A sample is a square grey-level canvas with several dashed paths. Each path is a chain of short
straight strokes ("paddles") separated by gaps; between two paddles the direction turns by an
angle drawn uniformly from [-continuity, +continuity] degrees, so a path is a smooth, broken
contour. One path, the target, has `length` paddles and a marker dot at one of its ends; the
distractor paths are shorter (`long_distractors` of them as long as the target) and never touch the target (nor each other, nor themselves): every
two strokes of different paths keep at least `clearance` blank pixels between their
anti-aliased footprints.

Segmentation variant: the label is the marked path (its paddles and its marker), i.e. the pixels
whose centre lies inside one of its strokes (anti-aliased coverage >= 0.5).
Classification variant: two paths of `length` paddles and two markers; class 1 when both markers
sit on the two ends of the same path, 0 when they sit on different paths.

Rendering: a stroke is a segment with a radius; a pixel's coverage is clip(radius + 0.5 - d, 0, 1)
with d the distance from the pixel centre to the segment (a one-pixel linear ramp: anti-aliased).
The image is the maximum coverage over all strokes, stored as uint8.

Generation is seeded per sample (`numpy.random.default_rng([seed, index])`), so a data set is the
same whatever the number of workers. On disk a data set is a folder:

    manifest.json   the generator's parameters, count, seed, file names, statistics
    images.npy      uint8 [N, S, S]
    masks.npy       uint8 [N, ceil(S*S/8)]  the label masks, bit-packed (numpy.packbits, row-major)
    classes.npy     uint8 [N]               classification variant only

`PathfinderDataset(folder)` reads it (memory-mapped). Command line:

    python -m crbp_detectron.data.pathfinder --out /tmp/pf --n 20000 --length 14 --preview pf.png
"""
import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Dict, Optional, Sequence

import numpy as np

FORMAT_VERSION = 1
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


# ---------------------------------------------------------------------------------- geometry
def _point_segment_distance(p, a, b):
    """Distance from points p to segments a-b (arrays [..., 2], broadcast together)."""
    ab = b - a
    denom = np.maximum((ab * ab).sum(-1), 1e-12)
    t = np.clip(((p - a) * ab).sum(-1) / denom, 0.0, 1.0)
    closest = a + t[..., None] * ab
    return np.sqrt(((p - closest) ** 2).sum(-1))


def _cross(u, v):
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def segment_distance(a, b, c, d):
    """Distances between segments a-b and c-d (arrays [..., 2], broadcast together): 0 where
    they cross."""
    dist = np.minimum.reduce([
        _point_segment_distance(a, c, d), _point_segment_distance(b, c, d),
        _point_segment_distance(c, a, b), _point_segment_distance(d, a, b),
    ])
    d1, d2 = _cross(b - a, c - a), _cross(b - a, d - a)
    d3, d4 = _cross(d - c, a - c), _cross(d - c, b - c)
    crossing = (d1 * d2 < 0) & (d3 * d4 < 0)
    return np.where(crossing, 0.0, dist)


def _unit(theta):
    return np.stack([np.cos(theta), np.sin(theta)], -1)


def stroke_field(a, b, radii, size, pad: float = 0.5):
    """min_j (distance from each pixel centre to segment j - radii[j]) over the pixels within
    radius + `pad` of some stroke's box (inf elsewhere, where the field is >= pad).
    Pixel (row y, column x) has centre (x, y)."""
    out = np.full((size, size), np.inf, np.float32)
    reach = float(np.max(radii)) + pad
    x0 = max(int(math.floor(min(a[:, 0].min(), b[:, 0].min()) - reach)), 0)
    x1 = min(int(math.ceil(max(a[:, 0].max(), b[:, 0].max()) + reach)) + 1, size)
    y0 = max(int(math.floor(min(a[:, 1].min(), b[:, 1].min()) - reach)), 0)
    y1 = min(int(math.ceil(max(a[:, 1].max(), b[:, 1].max()) + reach)) + 1, size)
    if x0 >= x1 or y0 >= y1:
        return out
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)
    a32, ab = a.astype(np.float32), (b - a).astype(np.float32)
    denom = np.maximum((ab * ab).sum(-1), 1e-12)
    # Per segment j, pixel (y, x): t = clip(((x - ax) abx + (y - ay) aby) / |ab|^2, 0, 1).
    px = xs[None, None, :] - a32[:, 0, None, None]  # [M, 1, W]
    py = ys[None, :, None] - a32[:, 1, None, None]  # [M, H, 1]
    t = np.clip((px * ab[:, 0, None, None] + py * ab[:, 1, None, None]) / denom[:, None, None], 0.0, 1.0)
    dx = px - t * ab[:, 0, None, None]
    dy = py - t * ab[:, 1, None, None]
    d = np.sqrt(dx * dx + dy * dy) - np.asarray(radii, np.float32)[:, None, None]
    out[y0:y1, x0:x1] = d.min(0)
    return out


class _Strokes:
    """The strokes placed on the canvas: segments a-b (a marker is a point, a == b) with a radius,
    the path each belongs to, and its position in that path (-1 for markers)."""

    def __init__(self, size: int, pad: float):
        self.size, self.pad = size, pad
        # Per path: the signed distance field min_j (dist(pixel centre, stroke j) - radius_j)
        # of its strokes (inf far away): it renders the path and prefilters placements.
        self.fields: Dict[int, np.ndarray] = {}
        self.a = np.zeros((0, 2))
        self.b = np.zeros((0, 2))
        self.radius = np.zeros(0)
        self.path = np.zeros(0, np.int64)
        self.index = np.zeros(0, np.int64)

    def __len__(self):
        return len(self.a)

    def add(self, a, b, radius, path, index):
        a, b = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float)
        m = len(a)
        self.a = np.concatenate([self.a, a])
        self.b = np.concatenate([self.b, b])
        self.radius = np.concatenate([self.radius, np.broadcast_to(np.asarray(radius, float), (m,))])
        self.path = np.concatenate([self.path, np.full(m, path, np.int64)])
        self.index = np.concatenate([self.index, np.broadcast_to(np.asarray(index, np.int64), (m,))])
        field = self.fields.setdefault(path, np.full((self.size, self.size), np.inf, np.float32))
        radii = np.broadcast_to(np.asarray(radius, float), (m,))
        np.minimum(field, stroke_field(a, b, radii, self.size, pad=self.pad), out=field)

    def occupied_field(self) -> np.ndarray:
        """min over every path's field (inf where nothing is near)."""
        if not self.fields:
            return np.full((self.size, self.size), np.inf, np.float32)
        return np.minimum.reduce(list(self.fields.values()))

    def items(self):
        for i in range(len(self)):
            yield self.a[i], self.b[i], float(self.radius[i]), int(self.path[i]), int(self.index[i])

    def fits(self, a, b, radius, path, clearance) -> bool:
        """Whether new strokes a-b ([m, 2]) of path `path` keep `clearance` blank pixels from
        every stroke of the other paths. Footprints (coverage > 0) reach radius + 0.5 from a
        centre line, so two strokes must be radius_1 + radius_2 + 1 + clearance apart."""
        other = self.path != path
        if not other.any():
            return True
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        c, d, radii = self.a[other], self.b[other], self.radius[other]
        reach = radii[None, :] + np.broadcast_to(np.asarray(radius, float), (len(a),))[:, None] + 1.0 + clearance
        # Bounding-box prefilter, then exact distances for the pairs that come near.
        lo1, hi1 = np.minimum(a, b)[:, None], np.maximum(a, b)[:, None]
        lo2, hi2 = np.minimum(c, d)[None], np.maximum(c, d)[None]
        near = ((lo2 - reach[..., None] <= hi1) & (hi2 + reach[..., None] >= lo1)).all(-1)
        if not near.any():
            return True
        i, j = np.nonzero(near)
        dist = segment_distance(a[i], b[i], c[j], d[j])
        return bool(np.all(dist >= reach[i, j]))


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
            a[k] = b[k - 1] + cfg.gap * _unit(0.5 * (theta[k - 1] + theta[k]))
        b[k] = a[k] + cfg.paddle_length * _unit(theta[k])
        if k >= 2:
            dist = segment_distance(a[k], b[k], a[:k - 1], b[:k - 1])
            if np.any(dist < min_dist):
                continue
        k += 1
        if k < paddles:
            tries[k] = 0
    return a, b


def _place_shape(rng, cfg: PathfinderConfig, strokes: _Strokes, a, b, radius, path_id, tries: int = 30):
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
    strokes = _Strokes(cfg.size, pad=cfg.stroke_radius + 1.0 + cfg.clearance)
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


def render_coverage(a, b, radius, size):
    """Anti-aliased coverage clip(radius + 0.5 - d, 0, 1) of strokes a-b ([m, 2] or [2]) on a
    size x size canvas (float32)."""
    a, b = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float)
    radii = np.broadcast_to(np.asarray(radius, float), (len(a),))
    return np.clip(0.5 - stroke_field(a, b, radii, size), 0.0, 1.0)


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


# ------------------------------------------------------------------------------ data sets
def _generate_chunk(args):
    cfg_dict, seed, start, stop = args
    cfg = PathfinderConfig(**cfg_dict)
    n = stop - start
    images = np.empty((n, cfg.size, cfg.size), np.uint8)
    masks = np.empty((n, (cfg.size * cfg.size + 7) // 8), np.uint8)
    classes = np.zeros(n, np.uint8)
    for i in range(n):
        s = generate_sample(cfg, seed, start + i)
        images[i] = s["image"]
        masks[i] = np.packbits(s["mask"].reshape(-1))
        classes[i] = s["class"] or 0
    return start, images, masks, classes


def generate_dataset(out_dir: str, cfg: PathfinderConfig, n: int, seed: int = 0, workers: int = 0,
                     chunk: int = 250, progress: bool = True) -> Dict:
    """Writes `n` samples to `out_dir` (see the module docstring); returns the manifest.

    workers = 0 uses every CPU core. Samples depend only on (seed, index): the same data whatever
    the number of workers or the chunk size.
    """
    os.makedirs(out_dir, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    t0 = time.time()
    images = np.lib.format.open_memmap(os.path.join(out_dir, "images.npy.tmp"), "w+", np.uint8,
                                       (n, cfg.size, cfg.size))
    masks = np.lib.format.open_memmap(os.path.join(out_dir, "masks.npy.tmp"), "w+", np.uint8,
                                      (n, (cfg.size * cfg.size + 7) // 8))
    classes = np.zeros(n, np.uint8)
    jobs = [(cfg.to_dict(), seed, s, min(s + chunk, n)) for s in range(0, n, chunk)]
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=n, desc=f"pathfinder L={cfg.length}", unit="img", leave=False)
        except ImportError:
            bar = None

    def store(res):
        start, im, mk, cl = res
        images[start:start + len(im)] = im
        masks[start:start + len(im)] = mk
        classes[start:start + len(im)] = cl
        if bar is not None:
            bar.update(len(im))

    if workers > 1 and len(jobs) > 1:
        with get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            for res in pool.imap_unordered(_generate_chunk, jobs):
                store(res)
    else:
        for job in jobs:
            store(_generate_chunk(job))
    if bar is not None:
        bar.close()
    images.flush()
    masks.flush()
    pos_fraction = float(np.unpackbits(np.asarray(masks[: min(n, 1000)]), axis=1).mean()) if n else 0.0
    images = masks = None  # close the memory maps before renaming their files
    os.replace(os.path.join(out_dir, "images.npy.tmp"), os.path.join(out_dir, "images.npy"))
    os.replace(os.path.join(out_dir, "masks.npy.tmp"), os.path.join(out_dir, "masks.npy"))
    files = {"images": "images.npy", "masks": "masks.npy"}
    if cfg.variant == "classification":
        np.save(os.path.join(out_dir, "classes.npy"), classes)
        files["classes"] = "classes.npy"
    manifest = {
        "format": "pathfinder", "version": FORMAT_VERSION, "config": cfg.to_dict(), "count": n,
        "seed": seed, "files": files, "mask_packing": "numpy.packbits over the row-major S*S mask",
        "stats": {"positive_pixel_fraction": pos_fraction,
                  "class_balance": float(classes.mean()) if cfg.variant == "classification" else None,
                  "seconds": round(time.time() - t0, 3), "workers": workers},
    }
    with open(os.path.join(out_dir, "manifest.json.tmp"), "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(os.path.join(out_dir, "manifest.json.tmp"), os.path.join(out_dir, "manifest.json"))
    return manifest


def load_manifest(folder: str) -> Optional[Dict]:
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def ensure_dataset(out_dir: str, cfg: PathfinderConfig, n: int, seed: int = 0, **kwargs) -> Dict:
    """Generates the data set unless `out_dir` already holds the same one (same parameters,
    count and seed)."""
    manifest = load_manifest(out_dir)
    if (manifest is not None and manifest.get("version") == FORMAT_VERSION and manifest["count"] == n
            and manifest["seed"] == seed and manifest["config"] == cfg.to_dict()):
        return manifest
    return generate_dataset(out_dir, cfg, n, seed, **kwargs)


class PathfinderDataset:
    """A generated data set (torch `Dataset` protocol): item i is (image float32 [1,S,S] in [0,1],
    target) with target the mask (float32 [1,S,S], 0/1) or, for the classification variant, the
    class (int64 scalar). `tensors()` gives the whole set at once for in-memory training."""

    def __init__(self, folder: str):
        self.folder = folder
        self.manifest = load_manifest(folder)
        if self.manifest is None:
            raise FileNotFoundError(f"No Pathfinder manifest.json in {folder}")
        cfg = self.manifest["config"]
        self.config = PathfinderConfig(**cfg)
        self.size = self.config.size
        files = self.manifest["files"]
        self.images = np.load(os.path.join(folder, files["images"]), mmap_mode="r")
        self.masks = np.load(os.path.join(folder, files["masks"]), mmap_mode="r")
        self.classes = np.load(os.path.join(folder, files["classes"])) if "classes" in files else None
        if len(self.images) != self.manifest["count"]:
            raise ValueError(f"{folder}: {len(self.images)} images, the manifest says {self.manifest['count']}")

    def __len__(self):
        return len(self.images)

    def mask(self, i) -> np.ndarray:
        s = self.size
        return np.unpackbits(np.asarray(self.masks[i]), count=s * s).reshape(s, s).astype(bool)

    def __getitem__(self, i):
        import torch
        image = torch.from_numpy(np.asarray(self.images[i], np.float32) / 255.0)[None]
        if self.classes is not None:
            return image, torch.tensor(int(self.classes[i]))
        return image, torch.from_numpy(self.mask(i).astype(np.float32))[None]

    def tensors(self, limit: Optional[int] = None):
        """(images float32 [N,1,S,S], targets): masks float32 [N,1,S,S] or classes int64 [N]."""
        import torch
        n = len(self) if limit is None else min(limit, len(self))
        s = self.size
        images = torch.from_numpy(np.asarray(self.images[:n], np.float32) / 255.0)[:, None]
        if self.classes is not None:
            return images, torch.from_numpy(self.classes[:n].astype(np.int64))
        masks = np.unpackbits(np.asarray(self.masks[:n]), axis=1, count=s * s).reshape(n, 1, s, s)
        return images, torch.from_numpy(masks.astype(np.float32))


# -------------------------------------------------------------------------------- preview
def save_preview(path: str, samples: Sequence[Dict], columns: int = 8, title: Optional[str] = None):
    """A PNG grid: each sample's image above its label (mask in red over the image, or the class)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(samples)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, s in enumerate(samples):
        r, c = 2 * (i // cols), i % cols
        axes[r, c].imshow(s["image"], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        over = np.stack([s["image"] / 255.0] * 3, -1) * 0.5
        if s.get("class") is not None:
            axes[r, c].set_title(f"class {s['class']}", fontsize=7)
            axes[r + 1, c].imshow(over, interpolation="nearest")
        else:
            over[s["mask"]] = [1.0, 0.15, 0.15]
            axes[r + 1, c].imshow(over, interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def preview_dataset(path: str, dataset: PathfinderDataset, count: int = 16, columns: int = 8):
    samples = []
    for i in range(min(count, len(dataset))):
        cls = int(dataset.classes[i]) if dataset.classes is not None else None
        samples.append({"image": np.asarray(dataset.images[i]), "mask": dataset.mask(i), "class": cls})
    cfg = dataset.config
    save_preview(path, samples, columns,
                 title=f"Pathfinder {cfg.variant}, {cfg.size}px, length {cfg.length}, {cfg.distractors} distractors")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    p.add_argument("--preview", help="write a PNG grid of the first samples here")
    for f in dataclasses.fields(PathfinderConfig):
        kind = f.type if f.type in (int, float, str) else (int if f.name == "distractor_length" else None)
        if kind is not None:
            p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default)
    args = p.parse_args(argv)
    cfg = PathfinderConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PathfinderConfig)})
    manifest = generate_dataset(args.out, cfg, args.n, args.seed, args.workers)
    print(json.dumps(manifest["stats"]))
    if args.preview:
        preview_dataset(args.preview, PathfinderDataset(args.out))
        print(f"preview: {args.preview}")


if __name__ == "__main__":
    main()

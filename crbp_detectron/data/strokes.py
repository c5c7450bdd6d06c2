"""Stroke geometry (the contour dataset's dashes, projects/Pathfinder's paddles): distances between
strokes (segments with a radius), their signed distance fields on the pixel grid, and the set of
strokes placed on a canvas with its clearance test."""
import math
from typing import Dict

import numpy as np


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


def unit(theta):
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


class Strokes:
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
        return bool(self.fits_each(a, b, radius, path, clearance).all())

    def fits_each(self, a, b, radius, path, clearance) -> np.ndarray:
        """`fits` for each new stroke on its own: a bool per stroke."""
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        ok = np.ones(len(a), bool)
        other = self.path != path
        if not other.any():
            return ok
        c, d, radii = self.a[other], self.b[other], self.radius[other]
        reach = radii[None, :] + np.broadcast_to(np.asarray(radius, float), (len(a),))[:, None] + 1.0 + clearance
        # Bounding-box prefilter, then exact distances for the pairs that come near.
        lo1, hi1 = np.minimum(a, b)[:, None], np.maximum(a, b)[:, None]
        lo2, hi2 = np.minimum(c, d)[None], np.maximum(c, d)[None]
        near = ((lo2 - reach[..., None] <= hi1) & (hi2 + reach[..., None] >= lo1)).all(-1)
        if not near.any():
            return ok
        i, j = np.nonzero(near)
        too_close = segment_distance(a[i], b[i], c[j], d[j]) < reach[i, j]
        ok[i[too_close]] = False
        return ok

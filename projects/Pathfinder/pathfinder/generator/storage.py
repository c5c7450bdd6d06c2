"""Pathfinder data sets on disk: a folder per set, generated in parallel and seeded per sample
(`numpy.random.default_rng([seed, index])`, so the data do not depend on the number of workers):

    manifest.json   the generator's parameters, count, seed, file names, statistics
    images.npy      uint8 [N, S, S]
    masks.npy       uint8 [N, ceil(S*S/8)]  the label masks, bit-packed (numpy.packbits, row-major)
    classes.npy     uint8 [N]               classification variant only

`PathfinderDataset(folder)` reads one (memory-mapped).
"""
import fcntl
import json
import os
import time
from multiprocessing import get_context
from typing import Dict, Optional

import numpy as np

from .generator import PathfinderConfig, generate_sample

FORMAT_VERSION = 1


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
    return _write_manifest(out_dir, cfg, n, seed, files, {
        "positive_pixel_fraction": pos_fraction,
        "class_balance": float(classes.mean()) if cfg.variant == "classification" else None,
        "seconds": round(time.time() - t0, 3), "workers": workers})


def _write_manifest(out_dir: str, cfg: PathfinderConfig, count: int, seed, files: Dict, stats: Dict, **extra) -> Dict:
    """Written last and atomically: a folder with a manifest holds a complete set. Returns it."""
    manifest = {"format": "pathfinder", "version": FORMAT_VERSION, "config": cfg.to_dict(), "count": count,
                "seed": seed, "files": files, "mask_packing": "numpy.packbits over the row-major S*S mask",
                **extra, "stats": stats}
    with open(os.path.join(out_dir, "manifest.json.tmp"), "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(os.path.join(out_dir, "manifest.json.tmp"), os.path.join(out_dir, "manifest.json"))
    return manifest


def write_prepared(out_dir: str, cfg: PathfinderConfig, images: np.ndarray, masks: np.ndarray, source: Dict) -> Dict:
    """Writes segmentation samples made elsewhere (images uint8 [N, S, S], masks bool [N, S, S]) in
    this format, so that training reads them as a generated set (PATHFINDER.DATA.TRAIN_FOLDERS).
    `cfg`: the drawing's generator settings (its size must be the images'); `source`: what made them
    (recorded in the manifest). Returns the manifest."""
    if images.ndim != 3 or images.shape != masks.shape or images.shape[1:] != (cfg.size, cfg.size):
        raise ValueError(f"images {images.shape} and masks {masks.shape} must both be [N, {cfg.size}, {cfg.size}]")
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, "manifest.json")):
        os.remove(os.path.join(out_dir, "manifest.json"))  # incomplete until the new one is written
    np.save(os.path.join(out_dir, "images.npy"), images.astype(np.uint8))
    packed = np.packbits(masks.reshape(len(masks), cfg.size * cfg.size).astype(bool), axis=1)
    np.save(os.path.join(out_dir, "masks.npy"), packed)
    return _write_manifest(out_dir, cfg, len(images), None, {"images": "images.npy", "masks": "masks.npy"},
                           {"positive_pixel_fraction": float(masks.mean()) if len(masks) else 0.0}, source=source)


def load_manifest(folder: str) -> Optional[Dict]:
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def ensure_dataset(out_dir: str, cfg: PathfinderConfig, n: int, seed: int = 0, **kwargs) -> Dict:
    """Generates the data set unless `out_dir` already holds the same one (same parameters,
    count and seed). Safe when several processes ask for the same set at once (runs started
    together): one generates it under a file lock, the others wait and read it."""
    def matching():
        manifest = load_manifest(out_dir)
        if (manifest is not None and manifest.get("version") == FORMAT_VERSION and manifest["count"] == n
                and manifest["seed"] == seed and manifest["config"] == cfg.to_dict()):
            return manifest
        return None

    manifest = matching()
    if manifest is not None:
        return manifest
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return matching() or generate_dataset(out_dir, cfg, n, seed, **kwargs)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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


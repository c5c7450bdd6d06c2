"""Pathfinder data for Detectron2's engine: generated sets (cached by their parameters) registered in
DatasetCatalog, a training stream that a resumed run continues exactly, and test batches.

Registered names: "pathfinder_train" (the training lengths mixed), "pathfinder_val"
(PATHFINDER.EVAL.VAL_COUNT images of PATHFINDER.EVAL.VAL_LENGTH from their own seed: the validation
evaluated during training never sees a test image) and "pathfinder_test_L<length>" per test
length. A dataset dict is {"folder", "index", "length"}; the arrays are read once per folder and
kept in memory (a 64 px set of 6000 images is 25 MB).
Training reads them through the project's resumable stream (`crbp_detectron.data.stream`) with
`PathfinderMapper`.
"""
import functools
import hashlib
import json
import os
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from .generator import PathfinderConfig, PathfinderDataset, ensure_dataset, load_manifest
from .config import split_distractors

TRAIN, VAL = "pathfinder_train", "pathfinder_val"
# Each split and length has its own data seed, derived from PATHFINDER.DATA.SEED.
_SPLIT_SEED_OFFSET = {"train": 0, "val": 250, "test": 500}


def data_root(cfg) -> str:
    root = cfg.PATHFINDER.DATA.ROOT or os.environ.get("CRBP_PATHFINDER_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "crbp_detectron", "pathfinder")
    return os.path.abspath(root)


def generator_config(cfg, length: int, split: str = "test") -> PathfinderConfig:
    """The generator settings of one split ("train", "val" or "test") and length (validation
    images are drawn as test images are, from their own seed)."""
    if split not in _SPLIT_SEED_OFFSET:
        raise ValueError(f"split must be one of {sorted(_SPLIT_SEED_OFFSET)}, got {split!r}")
    d = cfg.PATHFINDER.DATA
    distractors, long_distractors = split_distractors(d, split)
    return PathfinderConfig(
        size=d.SIZE, length=length, paddle_length=d.PADDLE_LENGTH, paddle_width=d.PADDLE_WIDTH, gap=d.GAP,
        continuity=d.CONTINUITY, distractors=distractors,
        distractor_length=d.DISTRACTOR_LENGTH or max(1, length // 3), long_distractors=long_distractors,
        marker_radius=d.MARKER_RADIUS, clearance=d.CLEARANCE, margin=d.MARGIN, max_tries=d.MAX_TRIES)


def split_seed(cfg, split: str, length: int) -> int:
    """The generator seed of one split and length (sample i is generate_sample(..., seed, i))."""
    return cfg.PATHFINDER.DATA.SEED * 1000 + _SPLIT_SEED_OFFSET[split] + length


def dataset_folder(cfg, split: str, length: int) -> str:
    """The set for one split and length, generated on first use (seeded: the same everywhere)."""
    d = cfg.PATHFINDER.DATA
    gen = generator_config(cfg, length, split)
    count = {"train": d.TRAIN_PER_LENGTH, "val": cfg.PATHFINDER.EVAL.VAL_COUNT}.get(split, d.TEST_PER_LENGTH)
    seed = split_seed(cfg, split, length)
    key = hashlib.sha1(json.dumps([gen.to_dict(), count, seed], sort_keys=True).encode()).hexdigest()[:10]
    folder = os.path.join(data_root(cfg), f"{split}_L{length}_s{gen.size}_{key}")
    ensure_dataset(folder, gen, count, seed, workers=d.WORKERS, progress=True)
    return folder


@functools.lru_cache(maxsize=32)
def _arrays(folder: str):
    """(images uint8 [N, S, S], packed masks uint8 [N, S*S/8], size) of a generated set, in memory."""
    ds = PathfinderDataset(folder)
    return np.array(ds.images), np.array(ds.masks), ds.size  # copies: in memory, writable


def load_sample(record: Dict, symmetry: int = 0) -> Dict:
    """{"image": uint8 [1, S, S], "mask": bool [1, S, S], "length"}; `symmetry` in 0..7 applies one
    symmetry of the square (bit 0: flip x, bit 1: flip y, bit 2: transpose)."""
    images, masks, size = _arrays(record["folder"])
    i = record["index"]
    image = images[i]
    mask = np.unpackbits(masks[i], count=size * size).reshape(size, size).astype(bool)
    if symmetry & 1:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if symmetry & 2:
        image, mask = image[::-1], mask[::-1]
    if symmetry & 4:
        image, mask = image.T, mask.T
    return {"image": torch.from_numpy(np.ascontiguousarray(image))[None],
            "mask": torch.from_numpy(np.ascontiguousarray(mask))[None], "length": record["length"]}


def _records(folder: str, length: int, count: int = None) -> List[Dict]:
    n = len(_arrays(folder)[0]) if count is None else count
    return [{"folder": folder, "index": i, "length": length} for i in range(n)]


def prepared_records(cfg) -> List[Dict]:
    """The records of PATHFINDER.DATA.TRAIN_FOLDERS; an error names the folder that is no prepared
    set of the config's canvas size."""
    records = []
    for folder in cfg.PATHFINDER.DATA.TRAIN_FOLDERS:
        manifest = load_manifest(folder)
        if manifest is None:
            raise FileNotFoundError(f"PATHFINDER.DATA.TRAIN_FOLDERS: {folder!r} holds no manifest.json "
                                    "(write one with pathfinder.generator.storage.write_prepared)")
        size = manifest["config"]["size"]
        if size != cfg.PATHFINDER.DATA.SIZE:
            raise ValueError(f"PATHFINDER.DATA.TRAIN_FOLDERS: {folder!r} holds {size} px samples, "
                             f"PATHFINDER.DATA.SIZE is {cfg.PATHFINDER.DATA.SIZE}")
        records += _records(folder, manifest["config"]["length"])
    return records


def test_name(length: int) -> str:
    return f"pathfinder_test_L{length}"


def register_pathfinder_datasets(cfg) -> Dict[str, List[str]]:
    """Generates (if needed) the training set and registers the config's sets (the validation and
    test sets generated when first read); returns {"train": [...], "test": [...]}. Registering
    again replaces earlier registrations of the same names."""
    d, e = cfg.PATHFINDER.DATA, cfg.PATHFINDER.EVAL
    prepared = prepared_records(cfg) if d.TRAIN_FOLDERS else None  # then nothing is generated for training
    folders = {} if prepared is not None else {("train", L): dataset_folder(cfg, "train", L) for L in d.TRAIN_LENGTHS}
    val_length = e.VAL_LENGTH or max(d.TRAIN_LENGTHS)
    frozen = cfg.clone()  # the validation and test sets are generated when first read (Detectron2's
    # catalog is lazy): training starts at once, long test contours are drawn when evaluated

    def evaluation_records(split, length):
        return _records(dataset_folder(frozen, split, length), length)

    def register(name, fn, **metadata):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, fn)
        MetadataCatalog.get(name).set(evaluator_type="pathfinder", **metadata)

    register(TRAIN, (lambda: prepared) if prepared is not None else
             (lambda: [r for L in d.TRAIN_LENGTHS for r in _records(folders[("train", L)], L)]),
             lengths=list(d.TRAIN_LENGTHS))
    register(VAL, functools.partial(evaluation_records, "val", val_length), lengths=[val_length])
    for length in d.TEST_LENGTHS:
        register(test_name(length), functools.partial(evaluation_records, "test", length),
                 lengths=[length], out_of_distribution=length not in d.TRAIN_LENGTHS)
    return {"train": [TRAIN], "test": [test_name(L) for L in d.TEST_LENGTHS]}


class PathfinderMapper:
    """Dataset dict -> sample, with a random symmetry of the square when augmenting (drawn from
    NumPy's global RNG, which the resumable stream seeds per stream position)."""

    def __init__(self, augment: bool = True):
        self.augment = augment

    def __call__(self, record: Dict) -> Dict:
        return load_sample(record, int(np.random.randint(8)) if self.augment else 0)


class PathfinderTestBatches:
    """A registered set in fixed batches, in order (what `inference_on_dataset` iterates)."""

    def __init__(self, records: List[Dict], batch_size: int):
        self.records, self.batch_size = records, batch_size

    def __len__(self):
        return (len(self.records) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for start in range(0, len(self.records), self.batch_size):
            yield [load_sample(r) for r in self.records[start:start + self.batch_size]]


def test_tensors(cfg, name: str, count: int = None):
    """(images float [N, 1, S, S] in [0, 1], masks bool [N, 1, S, S]) of a registered set."""
    records = DatasetCatalog.get(name)[:count]
    samples = [load_sample(r) for r in records]
    images = torch.stack([s["image"] for s in samples]).float() / 255.0
    return images, torch.stack([s["mask"] for s in samples])

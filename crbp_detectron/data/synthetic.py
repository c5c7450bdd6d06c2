"""Writing, caching and registering the project's seeded synthetic panoptic datasets (the demo and
the contour-grouping data) in exact COCO panoptic format: JPEG images, panoptic PNGs and JSON with
`isthing` categories, plus the instances JSON and stuff PNGs that Detectron2's separated loader
needs. A dataset is a `SyntheticDataset`: its categories, splits and a `render(rng, params)` that
draws one image. Each image is drawn from its own generator (`default_rng([seed, split, index])`),
so a dataset is the same whatever order or machine writes it.
"""
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from panopticapi.utils import id2rgb
from PIL import Image

from .coco_panoptic import DatasetError, panoptic_to_instances, register_panoptic_separated, write_stuff_pngs


@dataclass(frozen=True)
class SyntheticDataset:
    """What the writer needs to know of one synthetic dataset.

    render(rng, params) -> (image uint8 [H, W, 3], segment ids int [H, W], segments_info, extra):
    `extra` (JSON-serialisable or None) is collected per image into the split's `extra_json`
    file, for what the COCO format has no field for (which contours cross, in the contour data).
    """

    name: str  # registered as f"{name}_{split}_separated"
    version: int
    description: str
    label: str  # in messages: "the {label} data cache"
    env: str  # the environment variable that sets its cache folder
    categories: Sequence[dict]
    splits: Tuple[Tuple[str, str, int], ...]  # (split, params field holding its image count, split seed)
    render: Callable
    extra_json: Optional[str] = None  # file name of the per-image extras in each split's folder


def params_digest(dataset: SyntheticDataset, params) -> str:
    blob = json.dumps({"version": dataset.version, **asdict(params)}, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def split_paths(root: str, split: str, dataset: Optional[SyntheticDataset] = None) -> Dict[str, str]:
    d = os.path.join(root, split)
    paths = dict(image_root=os.path.join(d, "images"), panoptic_root=os.path.join(d, "panoptic"),
                 panoptic_json=os.path.join(d, "panoptic.json"), sem_seg_root=os.path.join(d, "stuff"),
                 instances_json=os.path.join(d, "instances.json"))
    if dataset is not None and dataset.extra_json:
        paths["extra_json"] = os.path.join(d, dataset.extra_json)
    return paths


def segment_record(segment_id: int, category_id: int, mask: np.ndarray) -> Optional[dict]:
    """COCO panoptic segments_info entry of a mask (None if the mask is empty)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x0, y0 = int(xs.min()), int(ys.min())
    return {"id": int(segment_id), "category_id": int(category_id), "iscrowd": 0, "area": int(mask.sum()),
            "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]}


def image_rng(dataset: SyntheticDataset, params, split: str, index: int) -> np.random.Generator:
    """The generator image `index` of `split` is drawn from: drawing it again gives the same image."""
    seeds = {name: seed for name, _, seed in dataset.splits}
    if split not in seeds:
        raise ValueError(f"{dataset.name} has no split {split!r}; its splits: {sorted(seeds)}")
    return np.random.default_rng([params.seed, seeds[split], index])


def _write_split(dataset: SyntheticDataset, root, split, count, params, progress: bool):
    from tqdm import tqdm

    paths = split_paths(root, split, dataset)
    for key in ("image_root", "panoptic_root"):
        os.makedirs(paths[key], exist_ok=True)
    images, annotations, extras = [], [], []
    for idx in tqdm(range(count), desc=f"{dataset.name} {split}", unit="img", disable=not progress):
        image, ids, segments, extra = dataset.render(image_rng(dataset, params, split, idx), params)
        image_id = idx + 1
        name = f"{split}_{image_id:06d}"
        Image.fromarray(image).save(os.path.join(paths["image_root"], name + ".jpg"), quality=95)
        Image.fromarray(id2rgb(ids)).save(os.path.join(paths["panoptic_root"], name + ".png"))
        images.append({"id": image_id, "file_name": name + ".jpg", "height": image.shape[0], "width": image.shape[1]})
        annotations.append({"image_id": image_id, "file_name": name + ".png", "segments_info": segments})
        extras.append({"image_id": image_id, **(extra or {})})
    with open(paths["panoptic_json"], "w") as f:
        json.dump({"info": {"description": f"{dataset.description} v{dataset.version}"}, "images": images,
                   "annotations": annotations, "categories": list(dataset.categories)}, f)
    if dataset.extra_json:
        with open(paths["extra_json"], "w") as f:
            json.dump({"images": extras}, f)
    panoptic_to_instances(paths["panoptic_json"], paths["panoptic_root"], paths["instances_json"])
    write_stuff_pngs(paths["panoptic_json"], paths["panoptic_root"], paths["sem_seg_root"], workers=1, progress=False)
    return paths


def generate_synthetic_dataset(dataset: SyntheticDataset, root: str, params, progress: bool = True,
                               force: bool = False) -> Dict[str, dict]:
    """Writes every split under `root` unless a complete copy with the same version and parameters
    is there (its manifest.json, written last). Returns {split: paths}."""
    try:
        os.makedirs(root, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        named = f"{dataset.env} = {root!r}" if root == os.environ.get(dataset.env) else repr(root)
        raise DatasetError(f"{named}: not a folder (a file is in the way); the {dataset.label} data cache must be a "
                           "folder, created if missing") from None
    with open(os.path.join(root, ".lock"), "w") as lock:  # one writer at a time (several ranks)
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _generate_locked(dataset, root, params, progress, force)


def _generate_locked(dataset, root, params, progress, force):
    manifest_path = os.path.join(root, "manifest.json")
    # Through JSON, so that a tuple-valued parameter compares equal to what was read back.
    manifest = json.loads(json.dumps({"version": dataset.version, "params": asdict(params),
                                      "digest": params_digest(dataset, params)}))
    splits = [s for s, _, _ in dataset.splits]
    if not force and os.path.isfile(manifest_path):
        try:
            with open(manifest_path) as f:
                complete = json.load(f) == manifest
        except (ValueError, UnicodeDecodeError) as e:  # its files may be someone's: never deleted unasked
            raise DatasetError(f"{manifest_path}: damaged {dataset.label} dataset manifest (not valid JSON: {e}); "
                               f"delete {root} to have the {dataset.label} data generated again, or set "
                               f"{dataset.env} to another folder") from None
        if complete:
            return {split: split_paths(root, split, dataset) for split in splits}
    for split in splits:
        shutil.rmtree(os.path.join(root, split), ignore_errors=True)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    out = {split: _write_split(dataset, root, split, getattr(params, count_field), params, progress)
           for split, count_field, _ in dataset.splits}
    with open(manifest_path, "w") as f:  # written last: its presence means the copy is complete
        json.dump(manifest, f, indent=1)
    return out


def register_synthetic_datasets(dataset: SyntheticDataset, root: str, params, progress: bool = True):
    """Generates the dataset if needed and registers f"{name}_{split}_separated" for every split."""
    paths = generate_synthetic_dataset(dataset, root, params, progress)
    names = []
    for split, _, _ in dataset.splits:
        p = {k: v for k, v in paths[split].items() if k != "extra_json"}
        names += register_panoptic_separated(f"{dataset.name}_{split}", **p)  # validated: cheap at this size
    return names

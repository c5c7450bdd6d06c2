"""COCO panoptic data for Panoptic FPN's "separated" format: metadata from a categories list,
semantic "stuff" PNGs and detection-format instances derived from the panoptic annotations,
validation with errors that name the file and the problem, and registration with Detectron2's
`register_coco_panoptic_separated`.

Stuff PNG convention (Panoptic FPN / Detectron2): every "thing" pixel -> 0, stuff category k ->
its contiguous id 1..#stuff, void -> 255.
"""
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from .panoptic_files import (DatasetError, check_panoptic_annotation, index_panoptic_json,  # noqa: F401
                             load_json, read_image, read_panoptic_png)

logger = logging.getLogger("detectron2.crbp")

IGNORE_LABEL = 255
THINGS_STUFF_ID = 0  # the stuff class every thing pixel gets in the separated format


# ---------------------------------------------------------------------------------- metadata
def panoptic_separated_metadata(categories: Sequence[dict]) -> dict:
    """Detectron2 metadata of the separated format from COCO panoptic categories
    ({"id", "name", "isthing", "color"}). Stuff contiguous ids start at 1: id 0 is "things"."""
    # Things in id order, as Detectron2's COCO loader numbers them (it refuses other metadata).
    things = sorted((c for c in categories if c["isthing"]), key=lambda c: c["id"])
    stuff = [c for c in categories if not c["isthing"]]
    stuff_map = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    stuff_map[THINGS_STUFF_ID] = 0
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [list(c.get("color", (220, 20, 60))) for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_classes": ["things"] + [c["name"] for c in stuff],
        "stuff_colors": [[82, 18, 128]] + [list(c.get("color", (128, 128, 128))) for c in stuff],
        "stuff_dataset_id_to_contiguous_id": stuff_map,
    }


def semantic_from_panoptic(ids: np.ndarray, segments_info: Sequence[dict], categories_by_id: Dict[int, dict],
                           stuff_contiguous: Dict[int, int]) -> np.ndarray:
    """The stuff PNG of one image: things -> 0, stuff -> contiguous id, void -> 255."""
    out = np.full(ids.shape, IGNORE_LABEL, dtype=np.uint8)
    for seg in segments_info:
        category = categories_by_id[seg["category_id"]]
        out[ids == seg["id"]] = THINGS_STUFF_ID if category["isthing"] else stuff_contiguous[category["id"]]
    return out


# ---------------------------------------------------------------------------------- conversion
def _write_one_stuff_png(job):
    ann, image_info, categories, stuff_map, panoptic_root, out_dir = job
    out_path = os.path.join(out_dir, ann["file_name"])
    if os.path.isfile(out_path):  # resumable: keep a finished file that decodes at the right size
        try:
            with Image.open(out_path) as im:
                im.load()  # a truncated file (a copy cut short) is rewritten
                if im.size == (image_info["width"], image_info["height"]):
                    return out_path, False
        except (OSError, SyntaxError, ValueError):
            pass
    png_path = os.path.join(panoptic_root, ann["file_name"])
    ids = read_panoptic_png(png_path)
    check_panoptic_annotation(ann, ids, image_info, categories, png_path)
    semantic = semantic_from_panoptic(ids, ann["segments_info"], categories, stuff_map)
    tmp = out_path + ".tmp.png"
    Image.fromarray(semantic).save(tmp)
    os.replace(tmp, out_path)  # atomic: an interrupted run never leaves a half-written PNG
    return out_path, True


def write_stuff_pngs(panoptic_json: str, panoptic_root: str, out_dir: str, workers: int = 0,
                     progress: bool = True) -> Dict[str, int]:
    """Writes one stuff PNG per panoptic annotation into `out_dir` (skips finished ones).
    Returns {"written": n, "skipped": m}."""
    panoptic = load_json(panoptic_json)
    images, categories = index_panoptic_json(panoptic, panoptic_json)
    if not os.path.isdir(panoptic_root):
        raise DatasetError(f"{panoptic_root}: panoptic PNG folder not found")
    stuff_map = panoptic_separated_metadata(panoptic["categories"])["stuff_dataset_id_to_contiguous_id"]
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(ann, images[ann["image_id"]], categories, stuff_map, panoptic_root, out_dir)
            for ann in panoptic["annotations"]]
    counts = {"written": 0, "skipped": 0}
    workers = workers or min(8, os.cpu_count() or 1)
    from tqdm import tqdm

    def consume(results):
        for _, wrote in tqdm(results, total=len(jobs), disable=not progress, desc="stuff PNGs", unit="img"):
            counts["written" if wrote else "skipped"] += 1

    if workers <= 1 or len(jobs) < 8:
        consume(map(_write_one_stuff_png, jobs))
    else:
        with ProcessPoolExecutor(workers) as pool:
            consume(pool.map(_write_one_stuff_png, jobs, chunksize=16))
    return counts


MASK_FORMATS = ("bitmask", "polygon")  # INPUT.MASK_FORMAT


def panoptic_to_instances(panoptic_json: str, panoptic_root: str, out_json: Optional[str] = None,
                          mask_format: str = "bitmask") -> dict:
    """COCO detection-format "things" annotations derived from panoptic annotations, for datasets
    without an instances JSON (the project's demo data, your own data), with masks in the format
    INPUT.MASK_FORMAT reads: "bitmask" -> RLE (exact), "polygon" -> polygons of the mask's
    contours (Detectron2's GenericMask; holes filled, as in COCO's polygons; a segment too small
    for a 3-point polygon is left out, and counted in the log)."""
    from pycocotools import mask as mask_util

    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format {mask_format!r}: must be one of {MASK_FORMATS}")
    if mask_format == "polygon":
        from detectron2.utils.visualizer import GenericMask
    too_small = 0

    panoptic = load_json(panoptic_json)
    images, categories = index_panoptic_json(panoptic, panoptic_json)
    annotations = []
    for ann in panoptic["annotations"]:
        png_path = os.path.join(panoptic_root, ann["file_name"])
        ids = read_panoptic_png(png_path)
        check_panoptic_annotation(ann, ids, images[ann["image_id"]], categories, png_path)
        for seg in ann["segments_info"]:
            if not categories[seg["category_id"]]["isthing"]:
                continue
            mask = np.asfortranarray((ids == seg["id"]).astype(np.uint8))
            rle = mask_util.encode(mask)
            rle["counts"] = rle["counts"].decode("ascii")
            segmentation = rle
            if mask_format == "polygon" and not seg.get("iscrowd", 0):  # crowds stay RLE, as in COCO
                polygons = GenericMask(mask, *mask.shape).polygons
                if not polygons:
                    too_small += 1
                    continue
                segmentation = [[float(v) for v in p] for p in polygons]
            annotations.append({
                "id": len(annotations) + 1, "image_id": ann["image_id"], "category_id": seg["category_id"],
                "segmentation": segmentation, "area": float(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": int(seg.get("iscrowd", 0)),
            })
    if too_small:
        logger.warning("%s: %d thing segments too small for a polygon are left out of the instances (use "
                       "INPUT.MASK_FORMAT bitmask to keep every one)", panoptic_json, too_small)
    out = {"images": panoptic["images"], "annotations": annotations,
           "categories": [c for c in panoptic["categories"] if c["isthing"]]}
    if out_json:
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with open(out_json, "w") as f:
            json.dump(out, f)
    return out


# ---------------------------------------------------------------------------------- registration
def _check_image_files(job) -> int:
    """Every file of one annotated image decodes and agrees with the JSON; returns its segment count."""
    ann, info, categories, stuff_map, image_root, panoptic_root, sem_seg_root, panoptic_json = job
    image_path = os.path.join(image_root, info["file_name"])
    image = read_image(image_path, f"image listed in {panoptic_json}")
    if image.shape[:2] != (info["height"], info["width"]):
        raise DatasetError(f"{image_path}: size {image.shape[1]}x{image.shape[0]} does not match the "
                           f"declared {info['width']}x{info['height']} in {panoptic_json}")
    png_path = os.path.join(panoptic_root, ann["file_name"])
    ids = read_panoptic_png(png_path)
    check_panoptic_annotation(ann, ids, info, categories, png_path)
    stuff_path = os.path.join(sem_seg_root, ann["file_name"])
    stuff = read_image(stuff_path, "stuff PNG (written by datasets/prepare_coco_panoptic.py)")
    expected = semantic_from_panoptic(ids, ann["segments_info"], categories, stuff_map)
    if stuff.shape != expected.shape or not np.array_equal(stuff, expected):
        wrong = (f"size {stuff.shape[1]}x{stuff.shape[0]}, expected {expected.shape[1]}x{expected.shape[0]}"
                 if stuff.shape[:2] != expected.shape else
                 f"{int((stuff != expected).sum())} pixels differ from the panoptic PNG {png_path} (labels "
                 f"{sorted(set(np.unique(stuff).tolist()))[:12]}, allowed 0..{len(stuff_map) - 1} and 255)")
        raise DatasetError(f"{stuff_path}: stuff PNG does not match its panoptic annotation ({wrong}); "
                           "rewrite it with datasets/prepare_coco_panoptic.py after deleting it")
    return len(ann["segments_info"])


def check_instances_json(instances: dict, instances_json: str, categories: Dict[int, dict],
                         mask_format: Optional[str] = None):
    """An instances JSON fits its panoptic dataset: its categories are exactly the panoptic things
    (id and name), and, given INPUT.MASK_FORMAT, its masks can be read in that format."""
    unknown = {a.get("category_id") for a in instances.get("annotations", [])} - set(categories)
    if unknown:
        raise DatasetError(f"{instances_json}: unknown category ids {sorted(unknown, key=str)} (not among the "
                           f"panoptic categories {sorted(categories)})")
    stuff = sorted(c["id"] for c in instances.get("categories", []) if c.get("id") in categories
                   and not categories[c["id"]]["isthing"])
    if stuff:
        raise DatasetError(f"{instances_json}: categories {stuff[:10]} are stuff in the panoptic JSON; an instances "
                           "JSON holds things only (leave it out to have it derived from the panoptic annotations, "
                           "or use things_only_instances)")
    things = {i: c["name"] for i, c in categories.items() if c["isthing"]}
    listed = {c.get("id"): c.get("name") for c in instances.get("categories", [])}
    if listed != things:
        raise DatasetError(f"{instances_json}: its categories {sorted(listed.items())[:5]}... differ from the panoptic "
                           f"things {sorted(things.items())[:5]}... (ids and names must be the same)")
    if mask_format == "polygon":
        rle = sum(1 for a in instances.get("annotations", [])
                  if isinstance(a.get("segmentation"), dict) and not a.get("iscrowd", 0))
        if rle:
            raise DatasetError(f"{instances_json}: {rle} non-crowd masks are RLE, which INPUT.MASK_FORMAT = 'polygon' "
                               "cannot read: set INPUT.MASK_FORMAT bitmask")


def things_only_instances(instances_json: str, panoptic_categories: Sequence[dict], out_json: str) -> dict:
    """A copy of a detection-format JSON that holds stuff too (e.g. COCO's panoptic-to-detection
    conversion) with only the panoptic things' categories and annotations."""
    instances = load_json(instances_json)
    things = {c["id"] for c in panoptic_categories if c["isthing"]}
    out = dict(instances, categories=[c for c in instances.get("categories", []) if c.get("id") in things],
               annotations=[a for a in instances.get("annotations", []) if a.get("category_id") in things])
    dropped = len(instances.get("annotations", [])) - len(out["annotations"])
    logger.warning("%s: %d annotations of stuff categories left out (written without them to %s)", instances_json,
                   dropped, out_json)
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(out, f)
    return out


def validate_panoptic_dataset(image_root: str, panoptic_root: str, panoptic_json: str, sem_seg_root: str,
                              instances_json: str, workers: int = 0, mask_format: Optional[str] = None) -> dict:
    """Checks every file a separated panoptic dataset needs: the JSONs' structure, and for every
    annotated image that its picture, panoptic PNG and stuff PNG exist, decode fully (no truncated
    file) and agree with the JSON and with each other. Returns the panoptic JSON. Errors name the
    file and the problem."""
    for path, what in ((image_root, "image folder"), (panoptic_root, "panoptic PNG folder"),
                       (sem_seg_root, "stuff PNG folder (run datasets/prepare_coco_panoptic.py)")):
        if not os.path.isdir(path):
            raise DatasetError(f"{path}: {what} not found")
    panoptic = load_json(panoptic_json)
    images, categories = index_panoptic_json(panoptic, panoptic_json)
    check_instances_json(load_json(instances_json), instances_json, categories, mask_format)
    stuff_map = panoptic_separated_metadata(panoptic["categories"])["stuff_dataset_id_to_contiguous_id"]
    jobs = [(ann, images[ann["image_id"]], categories, stuff_map, image_root, panoptic_root, sem_seg_root,
             panoptic_json) for ann in panoptic["annotations"]]
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(jobs) < 256:
        segments = sum(map(_check_image_files, jobs))
    else:
        with ProcessPoolExecutor(workers) as pool:
            segments = sum(pool.map(_check_image_files, jobs, chunksize=32))
    if segments == 0:
        raise DatasetError(f"{panoptic_json}: no annotation has any segment; there is nothing to train or evaluate")
    unannotated = len(images) - len(jobs)
    if unannotated:
        logger.warning("%s: %d of its %d images have no panoptic annotation; they are not used", panoptic_json,
                       unannotated, len(images))
    return panoptic


def register_panoptic_separated(name: str, image_root: str, panoptic_root: str, panoptic_json: str,
                                sem_seg_root: str, instances_json: str, validate: bool = True,
                                extra_metadata: Optional[dict] = None, mask_format: Optional[str] = None) -> List[str]:
    """Registers `name + "_separated"` (and `name + "_stuffonly"`) with Detectron2's standard
    `register_coco_panoptic_separated`, metadata from the panoptic JSON's categories. Returns the
    registered names. With `validate`, the files are checked now, so errors come at registration
    (`mask_format`: the INPUT.MASK_FORMAT the instances will be read with)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_panoptic_separated

    panoptic = (validate_panoptic_dataset(image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json,
                                          mask_format=mask_format)
                if validate else load_json(panoptic_json))
    index_panoptic_json(panoptic, panoptic_json)  # cheap: the structure is checked even without `validate`
    metadata = panoptic_separated_metadata(panoptic["categories"])
    metadata.update(extra_metadata or {})
    names = [name + "_separated", name + "_stuffonly"]
    for n in names:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
            from detectron2.data import MetadataCatalog
            MetadataCatalog.remove(n)
    register_coco_panoptic_separated(name, metadata, image_root, panoptic_root, panoptic_json, sem_seg_root,
                                     instances_json)
    return names


# ---------------------------------------------------------------------------------- your own data
def register_own_datasets(cfg, prepare: bool = True) -> List[str]:
    """Registers the COCO-format panoptic datasets that DATASETS.COCO_PANOPTIC lists (the command
    line's --dataset), as `<name>_separated`. With `prepare` (the main process): writes what
    Panoptic FPN needs beside the user's files, under DERIVED_DIR/<name> (stuff PNGs; an instances
    JSON in INPUT.MASK_FORMAT when none is given, or a things-only copy of one that holds stuff),
    and validates every file. Without: registers the same paths (their metadata) only."""
    d = cfg.DATASETS.COCO_PANOPTIC
    names = list(d.NAMES)
    columns = {"IMAGE_ROOTS": d.IMAGE_ROOTS, "PANOPTIC_ROOTS": d.PANOPTIC_ROOTS, "PANOPTIC_JSONS": d.PANOPTIC_JSONS}
    if d.INSTANCES_JSONS:
        columns["INSTANCES_JSONS"] = d.INSTANCES_JSONS
    for key, values in columns.items():
        if len(values) != len(names):
            raise DatasetError(f"DATASETS.COCO_PANOPTIC.{key} has {len(values)} entries for the {len(names)} "
                               f"DATASETS.COCO_PANOPTIC.NAMES {names}: one each")
    derived_root = d.DERIVED_DIR or os.path.join(cfg.OUTPUT_DIR, "datasets")
    registered = []
    for i, name in enumerate(names):
        image_root, panoptic_root, panoptic_json = d.IMAGE_ROOTS[i], d.PANOPTIC_ROOTS[i], d.PANOPTIC_JSONS[i]
        given = d.INSTANCES_JSONS[i] if d.INSTANCES_JSONS else ""
        folder = os.path.join(derived_root, name)
        sem_seg_root = os.path.join(folder, "stuff")
        instances_json = given or os.path.join(folder, f"instances_{cfg.INPUT.MASK_FORMAT}.json")
        if prepare:
            panoptic = load_json(panoptic_json)
            categories = index_panoptic_json(panoptic, panoptic_json)[1]
            write_stuff_pngs(panoptic_json, panoptic_root, sem_seg_root, workers=1, progress=False)
            if not given:
                panoptic_to_instances(panoptic_json, panoptic_root, instances_json, mask_format=cfg.INPUT.MASK_FORMAT)
            elif any(not categories.get(c.get("id"), {"isthing": 1})["isthing"]
                     for c in load_json(given).get("categories", [])):
                instances_json = os.path.join(folder, "instances_things.json")
                things_only_instances(given, panoptic["categories"], instances_json)
        elif given and os.path.isfile(os.path.join(folder, "instances_things.json")):
            instances_json = os.path.join(folder, "instances_things.json")
        registered += register_panoptic_separated(name, image_root, panoptic_root, panoptic_json, sem_seg_root,
                                                  instances_json, validate=prepare, mask_format=cfg.INPUT.MASK_FORMAT)
    return registered

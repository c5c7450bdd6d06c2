"""Reading and checking COCO panoptic files. Every error is a DatasetError that names the file, the
value and what is allowed, raised before any training starts (at dataset registration)."""
import json
import os
from typing import Dict, Tuple

import numpy as np
from panopticapi.utils import rgb2id
from PIL import Image


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent; the message names the file."""


def load_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text (JSON) file ({e.reason} at byte {e.start})") from None


def read_image(path: str, what: str, mode: str = None) -> np.ndarray:
    """The fully decoded pixels of an image file (a truncated or corrupt file fails here, naming it)."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: {what} not found")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode) if mode else im)
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{path}: {what} too large to decode ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL: truncated, corrupt, not an image
        raise DatasetError(f"{path}: {what} cannot be decoded ({e}); the file is truncated or corrupt") from None


def read_panoptic_png(path: str) -> np.ndarray:
    return rgb2id(read_image(path, "panoptic PNG", "RGB"))


def _require(container: dict, key: str, kinds, where: str, json_path: str):
    if key not in container:
        raise DatasetError(f"{json_path}: {where} has no '{key}'")
    value = container[key]
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise DatasetError(f"{json_path}: {where} has '{key}' = {value!r}; it must be {names}")
    return value


def index_panoptic_json(panoptic: dict, json_path: str) -> Tuple[Dict[int, dict], Dict[int, dict]]:
    """Checks the structure of a COCO panoptic JSON; returns (images, categories) by id."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(panoptic.get(key), list):
            raise DatasetError(f"{json_path}: missing the '{key}' list of a COCO panoptic JSON")
    categories = {}
    for c in panoptic["categories"]:
        where = f"category {c.get('id', '?')!r}"
        cid = _require(c, "id", (int,), where, json_path)
        _require(c, "name", (str,), where, json_path)
        isthing = _require(c, "isthing", (int, bool), where, json_path)
        if isthing not in (0, 1):
            raise DatasetError(f"{json_path}: {where} has 'isthing' = {isthing!r}; it must be 0 (stuff) or 1 (thing)")
        if cid in categories:
            raise DatasetError(f"{json_path}: category id {cid} appears twice in 'categories'")
        categories[cid] = c
    images = {}
    for im in panoptic["images"]:
        where = f"image {im.get('id', '?')!r}"
        iid = _require(im, "id", (int, str), where, json_path)
        _require(im, "file_name", (str,), where, json_path)
        for key in ("height", "width"):
            if _require(im, key, (int,), where, json_path) < 1:
                raise DatasetError(f"{json_path}: {where} has '{key}' = {im[key]}; it must be >= 1")
        if iid in images:
            raise DatasetError(f"{json_path}: image id {iid!r} appears twice in 'images'")
        images[iid] = im
    if not panoptic["annotations"]:
        raise DatasetError(f"{json_path}: 'annotations' is empty; a panoptic dataset needs at least one "
                           "annotated image (for training and for PQ evaluation)")
    annotated = set()
    for ann in panoptic["annotations"]:
        where = f"the annotation of image {ann.get('image_id', '?')!r}"
        image_id = _require(ann, "image_id", (int, str), where, json_path)
        _require(ann, "file_name", (str,), where, json_path)
        segments = _require(ann, "segments_info", (list,), where, json_path)
        if image_id not in images:
            raise DatasetError(f"{json_path}: annotation {ann.get('file_name')} refers to image id {image_id!r}, "
                               "which is not in 'images'")
        if image_id in annotated:
            raise DatasetError(f"{json_path}: image id {image_id!r} has more than one annotation")
        annotated.add(image_id)
        seen = set()
        for seg in segments:
            sid = _require(seg, "id", (int,), f"a segment of {where}", json_path)
            _require(seg, "category_id", (int,), f"segment {sid} of {where}", json_path)
            if sid in seen:
                raise DatasetError(f"{json_path}: segment id {sid} appears twice in {where}")
            seen.add(sid)
    return images, categories


def check_panoptic_annotation(ann: dict, ids: np.ndarray, image_info: dict, categories_by_id: Dict[int, dict],
                              png_path: str):
    """Segment ids in the PNG and in the JSON agree, categories exist, size matches."""
    expected = (image_info.get("height"), image_info.get("width"))
    if None not in expected and ids.shape != expected:
        raise DatasetError(f"{png_path}: size {ids.shape[1]}x{ids.shape[0]} does not match the declared "
                           f"{expected[1]}x{expected[0]} of image {image_info.get('file_name')}")
    declared = {s["id"] for s in ann["segments_info"]}
    present = set(np.unique(ids).tolist()) - {0}
    if declared - present:
        raise DatasetError(f"{png_path}: segment ids {sorted(declared - present)[:10]} are listed in the "
                           "panoptic JSON but absent from the PNG")
    if present - declared:
        raise DatasetError(f"{png_path}: segment ids {sorted(present - declared)[:10]} appear in the PNG but "
                           "are not listed in the panoptic JSON's segments_info")
    unknown = {s["category_id"] for s in ann["segments_info"]} - set(categories_by_id)
    if unknown:
        raise DatasetError(f"{png_path}: unknown category ids {sorted(unknown)} (not in the JSON's categories: "
                           f"{sorted(categories_by_id)})")

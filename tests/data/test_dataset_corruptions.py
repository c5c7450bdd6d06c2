"""Every corruption of a panoptic dataset tried is refused at registration (before any training)
with a DatasetError that names the file and what is wrong; nothing is accepted silently."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from crbp_detectron.data.coco_panoptic import DatasetError, register_panoptic_separated
from crbp_detectron.data.demo import DemoParams, generate_demo_dataset, register_demo_datasets

from ..training_utils import CapturedLog

PARAMS = DemoParams(train_images=3, val_images=1, image_size=64, min_object_size=10, max_object_size=24)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("clean"))
    return root, generate_demo_dataset(root, PARAMS, progress=False)["train"]


@pytest.fixture
def split(clean, tmp_path):
    """A fresh copy of the clean train split: {"image_root", "panoptic_root", ...} paths."""
    root, paths = clean
    shutil.copytree(os.path.join(root, "train"), tmp_path / "train")
    return {k: v.replace(os.path.join(root, "train"), str(tmp_path / "train")) for k, v in paths.items()}


def edit_json(path, edit):
    data = json.load(open(path))
    edit(data)
    json.dump(data, open(path, "w"))


def truncate(path, keep=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


def first_file(folder):
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def first_thing_segment(p):
    return next(s for s in p["annotations"][0]["segments_info"] if s["category_id"] < 10)


def resize(path, size, mode=None):
    im = Image.open(path)
    im.resize(size, Image.NEAREST).save(path)


def recolour_stuff(path):
    stuff = np.asarray(Image.open(path)).copy()
    stuff[stuff == 1] = 7  # a label beyond the 3 stuff classes
    stuff[0, 0] = 7
    Image.fromarray(stuff).save(path)


# (name, corruption, expected message: a regex that names the file)
CORRUPTIONS = [
    ("image folder missing", lambda p: shutil.rmtree(p["image_root"]), r"images: image folder not found"),
    ("panoptic PNG folder missing", lambda p: shutil.rmtree(p["panoptic_root"]), r"panoptic: panoptic PNG folder not found"),
    ("stuff PNG folder missing", lambda p: shutil.rmtree(p["sem_seg_root"]), r"stuff: stuff PNG folder \(run datasets/prepare_coco_panoptic.py\) not found"),
    ("panoptic JSON missing", lambda p: os.remove(p["panoptic_json"]), r"panoptic.json: file not found"),
    ("panoptic JSON truncated", lambda p: truncate(p["panoptic_json"]), r"panoptic.json: not valid JSON"),
    ("panoptic JSON binary", lambda p: open(p["panoptic_json"], "wb").write(bytes(range(256)) * 4),
     r"panoptic.json: not (valid JSON|a text \(JSON\) file)"),
    ("instances JSON missing", lambda p: os.remove(p["instances_json"]), r"instances.json: file not found"),
    ("no 'categories' list", lambda p: edit_json(p["panoptic_json"], lambda d: d.pop("categories")),
     r"panoptic.json: missing the 'categories' list"),
    ("category without isthing", lambda p: edit_json(p["panoptic_json"], lambda d: d["categories"][0].pop("isthing")),
     r"panoptic.json: category 1 has no 'isthing'"),
    ("isthing not 0/1", lambda p: edit_json(p["panoptic_json"], lambda d: d["categories"][0].update(isthing=2)),
     r"panoptic.json: category 1 has 'isthing' = 2; it must be 0 \(stuff\) or 1 \(thing\)"),
    ("duplicate category id", lambda p: edit_json(p["panoptic_json"], lambda d: d["categories"].append(d["categories"][0])),
     r"panoptic.json: category id 1 appears twice"),
    ("duplicate image id", lambda p: edit_json(p["panoptic_json"], lambda d: d["images"].append(d["images"][0])),
     r"panoptic.json: image id 1 appears twice"),
    ("empty annotations", lambda p: edit_json(p["panoptic_json"], lambda d: d.update(annotations=[])),
     r"panoptic.json: 'annotations' is empty"),
    ("annotation of an unknown image", lambda p: edit_json(p["panoptic_json"],
                                                          lambda d: d["annotations"][0].update(image_id=999)),
     r"panoptic.json: annotation train_000001.png refers to image id 999"),
    ("two annotations for one image", lambda p: edit_json(p["panoptic_json"],
                                                         lambda d: d["annotations"].append(d["annotations"][0])),
     r"panoptic.json: image id 1 has more than one annotation"),
    ("segment without category_id", lambda p: edit_json(p["panoptic_json"],
                                                       lambda d: d["annotations"][0]["segments_info"][0].pop("category_id")),
     r"panoptic.json: segment 1 of the annotation of image 1 has no 'category_id'"),
    ("segment absent from the PNG", lambda p: edit_json(p["panoptic_json"], lambda d: d["annotations"][0]["segments_info"].append(
        {"id": 4242, "category_id": 1, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1]})),
     r"train_000001.png: segment ids \[4242\] are listed in the panoptic JSON but absent from the PNG"),
    ("PNG segment not in the JSON", lambda p: edit_json(p["panoptic_json"], lambda d: d["annotations"][0]["segments_info"].pop(0)),
     r"train_000001.png: segment ids \[1\] appear in the PNG but are not listed"),
    ("unknown category", lambda p: edit_json(p["panoptic_json"], lambda d: first_thing_segment(d).update(category_id=99)),
     r"train_000001.png: unknown category ids \[99\]"),
    ("instances JSON: unknown category", lambda p: edit_json(p["instances_json"],
                                                            lambda d: d["annotations"][0].update(category_id=99)),
     r"instances.json: unknown category ids \[99\]"),
    ("image missing", lambda p: os.remove(first_file(p["image_root"])), r"train_000001.jpg: image listed in .* not found"),
    ("image truncated (JPEG)", lambda p: truncate(first_file(p["image_root"])),
     r"train_000001.jpg: image listed in .* cannot be decoded .*truncated or corrupt"),
    ("image not an image", lambda p: open(first_file(p["image_root"]), "wb").write(os.urandom(2000)),
     r"train_000001.jpg: image listed in .* cannot be decoded"),
    ("image size differs from the JSON", lambda p: edit_json(p["panoptic_json"], lambda d: d["images"][0].update(width=32)),
     r"train_000001.jpg: size 64x64 does not match the declared 32x64"),
    ("panoptic PNG missing", lambda p: os.remove(first_file(p["panoptic_root"])), r"train_000001.png: panoptic PNG not found"),
    ("panoptic PNG truncated", lambda p: truncate(first_file(p["panoptic_root"])),
     r"panoptic/train_000001.png: panoptic PNG cannot be decoded .*truncated or corrupt"),
    ("panoptic PNG of another size", lambda p: resize(first_file(p["panoptic_root"]), (32, 32)),
     r"panoptic/train_000001.png: size 32x32 does not match the declared 64x64"),
    ("stuff PNG missing", lambda p: os.remove(first_file(p["sem_seg_root"])), r"stuff/train_000001.png: stuff PNG .* not found"),
    ("stuff PNG truncated", lambda p: truncate(first_file(p["sem_seg_root"])),
     r"stuff/train_000001.png: stuff PNG .* cannot be decoded .*truncated or corrupt"),
    ("stuff PNG of another size", lambda p: resize(first_file(p["sem_seg_root"]), (32, 32)),
     r"stuff/train_000001.png: stuff PNG does not match its panoptic annotation \(size 32x32, expected 64x64\)"),
    ("stuff PNG with wrong labels", lambda p: recolour_stuff(first_file(p["sem_seg_root"])),
     r"stuff/train_000001.png: stuff PNG does not match .*pixels differ .*labels \[.*7.*\], allowed 0..3 and 255"),
]


@pytest.mark.parametrize("name, corrupt, message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corruption_is_named_at_registration(split, name, corrupt, message):
    corrupt(split)
    with pytest.raises(DatasetError, match=message):
        register_panoptic_separated("crbp_test_corrupt", **split)


def test_clean_split_registers_and_an_unannotated_image_is_reported(split):
    assert register_panoptic_separated("crbp_test_clean", **split) == ["crbp_test_clean_separated",
                                                                       "crbp_test_clean_stuffonly"]
    edit_json(split["panoptic_json"], lambda d: d["images"].append(dict(d["images"][0], id=77, file_name="x.jpg")))
    with CapturedLog() as log:
        register_panoptic_separated("crbp_test_clean", **split)
    assert "1 of its 4 images have no panoptic annotation; they are not used" in log.text


def test_demo_data_is_validated_too(tmp_path):
    paths = generate_demo_dataset(str(tmp_path), PARAMS, progress=False)
    first = first_file(paths["val"]["image_root"])
    os.remove(first)
    with pytest.raises(DatasetError, match=f"{first}: image listed in"):
        register_demo_datasets(str(tmp_path), PARAMS, progress=False)

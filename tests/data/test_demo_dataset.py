"""The embedded demo dataset: deterministic, self-consistent, scored PQ 100 by the evaluator."""
import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from crbp_detectron.data.coco_panoptic import read_panoptic_png, validate_panoptic_dataset
from crbp_detectron.data.demo import (CATEGORIES, DemoParams, generate_demo_dataset, register_demo_datasets,
                                     render_image)

from .utils import ground_truth_pq

SMALL = DemoParams(train_images=6, val_images=4, seed=3)
CURVE_ID = next(c["id"] for c in CATEGORIES if c["name"] == "curve")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    return root, generate_demo_dataset(root, SMALL, progress=False)


def test_deterministic_for_a_seed(demo, tmp_path):
    root, paths = demo
    other = generate_demo_dataset(str(tmp_path / "again"), SMALL, progress=False)
    for key in ("image_root", "panoptic_root", "sem_seg_root"):
        a, b = paths["train"][key], other["train"][key]
        names = sorted(os.listdir(a))
        assert names == sorted(os.listdir(b)) and len(names) == 6
        match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
        assert not mismatch and not errors
    for key in ("panoptic_json", "instances_json"):
        assert json.load(open(paths["val"][key])) == json.load(open(other["val"][key]))
    different = generate_demo_dataset(str(tmp_path / "seed4"), DemoParams(train_images=6, val_images=4, seed=4),
                                      progress=False)
    assert not filecmp.cmp(os.path.join(paths["train"]["panoptic_root"], "train_000001.png"),
                           os.path.join(different["train"]["panoptic_root"], "train_000001.png"), shallow=False)


def test_cached_unless_parameters_change(demo):
    root, paths = demo
    png = os.path.join(paths["train"]["panoptic_root"], "train_000001.png")
    before = os.stat(png).st_mtime_ns
    generate_demo_dataset(root, SMALL, progress=False)
    assert os.stat(png).st_mtime_ns == before
    changed = DemoParams(train_images=5, val_images=4, seed=3)
    generate_demo_dataset(root, changed, progress=False)
    assert len(os.listdir(paths["train"]["panoptic_root"])) == 5
    generate_demo_dataset(root, SMALL, progress=False)  # back, for the other tests


def test_files_agree_with_each_other(demo):
    _, paths = demo
    categories = {c["id"]: c for c in CATEGORIES}
    for split in ("train", "val"):
        p = paths[split]
        panoptic = validate_panoptic_dataset(**p)  # PNG ids vs JSON, categories, sizes, images
        instances = json.load(open(p["instances_json"]))
        by_key = {(a["image_id"], a["bbox"][0], a["bbox"][1]): a for a in instances["annotations"]}
        things = 0
        for ann in panoptic["annotations"]:
            ids = read_panoptic_png(os.path.join(p["panoptic_root"], ann["file_name"]))
            stuff = np.asarray(Image.open(os.path.join(p["sem_seg_root"], ann["file_name"])))
            assert (ids > 0).all()  # no void in the demo data
            for seg in ann["segments_info"]:
                mask = ids == seg["id"]
                assert seg["area"] == mask.sum()
                ys, xs = np.nonzero(mask)
                assert seg["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                if categories[seg["category_id"]]["isthing"]:
                    things += 1
                    inst = by_key[(ann["image_id"], float(seg["bbox"][0]), float(seg["bbox"][1]))]
                    assert inst["category_id"] == seg["category_id"] and inst["area"] == seg["area"]
                    assert (stuff[mask] == 0).all()
                else:
                    assert (stuff[mask] == 1 + [c["id"] for c in CATEGORIES if not c["isthing"]].index(seg["category_id"])).all()
        assert things == len([a for a in instances["annotations"]
                              if a["image_id"] in {x["image_id"] for x in panoptic["annotations"]}])


def test_shapes_have_several_classes_sizes_and_occlusion(demo):
    _, paths = demo
    instances = json.load(open(paths["train"]["instances_json"]))["annotations"]
    assert len({a["category_id"] for a in instances}) >= 3
    areas = [a["area"] for a in instances if a["category_id"] != CURVE_ID]
    assert max(areas) > 3 * min(areas)


def test_curves_need_grouping():
    """A curve is long and thin, made of separate dashes; the curves of an image share one colour
    and most pairs cross, so colour cannot tell them apart."""
    import cv2

    params = DemoParams(image_size=128, max_curves=2, seed=5)
    curves, images_with_two, crossing = 0, 0, 0
    for idx in range(40):
        rng = np.random.default_rng([params.seed, 1, idx])
        image, ids, segments = render_image(rng, params)
        curve_segments = [s for s in segments if s["category_id"] == CURVE_ID]
        masks = [ids == s["id"] for s in curve_segments]
        for segment, mask in zip(curve_segments, masks):
            curves += 1
            assert max(segment["bbox"][2:]) >= 0.35 * params.image_size  # long
            assert not cv2.erode(mask.astype(np.uint8), np.ones((17, 17), np.uint8)).any()  # thin: < 17 px across
            assert cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1 >= 2  # dashes
        if len(masks) == 2:
            images_with_two += 1
            colours = [np.median(image[m], axis=0) for m in masks]
            assert np.abs(colours[0] - colours[1]).max() < 40  # one colour (+ texture noise)
            near = cv2.dilate(masks[0].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            crossing += bool((near & masks[1]).any())
    assert curves >= 20 and images_with_two >= 5
    assert crossing >= 0.5 * images_with_two


def test_evaluator_scores_ground_truth_pq_100(demo, tmp_path):
    root, paths = demo
    names = register_demo_datasets(root, SMALL, progress=False)
    assert "crbp_demo_val_separated" in names
    results = ground_truth_pq("crbp_demo_val_separated", paths["val"]["panoptic_json"], paths["val"]["panoptic_root"],
                              str(tmp_path))
    assert results["PQ"] == pytest.approx(100.0)
    # PQ per class, by name, for every category that occurs in the val split.
    val = json.load(open(paths["val"]["panoptic_json"]))
    present = {c["name"] for c in CATEGORIES
               if any(s["category_id"] == c["id"] for a in val["annotations"] for s in a["segments_info"])}
    per_class = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("PQ/")}
    assert present and set(per_class) >= present
    assert all(per_class[name] == pytest.approx(100.0) for name in present)
    # Leaving one class out of the prediction costs that class, and only it.
    left_out = next(c for c in CATEGORIES if c["isthing"] and c["name"] in present)
    dropped = ground_truth_pq("crbp_demo_val_separated", paths["val"]["panoptic_json"], paths["val"]["panoptic_root"],
                              str(tmp_path / "dropped"), drop_category=left_out["id"])
    assert dropped[f"PQ/{left_out['name']}"] == 0.0
    assert all(dropped[f"PQ/{name}"] == pytest.approx(100.0) for name in present - {left_out["name"]})

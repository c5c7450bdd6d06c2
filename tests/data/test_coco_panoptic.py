"""COCO panoptic preparation, registration and PQ evaluation on the real two-image sample."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import crbp_detectron  # noqa: F401
from crbp_detectron.data.coco_panoptic import (DatasetError, panoptic_separated_metadata, panoptic_to_instances,
                                               read_panoptic_png, register_panoptic_separated, write_stuff_pngs)

from ..modeling.utils import TINY
from .utils import ground_truth_pq


@pytest.fixture(scope="module")
def prepared(coco_sample, tmp_path_factory):
    """Stuff PNGs and an instances JSON derived from the sample, written to a temp dir."""
    out = tmp_path_factory.mktemp("coco_sample")
    panoptic_json = os.path.join(coco_sample, "panoptic_examples.json")
    panoptic_root = os.path.join(coco_sample, "panoptic_val2017")
    from datasets.prepare_coco_panoptic import main as prepare_main
    assert prepare_main(["--panoptic-json", panoptic_json, "--panoptic-root", panoptic_root,
                         "--out", str(out / "panoptic_stuff_val2017")]) == 0
    panoptic_to_instances(panoptic_json, panoptic_root, str(out / "instances.json"))
    return dict(image_root=os.path.join(coco_sample, "val2017"), panoptic_root=panoptic_root,
                panoptic_json=panoptic_json, sem_seg_root=str(out / "panoptic_stuff_val2017"),
                instances_json=str(out / "instances.json"), out=out)


def test_stuff_pngs_agree_pixel_by_pixel(prepared):
    panoptic = json.load(open(prepared["panoptic_json"]))
    categories = {c["id"]: c for c in panoptic["categories"]}
    stuff_map = panoptic_separated_metadata(panoptic["categories"])["stuff_dataset_id_to_contiguous_id"]
    assert len(panoptic["annotations"]) == 2
    for ann in panoptic["annotations"]:
        ids = read_panoptic_png(os.path.join(prepared["panoptic_root"], ann["file_name"]))
        stuff = np.asarray(Image.open(os.path.join(prepared["sem_seg_root"], ann["file_name"])))
        assert stuff.shape == ids.shape and stuff.dtype == np.uint8
        assert (stuff[ids == 0] == 255).all()  # void
        for seg in ann["segments_info"]:
            cat = categories[seg["category_id"]]
            expected = 0 if cat["isthing"] else stuff_map[cat["id"]]
            assert 1 <= stuff_map.get(cat["id"], 1) <= 53
            assert (stuff[ids == seg["id"]] == expected).all()
        assert set(np.unique(stuff)) <= set(range(54)) | {255}


def test_prepare_is_resumable(prepared, coco_sample):
    counts = write_stuff_pngs(prepared["panoptic_json"], prepared["panoptic_root"], prepared["sem_seg_root"])
    assert counts == {"written": 0, "skipped": 2}


def test_instances_match_the_detection_format_file(prepared, coco_sample):
    ours = json.load(open(prepared["instances_json"]))
    reference = json.load(open(os.path.join(coco_sample, "panoptic_detection_format.json")))
    things = {c["id"] for c in reference["categories"] if c.get("isthing", 1)}
    ref = sorted((a["image_id"], a["category_id"], round(a["area"])) for a in reference["annotations"]
                 if a["category_id"] in things and a["category_id"] <= 90)
    got = sorted((a["image_id"], a["category_id"], round(a["area"])) for a in ours["annotations"])
    assert got == ref


def _register(prepared, name="crbp_test_coco_sample"):
    return register_panoptic_separated(name, prepared["image_root"], prepared["panoptic_root"],
                                       prepared["panoptic_json"], prepared["sem_seg_root"], prepared["instances_json"])


def test_ground_truth_as_prediction_scores_pq_100(prepared, tmp_path):
    name = _register(prepared)[0]
    results = ground_truth_pq(name, prepared["panoptic_json"], prepared["panoptic_root"], str(tmp_path))
    assert results["PQ"] == pytest.approx(100.0)
    assert results["SQ"] == pytest.approx(100.0) and results["RQ"] == pytest.approx(100.0)


def test_eval_only_with_a_tiny_random_model(prepared, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    from crbp_detectron.config import load_config
    from crbp_detectron.engine import Trainer

    name = _register(prepared)[0]
    opts = [o for o in TINY]
    for key, value in (("MODEL.ROI_HEADS.NUM_CLASSES", 80), ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", 54)):
        opts[opts.index(key) + 1] = value
    cfg = load_config("panoptic_crbp.yaml", opts + ["DATASETS.TEST", f"('{name}',)", "DATALOADER.NUM_WORKERS", 0,
                                                     "OUTPUT_DIR", str(tmp_path)])
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).resume_or_load("", resume=False)
    results = Trainer.test(cfg, model)
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert key in results["panoptic_seg"] and np.isfinite(results["panoptic_seg"][key])
    assert "bbox" in results and "segm" in results and "sem_seg" in results

    # The test-time steps sweep (train_net.py --eval-only --test-steps): CSV + PNG of PQ vs steps.
    from crbp_detectron.evaluation.test_steps import sweep_test_steps
    rows = sweep_test_steps(cfg, model, [1, 3], str(tmp_path / "sweep"))
    assert [r["test_steps"] for r in rows] == [1, 3] and all("panoptic_seg/PQ" in r for r in rows)
    lines = (tmp_path / "sweep" / "test_steps.csv").read_text().splitlines()
    assert lines[0].startswith("test_steps,") and len(lines) == 3
    assert (tmp_path / "sweep" / "test_steps.png").stat().st_size > 1000


def test_missing_and_malformed_files_are_named(prepared, tmp_path):
    with pytest.raises(DatasetError, match="stuff PNG folder"):
        register_panoptic_separated("bad1", prepared["image_root"], prepared["panoptic_root"], prepared["panoptic_json"],
                                    str(tmp_path / "nope"), prepared["instances_json"])
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [}')
    with pytest.raises(DatasetError, match=r"broken.json: not valid JSON"):
        write_stuff_pngs(str(broken), prepared["panoptic_root"], str(tmp_path / "o"))
    # A segment listed in the JSON but absent from the PNG.
    panoptic = json.load(open(prepared["panoptic_json"]))
    panoptic["annotations"][0]["segments_info"].append({"id": 123456, "category_id": 1, "iscrowd": 0,
                                                        "area": 1, "bbox": [0, 0, 1, 1]})
    bad = tmp_path / "bad_segments.json"
    bad.write_text(json.dumps(panoptic))
    with pytest.raises(DatasetError, match=r"\[123456\].*absent from the PNG"):
        write_stuff_pngs(str(bad), prepared["panoptic_root"], str(tmp_path / "o2"), workers=1)
    # An image that is not there.
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(os.path.join(prepared["image_root"], "000000142238.jpg"), images)
    with pytest.raises(DatasetError, match="000000439180.jpg: image listed"):
        register_panoptic_separated("bad2", str(images), prepared["panoptic_root"], prepared["panoptic_json"],
                                    prepared["sem_seg_root"], prepared["instances_json"])


def _modified_json(prepared, tmp_path, edit):
    panoptic = json.load(open(prepared["panoptic_json"]))
    edit(panoptic)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(panoptic))
    return str(path)


def test_png_segment_missing_from_json_is_named(prepared, tmp_path):
    def drop_segment(p):
        p["annotations"][1]["segments_info"].pop(0)
    bad = _modified_json(prepared, tmp_path, drop_segment)
    with pytest.raises(DatasetError, match=r"000000439180.png: segment ids \[\d+\] appear in the PNG but are not listed"):
        write_stuff_pngs(bad, prepared["panoptic_root"], str(tmp_path / "o"), workers=1)


def test_unknown_category_is_named(prepared, tmp_path):
    def unknown_category(p):
        p["annotations"][0]["segments_info"][0]["category_id"] = 999
    bad = _modified_json(prepared, tmp_path, unknown_category)
    with pytest.raises(DatasetError, match=r"unknown category ids \[999\]"):
        register_panoptic_separated("bad3", prepared["image_root"], prepared["panoptic_root"], bad,
                                    prepared["sem_seg_root"], prepared["instances_json"])


def test_image_size_mismatch_is_named(prepared, tmp_path):
    def wrong_size(p):
        for im in p["images"]:
            if im["file_name"] == "000000142238.jpg":
                im["width"], im["height"] = 320, 427
    bad = _modified_json(prepared, tmp_path, wrong_size)
    with pytest.raises(DatasetError, match=r"000000142238.jpg: size 640x427 does not match the declared 320x427"):
        register_panoptic_separated("bad4", prepared["image_root"], prepared["panoptic_root"], bad,
                                    prepared["sem_seg_root"], prepared["instances_json"])

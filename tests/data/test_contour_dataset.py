"""The contour-grouping dataset: exact COCO panoptic files, contours that only continuity tells
apart (one colour, crossing, dashes that never touch, no slivers), its crossing records, and the
grouping bounds the benchmark measures on it."""
import json
import os

import cv2
import numpy as np
import pytest

from crbp_detectron.data.coco_panoptic import read_panoptic_png, validate_panoptic_dataset
from crbp_detectron.data.contours import (CATEGORIES, CONTOUR_CATEGORY, ContourParams, contour_ids, contour_strokes,
                                          crossing_pairs, generate_contour_dataset, register_contour_datasets,
                                          render_contour_image)

from .utils import ground_truth_pq

SMALL = ContourParams(train_images=4, val_images=3, test_images=12, seed=2)


@pytest.fixture(scope="module")
def contours(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("contours"))
    return root, generate_contour_dataset(root, SMALL, progress=False)


def contour_masks(ids, segments):
    return [ids == s["id"] for s in segments if s["category_id"] == CONTOUR_CATEGORY["id"]]


def test_files_are_exact_coco_panoptic_and_deterministic(contours, tmp_path):
    root, paths = contours
    for split in ("train", "val", "test"):
        panoptic = validate_panoptic_dataset(**{k: v for k, v in paths[split].items() if k != "extra_json"})
        assert len(panoptic["images"]) == getattr(SMALL, f"{split}_images")
    again = generate_contour_dataset(str(tmp_path / "again"), SMALL, progress=False)
    for key in ("panoptic_json", "instances_json", "extra_json"):
        assert json.load(open(paths["test"][key])) == json.load(open(again["test"][key]))


def test_contours_need_grouping():
    """Thin, dashed, one colour per image, crossing; different contours' dashes never touch (a
    blank pixel at least between them) and no contour owns a sliver."""
    params = ContourParams(seed=7)
    crossing_images, contours, single, several = 0, 0, 0, 0
    for idx in range(30):
        image, ids, segments, extra = render_contour_image(np.random.default_rng([params.seed, 1, idx]), params)
        masks = contour_masks(ids, segments)
        assert masks
        several += len(masks) >= 3
        contours += len(masks)
        single += sum(not c["crosses"] for c in extra["contours"])
        for i, mask in enumerate(masks):
            m = mask.astype(np.uint8)
            assert not cv2.erode(m, np.ones((4, 4), np.uint8)).any()  # thin: under 4 px across
            count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
            assert count - 1 >= 6  # many dashes
            assert stats[1:, cv2.CC_STAT_AREA].min() >= 5  # no sliver
            grown = cv2.dilate(m, np.ones((3, 3), np.uint8)).astype(bool)
            assert not any((grown & other).any() for j, other in enumerate(masks) if j != i)  # never touch
        colours = np.array([np.median(image[m], axis=0) for m in masks])
        assert np.abs(colours - colours[0]).max() < 40  # one colour (+ noise)
        crosses = {c["id"]: set(c["crosses"]) for c in extra["contours"]}
        assert all(i in crosses[j] for i in crosses for j in crosses[i])  # symmetric
        crossing_images += any(crosses.values())
    assert several >= 20 and crossing_images >= 25 and 0.05 * contours <= single <= 0.5 * contours


def test_crossing_record_matches_the_masks(contours):
    """A contour recorded as crossing has another contour's pixels inside its box, and two crossing
    contours' masks come within a few pixels of each other (the crossing's gap)."""
    _, paths = contours
    p = paths["test"]
    panoptic = json.load(open(p["panoptic_json"]))
    extra = {e["image_id"]: e["contours"] for e in json.load(open(p["extra_json"]))["images"]}
    checked = 0
    for ann in panoptic["annotations"]:
        ids = read_panoptic_png(os.path.join(p["panoptic_root"], ann["file_name"]))
        boxes = {s["id"]: s["bbox"] for s in ann["segments_info"]}
        assert {c["id"] for c in extra[ann["image_id"]]} == {s["id"] for s in ann["segments_info"]
                                                              if s["category_id"] == CONTOUR_CATEGORY["id"]}
        for c in extra[ann["image_id"]]:
            for other in c["crosses"]:
                x, y, w, h = boxes[c["id"]]
                assert (ids[y:y + h, x:x + w] == other).any()
                near = cv2.dilate((ids == c["id"]).astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
                assert (near & (ids == other)).any()
                checked += 1
    assert checked >= 10


def test_contours_drawn_again_are_the_written_ones(contours):
    """contour_strokes gives, for every written image, the kept dashes of exactly its contour
    masks (path i renders segment contour_ids()[i]) and the crossings the extra file records."""
    _, paths = contours
    for split in ("train", "val"):
        p = paths[split]
        panoptic = json.load(open(p["panoptic_json"]))
        extra = {e["image_id"]: e["contours"] for e in json.load(open(p["extra_json"]))["images"]}
        for index, ann in enumerate(sorted(panoptic["annotations"], key=lambda a: a["image_id"])):
            ids = read_panoptic_png(os.path.join(p["panoptic_root"], ann["file_name"]))
            strokes, lines = contour_strokes(split, index, SMALL)
            segment_ids = contour_ids(len(lines))
            assert sorted(segment_ids) == sorted(c["id"] for c in extra[ann["image_id"]])
            for path, segment in enumerate(segment_ids):
                np.testing.assert_array_equal(strokes.fields[path] <= 0.0, ids == segment)
            crosses = {(segment_ids[i], segment_ids[j]) for i, j in crossing_pairs(lines)}
            assert crosses == {(c["id"], o) for c in extra[ann["image_id"]] for o in c["crosses"] if c["id"] < o}
    with pytest.raises(ValueError, match="no split 'tain'"):
        contour_strokes("tain", 0, SMALL)


def test_evaluator_scores_ground_truth_pq_100(contours, tmp_path):
    root, paths = contours
    names = register_contour_datasets(root, SMALL, progress=False)
    assert {"crbp_contours_train_separated", "crbp_contours_val_separated", "crbp_contours_test_separated"} <= set(names)
    results = ground_truth_pq("crbp_contours_test_separated", paths["test"]["panoptic_json"],
                              paths["test"]["panoptic_root"], str(tmp_path))
    assert results["PQ"] == pytest.approx(100.0) and results["PQ/contour"] == pytest.approx(100.0)
    dropped = ground_truth_pq("crbp_contours_test_separated", paths["test"]["panoptic_json"],
                              paths["test"]["panoptic_root"], str(tmp_path / "dropped"),
                              drop_category=CONTOUR_CATEGORY["id"])
    assert dropped["PQ/contour"] == 0.0 and dropped["PQ/sand"] == pytest.approx(100.0)
    assert [c["name"] for c in CATEGORIES if c["isthing"]][-1] == "contour"


def test_grouping_bounds(contours):
    """Single contours with no other contour in their box have a non-grouping bound of exactly 1;
    crossing ones share their box with other contours, so theirs is lower; a 56 x 56 grid keeps
    most of a thin contour, a 7 x 7 grid much less."""
    from benchmarks.contour_grouping import grouping_bounds

    _, paths = contours
    fine, coarse = grouping_bounds(paths["test"], 56), grouping_bounds(paths["test"], 7)
    assert fine["crossing"]["n"] >= 10
    assert fine["crossing"]["non_grouping_bound"] < 0.75 <= fine["single"]["non_grouping_bound"]
    assert fine["all"]["resolution_bound"] > 0.75 > coarse["all"]["resolution_bound"]
    assert fine["crossing"]["non_grouping_bound"] == coarse["crossing"]["non_grouping_bound"]  # no grid in it

"""The contour-grouping benchmark's measurements and report: a mask head that outputs the ground
truth scores exactly the data's resolution bound, and the report is rebuilt from per-run JSONs."""
import json

import pytest
import torch
from torch import nn

from crbp_detectron.data.contours import CATEGORIES, CONTOUR_CATEGORY, ContourParams

from .test_benchmarks import table_rows

PARAMS = ContourParams(train_images=2, val_images=2, test_images=6, seed=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from crbp_detectron.data.contours import generate_contour_dataset, register_contour_datasets

    root = str(tmp_path_factory.mktemp("contours"))
    paths = generate_contour_dataset(root, PARAMS, progress=False)
    register_contour_datasets(root, PARAMS, progress=False)
    return paths


class GroundTruthMaskHead(nn.Module):
    """Stands in for a trained mask head: for each given box, the ground-truth mask whose box it
    is, cropped and resized as Detectron2 makes mask targets (nothing for other boxes: the
    untrained detector's)."""

    def __init__(self, masks_by_box, side):
        super().__init__()
        self.masks_by_box, self.side = masks_by_box, side

    def forward(self, features, instances):
        from detectron2.structures import BitMasks

        for inst in instances:
            boxes = inst.pred_boxes.tensor
            empty = torch.zeros_like(next(iter(self.masks_by_box.values())))
            masks = torch.stack([self.masks_by_box.get(tuple(b.tolist()), empty) for b in boxes])
            inst.pred_masks = BitMasks(masks).crop_and_resize(boxes, self.side).float()[:, None]
        return instances


def test_a_perfect_mask_head_scores_the_resolution_bound(data):
    from benchmarks.contour_grouping import grouping_bounds, measure_grouping, split_images, summarise
    from crbp_detectron.config import load_config
    from crbp_detectron.inference import Predictor

    cfg = load_config("contours/panoptic_fpn_contours.yaml", [
        "MODEL.WEIGHTS", "", "DATASETS.TEST", "('crbp_contours_test_separated',)", "MODEL.DEVICE", "cpu"])
    predictor = Predictor(cfg)
    side = 2 * cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
    masks_by_box = {tuple(t["box"]): torch.from_numpy(image["ids"] == t["id"])
                    for image in split_images(data["test"]) for t in image["things"]}
    predictor.model.roi_heads.mask_head = GroundTruthMaskHead(masks_by_box, side)
    instances, pictures = measure_grouping(predictor, data["test"], {(1, 100)})
    measured = summarise(instances, CONTOUR_CATEGORY["id"])
    bounds = grouping_bounds(data["test"], side)
    for group in ("crossing", "single"):
        if bounds[group]["n"]:
            assert measured[group]["n"] == bounds[group]["n"]
            assert measured[group]["mask_iou"] == pytest.approx(bounds[group]["resolution_bound"], abs=1e-12)
    # Own dashes near 1, other contours' dashes inside the box near 0.
    assert measured["crossing"]["own_probability"] > 0.8 > 0.1 > measured["crossing"]["other_probability"]
    assert list(pictures) == ["1/100"]


def test_report_from_per_run_results(data, tmp_path):
    """One row per model, mean ± std over seeds in percent, bounds per split, the picture."""
    from benchmarks import contour_grouping as cg

    keys = cg.picture_instances(data["test"], 2)
    images = {im["image_id"]: im for im in cg.split_images(data["test"])}
    pictures = {f"{i}/{s}": cg._rle(images[i]["ids"] == s) for i, s in keys}
    folder = tmp_path / "results" / cg.FOLDER
    folder.mkdir(parents=True)
    bounds = {"command": "python benchmarks/contour_grouping.py --bounds", "mask_size": 56, "data": "test data",
              "splits": {"test": {"crossing": {"n": 10, "resolution_bound": 0.87, "non_grouping_bound": 0.48},
                                  "single": {"n": 3, "resolution_bound": 0.9, "non_grouping_bound": 0.85},
                                  "all": {"n": 13, "resolution_bound": 0.88, "non_grouping_bound": 0.55}}}}
    (folder / "bounds.json").write_text(json.dumps(bounds))
    for model, ious in (("feedforward", (0.40, 0.50)), ("crbp", (0.80, 0.80))):
        for seed, value in enumerate(ious):
            grouping = {"crossing": {"n": 10, "mask_iou": value, "detection_recall": 0.9, "own_probability": 0.7,
                                     "other_probability": 0.2},
                        "single": {"n": 3, "mask_iou": 0.9, "detection_recall": 1.0}}
            evaluation = {"panoptic_seg/PQ": 70.0 + seed, "panoptic_seg/PQ_th": 60.0, "panoptic_seg/PQ_st": 90.0,
                          **{f"panoptic_seg/PQ/{c['name']}": float(c["id"]) for c in CATEGORIES}}
            run = {"model": model, "label": cg.MODELS[model][1], "seed": seed, "iterations": 100, "ims_per_batch": 4,
                   "evaluation": evaluation, "grouping": grouping, "trainable_parameters": 1000,
                   "saved_for_backward_bytes": 2 ** 20, "seconds_per_iteration": 1.0, "training_wall_seconds": 60.0,
                   "pictures": pictures, "command": f"python benchmarks/contour_grouping.py --models {model}",
                   "machine": "cpu: test"}
            (folder / f"{model}_seed{seed}.json").write_text(json.dumps(run))
    cg.write_report(str(tmp_path / "results"), data)
    md = (tmp_path / "results" / "contour_grouping.md").read_text()
    assert "python benchmarks/contour_grouping.py --bounds\npython benchmarks/contour_grouping.py --models crbp" in md
    rows = table_rows(md, [cg.MODELS["feedforward"][1], cg.MODELS["crbp"][1]])
    assert rows[0][1:4] == ["0, 1", "45.0 ± 7.1", "90.0 ± 0.0"]
    assert rows[1][1:4] == ["0, 1", "80.0 ± 0.0", "90.0 ± 0.0"]
    assert rows[0][-4:] == ["5.0 ± 0.0", "70.5 ± 0.7", "60.0 ± 0.0", "90.0 ± 0.0"]  # PQ contour (id 5), PQ ...
    bound_rows = table_rows(md, ["test"])
    assert bound_rows[0] == ["test", "crossing", "10", "87.0", "48.0"]
    assert (tmp_path / "results" / "contour_grouping.png").stat().st_size > 0

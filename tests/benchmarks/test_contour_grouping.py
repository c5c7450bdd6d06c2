"""The contour-grouping benchmark's measurements and report: a mask head that outputs the ground
truth scores exactly the data's resolution bound, and the report is rebuilt from per-run JSONs."""
import json

import numpy as np
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
    from benchmarks.contour_grouping import (grouping_bounds, mask_composition, measure_grouping, probability_by_depth,
                                             split_images, summarise)
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
    # Where its masks fall: exactly where the ground truth through the grid falls, on no other contour.
    composition = mask_composition(predictor, data["test"], side)
    for group in ("crossing", "single"):
        if bounds[group]["n"]:
            assert composition["model"][group] == composition["grid"][group]
            assert composition["model"][group]["on_other_contours"] == 0
            assert composition["model"][group]["on_own"] > 0.85
    # The same by depth into the box: the perfect head keeps own above other at every depth.
    profile = probability_by_depth(predictor, data["test"])
    assert len(profile["own"]) == len(profile["other"]) == len(profile["bins"]) - 1
    assert all(p > 0.8 for p in profile["own"][:2]) and all(p < 0.1 for p in profile["other"] if p is not None)


def test_report_from_per_run_results(data, tmp_path):
    """One row per model, mean ± std over seeds in percent, bounds per split, the picture."""
    from benchmarks import contour_grouping as cg

    keys = cg.picture_instances(data["test"], 2)
    images = {im["image_id"]: im for im in cg.split_images(data["test"])}
    pictures = {f"{i}/{s}": cg._rle(images[i]["ids"] == s) for i, s in keys}
    folder = tmp_path / "results" / cg.FOLDER
    folder.mkdir(parents=True)
    bounds = {"command": "python benchmarks/contour_grouping.py --bounds", "mask_size": 56, "data": "test data",
              "splits": {"test": {"crossing": {"n": 10, "resolution_bound": 0.87, "non_grouping_bound": 0.48,
                                               "own_spans_box": 0.8, "other_spans_box": 0.07},
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
            if model == "crbp":  # measured again with --memory
                run.update(saved_for_backward_bytes_as_trained=3 * 2 ** 20, memory_command="cg --memory")
            (folder / f"{model}_seed{seed}.json").write_text(json.dumps(run))
    depth = {"bins": cg.DEPTH_BINS, "own": [0.7, 0.6, 0.5, None], "other": [0.2, 0.3, 0.4, 0.45]}
    steps = {"model": "crbp", "label": cg.MODELS["crbp"][1], "weights": "model_final.pth", "split": "val",
             "command": "python benchmarks/contour_grouping.py --models crbp --test-steps 6 50",
             "rows": [{"steps": n, "crossing_by_depth": depth,
                       "grouping": {"crossing": {"mask_iou": iou, "own_probability": 0.61, "other_probability": 0.4},
                                    "single": {"mask_iou": 0.5}}} for n, iou in ((6, 0.3), (50, 0.35))]}
    (folder / f"{cg.TEST_STEPS_PREFIX}crbp.json").write_text(json.dumps(steps))  # not a run: its own table
    part = {"n": 10, "on_own": 0.5, "on_other_contours": 0.4, "on_no_contour": 0.1, "own_covered": 0.6}
    composition = {"model": "crbp", "label": cg.MODELS["crbp"][1], "weights": "model_final.pth", "split": "test",
                   "mask_size": 56, "command": "python benchmarks/contour_grouping.py --models crbp --composition",
                   "composition": {source: {"crossing": part, "single": part} for source in ("model", "grid")}}
    (folder / f"{cg.COMPOSITION_PREFIX}crbp.json").write_text(json.dumps(composition))  # not a run either
    cg.write_report(str(tmp_path / "results"), data)
    md = (tmp_path / "results" / "contour_grouping.md").read_text()
    assert "python benchmarks/contour_grouping.py --bounds\npython benchmarks/contour_grouping.py --models crbp" in md
    rows = table_rows(md, [cg.MODELS["feedforward"][1], cg.MODELS["crbp"][1]])
    assert rows[0][1:4] == ["0, 1", "45.0 ± 7.1", "90.0 ± 0.0"]
    assert rows[1][1:4] == ["0, 1", "80.0 ± 0.0", "90.0 ± 0.0"]
    assert rows[0][-4:] == ["5.0 ± 0.0", "70.5 ± 0.7", "60.0 ± 0.0", "90.0 ± 0.0"]  # PQ contour (id 5), PQ ...
    bound_rows = table_rows(md, ["test"])
    assert bound_rows[0] == ["test", "crossing", "10", "87.0", "48.0", "80.0", "7.0"]
    assert bound_rows[1] == ["test", "single", "3", "90.0", "85.0", "-", "-"]
    assert table_rows(md, ["6", "50"]) == [["6", "30.0", "50.0", "0.61 / 0.40", "0.70 0.60 0.50 -", "0.20 0.30 0.40 0.45"],
                                         ["50", "35.0", "50.0", "0.61 / 0.40", "0.70 0.60 0.50 -", "0.20 0.30 0.40 0.45"]]
    label = f"{cg.MODELS['crbp'][1]} (model_final.pth)"
    assert table_rows(md, [label]) == [[label, g, "10", "50.0", "40.0", "10.0", "60.0"] for g in ("single", "crossing")]
    assert (tmp_path / "results" / "contour_grouping.png").stat().st_size > 0
    assert md.count("measured again") == 1
    assert f"- {cg.MODELS['crbp'][1]}: measured again on the trained weights with the current config (cg --memory); " \
           "as trained 3.0 / 3.0 MiB" in md


def test_mask_head_diagnostic_report_from_its_jsons(tmp_path):
    """benchmarks/contour_mask_head.py --report-only: one row per head JSON with its own numbers,
    runs from before the depth bins included; an empty folder is an error that names it."""
    from benchmarks.contour_mask_head import DEPTH_BINS, main

    val = {"crossing": {"n": 3, "mask_iou": 0.4123, "own_probability": 0.61, "other_probability": 0.37},
           "single": {"n": 1, "mask_iou": 0.6034}, "shapes": {"n": 2, "mask_iou": 0.9}}
    run = {"head": "feedforward", "config": "c.yaml", "overrides": [], "seed": 2, "iterations": 50,
           "weights": "w.pth", "train_seconds": 1.0, "optimizer": "adam", "lr": 0.001, "min_iou": 0.95, "pixels": True,
           "val": dict(val, crossing_by_depth={"bins": DEPTH_BINS, "own": [0.7, 0.6, 0.5, 0.4],
                                               "other": [0.1, 0.2, 0.3, 0.35]},
                       iou_lost={"crossing": {"other_contours": 0.2, "background": 0.1, "missed_dashes": 0.2,
                                              "missed_edges": 0.0877},
                                 "single": {"other_contours": 0.05, "background": 0.15, "missed_dashes": 0.1,
                                            "missed_edges": 0.0966}})}
    old = {"head": "crbp_state8", "config": "c.yaml", "overrides": ["MODEL.CRBP.STEPS", "20"], "seed": 0,
           "iterations": 50, "weights": "w.pth", "train_seconds": 1.0, "val": val}
    recurrent = {"head": "crbp_pf16", "config": "c.yaml", "overrides": ["MODEL.CRBP.STEPS", "3"], "seed": 1,
                 "iterations": 40, "cycles": 3, "weights": "w.pth", "train_seconds": 1.0, "context": 1.25,
                 "val": dict(val, resolution_bound={"crossing": 0.767, "single": 0.8},
                             equilibrium={"horizon": 3, "far": 12, "rois": 3, "step_size": [1.0, 0.5, 0.25] + [0.01] * 9,
                                          "distance_to_far_at_horizon": 0.3, "rho_at_horizon": 1.2, "rho_at_far": 0.98,
                                          "crossing_iou": {"horizon": 0.41, "2x": 0.2, "4x": 0.1}})}
    for name, r in (("a.json", run), ("b.json", old), ("c.json", recurrent)):
        (tmp_path / name).write_text(json.dumps(r))
    assert main(["--out", str(tmp_path), "--report-only"]) == 0
    text = (tmp_path / "contour_mask_head.md").read_text()
    every_run = text.split("## Every run")[1].split("\n## ")[0]  # the main table
    rows = {r[0]: r for r in table_rows(every_run, ("feedforward", "crbp_state8"))}
    assert rows["feedforward"][1:10] == ["features + pixels", "-", "adam 0.001", "0.95", "50", "2", "0.412", "0.603",
                                         "0.61 / 0.37"]
    assert rows["feedforward"][10:] == ["0.70 0.60 0.50 0.40", "0.10 0.20 0.30 0.35"]
    assert rows["crbp_state8"][1:5] == ["features", "MODEL.CRBP.STEPS 20", "sgd config", "0.5"]
    assert rows["crbp_state8"][10] == "-"
    assert table_rows(text, ("crbp_pf16",))[0][1:7] == ["features, box x 1.25", "MODEL.CRBP.STEPS 3", "sgd config",
                                                       "0.5", "3 x 40", "1"]
    assert table_rows(text, ("box x 1.25",)) == [["box x 1.25", "0.767", "0.800"]]  # the bound, by region
    settled = table_rows(text.split("at its equilibrium?")[1], ("crbp_pf16",))
    assert settled == [["crbp_pf16", "features, box x 1.25", "sgd config, 3 x 40", "1", "3", "0.2500", "0.0100", "0.300", "1.200", "0.980",
                        "-", "0.410 / 0.200 / 0.100"]]  # '-': measured before the column sums were
    assert (tmp_path / "contour_mask_head_equilibrium.png").stat().st_size > 0
    lost = table_rows(text.split("Where the IoU is lost")[1], ("feedforward",))
    assert lost == [["feedforward", "features + pixels", "adam 0.001, 50", "2", "0.412", "0.200", "0.100", "0.200",
                     "0.088", "0.603", "0.050", "0.150", "0.100", "0.097"]]
    assert "contour_mask_head_masks" not in text  # no picture drawn in the folder
    (tmp_path / "contour_mask_head_masks_marker.png").write_bytes(b"")
    assert main(["--out", str(tmp_path), "--report-only"]) == 0
    assert "![masks](contour_mask_head_masks_marker.png)" in (tmp_path / "contour_mask_head.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no head JSONs"):
        main(["--out", str(empty), "--report-only"])


def test_mask_head_diagnostic_pixels_are_the_image_on_the_box_after_the_features():
    """--pixels: the head's input is the mask pooler's RoI features unchanged, then 3 channels of the
    image sampled on the box at the pooler's resolution (an image that is its own x coordinate at
    pixel centres gives the bins' centres), and nothing more without it."""
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.structures import Boxes

    from benchmarks.contour_mask_head import PIXELS, RoIInputs

    pooler = ROIPooler((7, 7), scales=(1 / 4,), sampling_ratio=0, pooler_type="ROIAlignV2")
    features = {"p2": torch.randn(2, 5, 16, 16), PIXELS: torch.zeros(2, 3, 64, 64)}
    features[PIXELS][:, 1] = torch.arange(64.0) + 0.5  # channel 1: x at pixel centres
    boxes = [Boxes(torch.tensor([[8.0, 4.0, 36.0, 60.0]]))]
    plain = RoIInputs(pooler, ["p2"], pixels=False)(features, slice(1, 2), boxes)
    both = RoIInputs(pooler, ["p2"], pixels=True)
    pooled = both(features, slice(1, 2), boxes)
    assert plain.shape == (1, 5, 7, 7) and both.extra_channels == 3 and pooled.shape == (1, 8, 7, 7)
    assert torch.equal(pooled[:, :5], plain)
    centres = 8.0 + (torch.arange(7.0) + 0.5) * 28 / 7
    torch.testing.assert_close(pooled[0, 6], centres.expand(7, 7), rtol=0, atol=1e-4)
    assert torch.equal(pooled[0, 5], torch.zeros(7, 7))


def test_mask_head_diagnostic_marker_is_where_each_contour_enters_its_own_box():
    """--marker: an instance's marker is its own pixels within 0.1 x its box's shorter side of the
    box's sides, and each RoI gets its own instance's marker (two instances of one image differ)."""
    import numpy as np
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.structures import Boxes

    from benchmarks.contour_mask_head import RoIInputs, start_markers

    masks = np.zeros((2, 64, 64), bool)
    for i in range(40):
        masks[0, 10 + i, 10 + i] = True  # box [10, 10, 50, 50]: 4 px from the sides is the marker
    masks[1, 30:34, 5:60] = True  # box [5, 30, 60, 34]: 4 px tall, the marker 0.4 px deep
    markers = start_markers(masks, [[10, 10, 50, 50], [5, 30, 60, 34]])
    diagonal = [i for i in range(40) if markers[0, 10 + i, 10 + i]]
    assert diagonal == [0, 1, 2, 3, 36, 37, 38, 39] and markers[0].sum() == 8
    assert not markers[1].any()  # every pixel of a 4 px tall box is >= 0.5 px from a side: 0.125 deep
    markers[1, 31, 20:30] = True
    inputs = RoIInputs(ROIPooler((8, 8), scales=(1 / 4,), sampling_ratio=0, pooler_type="ROIAlignV2"), ["p2"],
                       marker=True)
    boxes = [Boxes(torch.tensor([[10.0, 10.0, 50.0, 50.0], [5.0, 30.0, 60.0, 34.0]]))]
    pooled = inputs({"p2": torch.randn(1, 5, 16, 16)}, slice(0, 1), boxes, [markers])
    assert inputs.extra_channels == 1 and pooled.shape == (2, 6, 8, 8)
    first, second = pooled[0, 5], pooled[1, 5]
    assert first[0, 0] > 0.1 and first[-1, -1] > 0.1 and first[3:5, 3:5].abs().max() < 1e-6
    assert first[0, -1] == 0 and second.max() > 0.1 and not torch.equal(first, second)


def test_marker_influence_is_local_for_a_local_head_and_reaches_the_far_end_for_a_global_one():
    """The marker's reach, by distance from it: a head whose logit is its marker channel changes
    only at the marker (the nearest bin), one whose logit is the marker's mean over the box changes
    every pixel alike, own and other; contours that do not cross are left out."""
    import numpy as np
    from detectron2.modeling.poolers import ROIPooler
    from torch import nn

    from benchmarks.contour_mask_head import INFLUENCE_BINS, RoIInputs, marker_influence, start_markers

    ids = np.zeros((64, 64), np.int64)
    for i in range(40):
        ids[10 + i, 10 + i] = 1  # own: the box's diagonal
        ids[49 - i, 10 + i] = 2  # the crossing contour, the other diagonal
    ids[60, 0:20] = 3  # a single contour, far away
    things = [{"id": 1, "category_id": 7, "box": [10, 10, 50, 50], "crossing": True},
              {"id": 2, "category_id": 7, "box": [10, 10, 50, 50], "crossing": True},
              {"id": 3, "category_id": 7, "box": [0, 60, 20, 61], "crossing": False}]
    masks = np.stack([ids == t["id"] for t in things])
    image = {"ids": ids, "things": things, "masks": masks,
             "markers": start_markers(masks, [t["box"] for t in things])}
    inputs = RoIInputs(ROIPooler((14, 14), scales=(1 / 4,), sampling_ratio=0, pooler_type="ROIAlignV2"), ["p2"],
                       marker=True)
    features = {"p2": torch.randn(1, 4, 16, 16)}

    class Head(nn.Module):
        def __init__(self, reach):
            super().__init__()
            self.reach = reach

        def layers(self, x):
            marker = nn.functional.interpolate(x[:, -1:], scale_factor=2)
            out = marker if self.reach == "local" else marker.mean((2, 3), keepdim=True).expand_as(marker)
            return out.repeat(1, 3, 1, 1) * 10  # three classes, class 1 the contour's

    local = marker_influence(Head("local"), inputs, [image], features, {7: 1})
    reach = marker_influence(Head("global"), inputs, [image], features, {7: 1})
    assert local["bins"] == reach["bins"] == INFLUENCE_BINS
    assert local["own"][0] > 1 and all(v == 0 for v in local["own"][2:] if v is not None)
    assert local["other"][-1] == 0  # the crossing contour: over 0.5 box sides from the marker, at the centre
    far = [v for v in reach["own"][2:] if v is not None]
    assert far and min(far) > 0.01 and np.allclose(far, reach["own"][0])
    assert np.isclose(reach["other"][-1], reach["own"][0])


def test_spans_box_diagonal_tells_a_corner_to_corner_contour_from_one_through_the_middle():
    import numpy as np

    from benchmarks.contour_grouping import spans_box_diagonal

    box = [10, 20, 50, 60]  # XYXY, pixel edges: 40 x 40
    image = np.zeros((80, 80), bool)
    diagonal, anti, middle = image.copy(), image.copy(), image.copy()
    for i in range(40):
        diagonal[20 + i, 10 + i] = True  # top-left to bottom-right
        anti[59 - i, 10 + i] = True  # bottom-left to top-right
    middle[30:50, 30] = True  # vertical, through the centre, far from every corner
    assert spans_box_diagonal(diagonal, box) and spans_box_diagonal(anti, box)
    assert not spans_box_diagonal(middle, box) and not spans_box_diagonal(image, box)
    half = diagonal.copy()
    half[40:] = False  # reaches the top-left corner only
    assert not spans_box_diagonal(half, box)


def test_mask_head_diagnostic_context_scales_the_box_and_a_perfect_head_keeps_its_score(data):
    """--context: a head sees and predicts its box scaled about its centre (the pasted mask covers
    the larger region); a perfect head (its RoI's own ground truth on the output grid) scores nearly
    as well with context 1.25 as on the box itself, losing only what the coarser sampling of the box
    loses (resolution_bound), and its own/other probabilities are still measured on the box."""
    import numpy as np
    from detectron2.modeling.poolers import ROIPooler

    from benchmarks.contour_grouping import split_images
    from benchmarks.contour_mask_head import GroundTruthHead, RoIInputs, evaluate_head, resolution_bound, with_masks

    pooler = ROIPooler((28, 28), scales=(1 / 4,), sampling_ratio=0, pooler_type="ROIAlignV2")
    assert np.allclose(RoIInputs(pooler, ["p2"], context=1.25).rois([[10, 20, 50, 40]]), [[5, 17.5, 55, 42.5]])
    assert RoIInputs(pooler, ["p2"]).rois([[10, 20, 50, 40]]) == [[10, 20, 50, 40]]
    images = [with_masks(image) for image in split_images(data["val"])]
    size = images[0]["masks"].shape[1]
    features = {"p2": torch.zeros(len(images), 2, size // 4, size // 4)}
    to_contiguous = {c["id"]: i for i, c in enumerate(c for c in CATEGORIES if c["isthing"])}

    class Recording(GroundTruthHead):
        def forward(self, x, instances):
            self.seen = instances[0].pred_boxes.tensor.clone()
            return super().forward(x, instances)

    bounds = {}
    for context in (1.0, 1.25):
        inputs = RoIInputs(pooler, ["p2"], context=context)
        for i, image in enumerate(images):
            head = Recording(56, [image])
            result = evaluate_head(head, inputs, [image], {"p2": features["p2"][i:i + 1]}, to_contiguous)
            expected = torch.tensor(inputs.rois([t["box"] for t in image["things"]]), dtype=torch.float32)
            assert torch.allclose(head.seen, expected)
            if result["crossing"]["n"]:
                assert result["crossing"]["own_probability"] > 0.7 > 0.05 > result["crossing"]["other_probability"]
        bounds[context] = resolution_bound(inputs, images, features, to_contiguous)
    for group in ("crossing", "single"):
        score = bounds[1.0][group]
        if score is not None:
            assert score > 0.8 and score - 0.15 < bounds[1.25][group] < score
            for bound in bounds.values():  # what the perfect head loses, it loses to resampling, and it sums up
                lost = bound["iou_lost"][group]
                assert bound[group] + sum(lost.values()) == pytest.approx(1)
                assert lost["missed_edges"] + lost["background"] > 0 and lost["other_contours"] < 0.05


def test_mask_head_picture_shows_each_head_on_the_first_crossing_contours(data, tmp_path):
    """--picture: one row per shown crossing contour (the first crossing contour of each image that
    has one), columns for the input, the ground truth and each head."""
    import matplotlib.image
    from detectron2.modeling.poolers import ROIPooler

    from benchmarks.contour_grouping import split_images
    from benchmarks.contour_mask_head import RoIInputs, picture_contours, with_masks, write_head_picture

    images = [with_masks(image) for image in split_images(data["val"])]
    shown = picture_contours(images)
    expected = [(i, next(k for k, t in enumerate(im["things"]) if t["crossing"]))
                for i, im in enumerate(images) if any(t["crossing"] for t in im["things"])]
    assert shown == expected[:6]
    if not shown:
        pytest.skip("no crossing contour in the generated val split")

    class Half(nn.Module):  # probability 0.5 everywhere
        def forward(self, x, instances):
            instances[0].pred_masks = torch.full((len(x), 1, 56, 56), 0.5)
            return instances

    size = images[0]["masks"].shape[1]
    features = {"p2": torch.zeros(len(images), 2, size // 4, size // 4)}
    to_contiguous = {c["id"]: i for i, c in enumerate(c for c in CATEGORIES if c["isthing"])}
    inputs = RoIInputs(ROIPooler((28, 28), scales=(1 / 4,), sampling_ratio=0, pooler_type="ROIAlignV2"), ["p2"],
                       marker=True)
    run = {"head": "half", "seed": 0, "iterations": 10, "val": {"crossing": {"mask_iou": 0.1}}}
    path = tmp_path / "contour_mask_head_masks_marker.png"
    write_head_picture([(run, Half()), (dict(run, head="half again"), Half())], inputs, images, features,
                       to_contiguous, str(path))
    picture = matplotlib.image.imread(str(path))
    assert picture.shape[0] > picture.shape[1] * len(shown) / 4 * 0.8  # 4 columns of roughly square panels


def test_iou_lost_splits_the_union_of_predicted_and_own_pixels():
    """iou_lost: own dashes of 4 and 3 pixels; a prediction that keeps 3 of the first (1 edge pixel
    missed) and 1 of the second (under half: the dash is left out, 2 pixels), 2 pixels of another
    contour and 1 of background loses 2, 1, 2 and 1 of the union's 10 pixels; with the IoU (4 / 10)
    they sum to 1; a perfect prediction loses nothing."""
    import numpy as np

    from benchmarks.contour_grouping import iou
    from benchmarks.contour_mask_head import iou_lost

    own, every, predicted = np.zeros((3, 5, 8), dtype=bool)
    own[1, 0:4] = own[1, 5:8] = True
    every[:] = own
    every[3] = True
    predicted[1, 0:3] = predicted[1, 5] = True
    predicted[3, :2] = True
    predicted[0, 0] = True
    lost = iou_lost(predicted, own, every)
    assert lost == pytest.approx({"other_contours": 2 / 10, "background": 1 / 10, "missed_dashes": 2 / 10,
                                  "missed_edges": 1 / 10})
    assert iou(predicted, own) + sum(lost.values()) == pytest.approx(1)
    assert iou_lost(own, own, every) == {"other_contours": 0, "background": 0, "missed_dashes": 0, "missed_edges": 0}


@pytest.mark.parametrize("rate", [0.5, 1.2])
def test_mask_head_equilibrium_finds_a_contraction_settled_and_an_expansion_not(data, rate):
    """head_equilibrium on a recurrent mask head whose cell is h <- rate * h + x (dF/dh = rate I):
    the step size at the horizon is the closed form rate^(t-1) (1 - rate) / (1 - rate^t), rho(J)
    is `rate` at the horizon and far past it, so is every column sum, and the head is evaluated at
    1x, 2x and 4x its steps."""
    import numpy as np
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.poolers import ROIPooler

    from benchmarks.contour_grouping import split_images
    from benchmarks.contour_mask_head import RoIInputs, head_equilibrium, with_masks
    from crbp_detectron.crbp import Recurrence
    from crbp_detectron.modeling.mask_head import CRBPMaskHead

    class Scaled(nn.Module):
        def forward(self, x, h):
            return rate * h + x

    images = [with_masks(image) for image in split_images(data["val"])]
    if not any(t["crossing"] for image in images for t in image["things"]):
        pytest.skip("no crossing contour in the generated val split")
    size = images[0]["masks"].shape[1]
    features = {"p2": torch.randn(len(images), 3, size // 4, size // 4, generator=torch.Generator().manual_seed(0))}
    to_contiguous = {c["id"]: i for i, c in enumerate(c for c in CATEGORIES if c["isthing"])}
    head = CRBPMaskHead(ShapeSpec(channels=3, width=14, height=14), num_classes=len(to_contiguous),
                        recurrence=Recurrence(Scaled(), mode="crbp", steps=5), output_norm="", deconv_dim=4)
    inputs = RoIInputs(ROIPooler((14, 14), scales=(1 / 4,), sampling_ratio=0, pooler_type="ROIAlignV2"), ["p2"])
    result = head_equilibrium(head, inputs, images, features, to_contiguous)
    assert result["horizon"] == 5 and result["far"] == 20 and len(result["step_size"]) == 20
    t = np.arange(1, 21)
    expected = rate ** (t - 1) * (1 - rate) / (1 - rate ** t)
    assert np.allclose(result["step_size"], np.abs(expected), rtol=1e-3)
    assert result["rho_at_horizon"] == pytest.approx(rate, rel=1e-4)
    assert result["rho_at_far"] == pytest.approx(rate, rel=1e-4)
    assert result["max_column_sum_at_horizon"] == pytest.approx(rate)  # 1^T (rate I)
    assert list(result["crossing_iou"]) == ["horizon", "2x", "4x"]
    assert all(0 <= v <= 1 for v in result["crossing_iou"].values())
    assert head.recurrence.test_steps is None  # the evaluation's steps are put back
    settled = result["distance_to_far_at_horizon"] < 0.1
    assert settled == (rate < 1)


def test_tracer_heads_see_the_whole_image_and_train_and_measure_on_the_benchmark(data):
    """--tracer: the head receives the image itself ({"image": ...}), no pooled features; a tracer
    head (the CNN tracer, Pathfinder's geometry) trains with the benchmark's loop on jittered boxes
    and is measured with oracle boxes; --oracle-ink gives it the contours' true pixels instead."""
    from detectron2.modeling import build_model

    from benchmarks.contour_mask_head import (HEADS, PIXELS, RoIInputs, build_head, cached_features, evaluate_head,
                                              train_head)
    from benchmarks.contour_grouping import contour_instances
    from crbp_detectron.config import load_config
    from crbp_detectron.modeling import TracerMaskHead
    from crbp_detectron.modeling.tracer_mask_head import IMAGE, THING_PIXELS

    model = build_model(load_config(HEADS["feedforward"][0], ["MODEL.WEIGHTS", ""])).eval()
    images, features = cached_features(model, data["val"], backbone=False)
    assert set(features) == {PIXELS, THING_PIXELS}
    for k, image in enumerate(images):  # an ink net's target: every thing's pixels, contours and shapes
        assert torch.equal(features[THING_PIXELS][k, 0], torch.from_numpy(image["masks"].any(0)).float())
    inputs = RoIInputs(model.roi_heads.mask_pooler, model.roi_heads.mask_in_features, tracer=True)
    seen = inputs(features, [1], [None])
    assert set(seen) == {IMAGE, THING_PIXELS} and torch.equal(seen[IMAGE], features[PIXELS][[1]])
    with pytest.raises(ValueError, match="tracer heads"):
        RoIInputs(model.roi_heads.mask_pooler, ["p2"], pixels=True, tracer=True)
    cfg, head = build_head(HEADS["tracer_cnn_scratch"][0], [], seed=0)
    assert isinstance(head, TracerMaskHead)
    to_contiguous = {c["id"]: i for i, c in enumerate(c for c in CATEGORIES if c["isthing"])}
    history = train_head(head, cfg, inputs, images, features, to_contiguous, iterations=2, seed=0, batch=2,
                         lr=1e-3, optimizer="adam")
    assert len(history) == 2 and all(np.isfinite(h["loss_mask"]) for h in history)
    result = evaluate_head(head, inputs, images, features, to_contiguous)
    contours = sum(t["crossing"] is not None for im in images for t in im["things"])
    assert result["crossing"]["n"] + result["single"]["n"] == contours
    assert all(0 <= result[g]["mask_iou"] <= 1 for g in ("crossing", "single") if result[g]["n"])
    _, ink = cached_features(model, data["val"], backbone=False, oracle_ink=True)
    for k, image in enumerate(images):
        every = torch.from_numpy(contour_instances(image)[2]).float()
        assert all(torch.equal(ink[PIXELS][k, c], every) for c in range(3))


def test_the_ink_heads_ink_net_learns_the_thing_pixels_on_the_benchmark(data):
    """An ink head (TRACER.INK_LAYERS) trained by the benchmark's loop: its ink loss goes down, and
    its map finds the thing pixels better than at the start (ink_quality, on the training images)."""
    from detectron2.modeling import build_model

    from benchmarks.contour_mask_head import (HEADS, TRACER_CNN_INK, RoIInputs, build_head, cached_features,
                                              ink_quality, train_head)
    from crbp_detectron.config import load_config

    model = build_model(load_config(HEADS["feedforward"][0], ["MODEL.WEIGHTS", ""])).eval()
    images, features = cached_features(model, data["val"], backbone=False)
    inputs = RoIInputs(model.roi_heads.mask_pooler, model.roi_heads.mask_in_features, tracer=True)
    cfg, head = build_head(TRACER_CNN_INK, [], seed=0)
    to_contiguous = {c["id"]: i for i, c in enumerate(c for c in CATEGORIES if c["isthing"])}
    before = ink_quality(head, images, features)
    history = train_head(head, cfg, inputs, images, features, to_contiguous, iterations=40, seed=0, batch=2,
                         lr=5e-3, optimizer="adam")
    ink = [h["loss_ink"] for h in history]
    assert np.mean(ink[-5:]) < 0.7 * np.mean(ink[:5]), ink
    after = ink_quality(head, images, features)
    assert after["iou"] > before["iou"] + 0.1, (before, after)
    assert all(0 <= after[k] <= 1 for k in ("iou", "precision", "recall", "contour_recall"))


def test_tracer_heads_start_from_their_seeds_pathfinder_run():
    """The tracer heads' start weights: the Pathfinder run given the box as its cue with the run's
    own seed, a committed file, for the head diagnostic and for the Panoptic FPN benchmark alike."""
    import os

    from benchmarks.contour_grouping import MODELS, model_opts
    from benchmarks.contour_mask_head import HEADS, ROOT, build_head

    for seed in (0, 1, 2):
        for model, pathfinder_model in (("tracer", "crbp_continued_twice_steps64"), ("tracer_cnn", "cnn_continued_twice"),
                                        ("tracer_ink", "crbp_continued_twice_steps64"),
                                        ("tracer_cnn_ink", "cnn_continued_twice")):
            opts = model_opts(model, seed)
            assert opts[0] == "MODEL.CRBP.TRACER.INIT_WEIGHTS" and os.path.isfile(opts[1])
            assert opts[1].endswith(os.path.join(f"{pathfinder_model}_boxed1000x2", f"seed{seed}_model.pth"))
            assert MODELS[model][0] == HEADS[model][0]
            assert HEADS[model][1][1].format(root=ROOT, seed=seed) == opts[1]
    _, head = build_head(*HEADS["tracer_cnn"], seed=1)
    saved = torch.load(model_opts("tracer_cnn", 1)[1], weights_only=True)
    assert torch.allclose(head.tracer.front.conv.weight, saved["front.conv.weight"].expand(-1, 3, -1, -1) / 3)
    _, ink_head = build_head(*HEADS["tracer_cnn_ink"], seed=1)  # traces one channel: the weights as saved
    assert torch.equal(ink_head.tracer.front.conv.weight, saved["front.conv.weight"])


def test_mask_head_report_averages_heads_with_three_seeds(tmp_path):
    """The report's seeds table: mean ± sample std per head with three or more seeds, start-weight
    runs (--iterations 0) apart from trained ones."""
    from benchmarks.contour_mask_head import main

    def run(seed, crossing, iterations=100):
        val = {"crossing": {"n": 3, "mask_iou": crossing, "own_probability": 0.6, "other_probability": 0.3},
               "single": {"n": 1, "mask_iou": 0.5}, "shapes": {"n": 2, "mask_iou": 0.9}}
        return {"head": "tracer", "config": "c.yaml", "overrides": [], "seed": seed, "iterations": iterations,
                "cycles": 2, "weights": None, "train_seconds": 40.0, "optimizer": "adam", "lr": 0.002,
                "tracer": True, "val": val}

    for seed, crossing in enumerate((0.40, 0.50, 0.60)):
        (tmp_path / f"tracer_seed{seed}.json").write_text(json.dumps(run(seed, crossing)))
        (tmp_path / f"tracer_start_seed{seed}.json").write_text(json.dumps(run(seed, 0.1, iterations=0)))
    (tmp_path / "other_seed0.json").write_text(json.dumps(dict(run(0, 0.9), head="other")))
    assert main(["--out", str(tmp_path), "--report-only"]) == 0
    text = (tmp_path / "contour_mask_head.md").read_text()
    seeds = text.split("three or more seeds")[1].split("## Every run")[0]
    rows = table_rows(seeds, ("tracer", "other"))
    assert [r[2:6] for r in rows] == [["adam 0.002, 2 x 100", "0, 1, 2", "50.0 ± 10.0", "50.0 ± 0.0"],
                                      ["none (start weights)", "0, 1, 2", "10.0 ± 0.0", "50.0 ± 0.0"]]
    assert rows[0][1] == "image window, outside the box dimmed (tracer)" and rows[0][-1] == "0.20 ± 0.00"

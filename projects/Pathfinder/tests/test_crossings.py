"""Pathfinder's tracers on crossing contours (experiments.crossings): the contour data drawn as
Pathfinder draws (every contour apart, the target marked), grouping by nearness that joins exactly
the ink within reach, the fractions it reports, prepared training sets read as generated ones, and
a committed tracer that follows its own contour."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from crbp_detectron.data.contours import ContourParams, contour_strokes, crossing_pairs
from pathfinder.config import load_pathfinder_config

SMALL = ContourParams(train_images=3, val_images=3, test_images=3, seed=5)


@pytest.fixture(scope="module")
def gen():
    from pathfinder.data import generator_config

    return generator_config(load_pathfinder_config("crbp.yaml"), 14)


@pytest.fixture(scope="module")
def samples(gen):
    from experiments.crossings import contour_samples

    return contour_samples(gen, "val", SMALL)


def test_contours_drawn_as_pathfinder_keep_apart_and_mark_the_target(gen, samples):
    assert {s["group"] for s in samples} == {"crossing", "single"}
    by_image = {}
    for s in samples:
        by_image.setdefault(s["key"].split("/")[0], []).append(s)
    for index, group in by_image.items():
        strokes, lines = contour_strokes("val", int(index), SMALL)
        assert len(group) == len(lines)  # every contour is a target once
        pairs = crossing_pairs(lines)
        for s in group:
            masks, target = s["masks"], s["target"]
            assert masks.shape == (len(lines), gen.size, gen.size)
            assert (masks.sum(0) <= 1).all()  # no pixel belongs to two contours
            assert (s["image"][masks.any(0)] >= 128).all() and (s["image"][~masks.any(0)] < 128).all()
            x, y = (int(v) for v in s["marker"])
            assert masks[target, y, x]  # the marker dot is the target's
            assert s["crossing"] == sorted({j for i, j in pairs if i == target} | {i for i, j in pairs if j == target})
            for path in range(len(lines)):  # every dash, halved, is drawn on its own contour's mask
                a = strokes.a[strokes.path == path] * gen.size / SMALL.image_size
                near = cv2.dilate(masks[path].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                assert near[a[:, 1].astype(int), a[:, 0].astype(int)].all()


@pytest.fixture(scope="module")
def boxed(gen):
    from experiments.crossings import contour_samples

    return contour_samples(gen, "val", SMALL, cue="box")


def test_the_box_cue_dims_what_lies_outside_the_targets_box_and_draws_no_marker(samples, boxed):
    """Same contours as with the marker, less its dot: the target wholly inside its (tight) box, the
    ink inside the box as drawn, outside it at BOX_DIM; a crossing contour leaves the box."""
    from experiments.crossings import BOX_DIM, box_grouping_bound, box_flood, inside_box

    assert [s["key"] for s in boxed] == [s["key"] for s in samples]
    for marked, s in zip(samples, boxed):
        target = s["masks"][s["target"]]
        inside = inside_box(s["box"], target.shape)
        assert s["marker"] is None and not (target & ~inside).any()
        ys, xs = np.nonzero(target)
        assert s["box"] == (xs.min(), ys.min(), xs.max(), ys.max())
        others = np.delete(s["masks"], s["target"], axis=0).any(0)
        assert (others == np.delete(marked["masks"], marked["target"], axis=0).any(0)).all()
        ink = s["masks"].any(0)
        assert (s["image"][ink & inside] >= 128).all()
        assert (s["image"][~inside] <= np.ceil(255 * BOX_DIM)).all() and (s["image"][ink & ~inside] >= round(128 * BOX_DIM)).all()
        if s["crossing"]:
            assert any((s["masks"][j] & ~inside).any() for j in s["crossing"])
        bound = box_grouping_bound(s)
        assert (bound == (ink & inside & ~np.any([m for m in s["masks"] if (m & ~inside).any()] + [0 * ink], 0))).all()
        assert target.sum() > 0 and (bound & target).sum() == target.sum()  # the bound keeps all of the target
        assert (box_flood(s["image"], s["box"], None) == (ink & inside)).all()


def test_box_flood_removes_ink_within_reach_of_the_outside():
    from experiments.crossings import BOX_DIM, box_flood

    image = np.zeros((16, 16), np.uint8)
    box = (4, 4, 11, 11)
    image[4, 5:9] = 255  # own dash, 4 rows from the next
    image[8, 5:9] = 255  # own dash, 2 rows from a dash of the crossing contour
    image[10, 6:12] = 255  # the crossing contour's dash inside the box ...
    image[10, 12:15] = round(255 * BOX_DIM)  # ... and where it leaves it
    image[13, 1:4] = round(255 * BOX_DIM)  # ink outside, far from everything
    assert box_flood(image, box, 0.5)[4].sum() == 4 and box_flood(image, box, 0.5)[8].sum() == 4
    assert not box_flood(image, box, 0.5)[10].any()  # connected to the outside: removed
    assert box_flood(image, box, 1.0)[8].sum() == 0 and box_flood(image, box, 1.0)[4].sum() == 4  # reached, not
    assert box_flood(image, box, None).sum() == 4 + 4 + 6


def test_proximity_flood_joins_ink_within_twice_its_radius():
    from experiments.crossings import proximity_flood

    image = np.zeros((16, 16), np.uint8)
    image[5, 1:4] = 255  # the marked dash
    image[5, 7:10] = 200  # 4 px from it (centre to centre)
    image[12, 1:4] = 255  # 7 px below
    image[1, 12] = 100  # faint: not ink
    marked, near = image[5] > 0, np.zeros((16, 16), bool)
    near[5, 7:10] = True
    flood = {r: proximity_flood(image, (2.5, 5.5), r) for r in (0.5, 1.5, 2.0, 3.5)}
    assert flood[0.5].sum() == 3 and flood[1.5].sum() == 3
    assert flood[2.0][5].tolist() == marked.tolist() and flood[2.0].sum() == 6
    assert flood[3.5].sum() == 9 and not flood[3.5][1, 12]


def test_grouping_metrics_split_the_prediction_by_whose_pixels():
    from experiments.crossings import grouping_metrics

    masks = np.zeros((3, 8, 8), bool)
    masks[0, 0, :4] = True  # target
    masks[1, 2, :] = True  # crossing it
    masks[2, 5, :2] = True  # elsewhere
    predicted = masks[1].copy()
    predicted[0, :2] = True
    predicted[7, 7] = True  # background
    sample = {"masks": masks, "target": 0, "crossing": [1], "group": "crossing"}
    out = grouping_metrics([sample], predicted[None])["crossing"]
    assert out == {"n": 1, "iou": 2 / (4 + 8 + 1), "own": 0.5, "crossing_contours": 1.0, "other_contours": 0.0}


def test_a_prepared_set_is_read_as_the_training_set(tmp_path):
    from detectron2.data import DatasetCatalog

    from pathfinder.config import validate_pathfinder_config
    from pathfinder.data import TRAIN, load_sample, register_pathfinder_datasets
    from pathfinder.generator import PathfinderConfig, write_prepared

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16)).astype(np.uint8)
    masks = rng.random((5, 16, 16)) > 0.5
    folder = str(tmp_path / "prepared")
    write_prepared(folder, PathfinderConfig(size=16, length=3), images, masks, {"made": "by the test"})
    from test_training import TINY

    cfg = load_pathfinder_config("crbp.yaml", [str(v) for v in TINY] + [
        "PATHFINDER.DATA.ROOT", str(tmp_path / "data"), "PATHFINDER.DATA.TRAIN_FOLDERS", [folder]])
    register_pathfinder_datasets(cfg)
    records = DatasetCatalog.get(TRAIN)
    assert len(records) == 5 and not os.path.exists(tmp_path / "data")  # nothing generated for training
    for i, record in enumerate(records):
        sample = load_sample(record)
        assert (sample["image"][0].numpy() == images[i]).all() and (sample["mask"][0].numpy() == masks[i]).all()

    empty = str(tmp_path / "empty")  # an empty prepared set trains on nothing; it does not fall back
    write_prepared(empty, PathfinderConfig(size=16, length=3), images[:0], masks[:0], {})
    cfg.defrost()
    cfg.PATHFINDER.DATA.TRAIN_FOLDERS = [empty]
    register_pathfinder_datasets(cfg)
    assert DatasetCatalog.get(TRAIN) == [] and not os.path.exists(tmp_path / "data")
    cfg.PATHFINDER.DATA.TRAIN_FOLDERS = [str(tmp_path / "nowhere")]
    with pytest.raises(FileNotFoundError, match="PATHFINDER.DATA.TRAIN_FOLDERS.*nowhere"):
        register_pathfinder_datasets(cfg)
    cfg.PATHFINDER.DATA.TRAIN_FOLDERS = [folder]
    cfg.PATHFINDER.DATA.SIZE = 32
    with pytest.raises(ValueError, match="16 px samples, PATHFINDER.DATA.SIZE is 32"):
        register_pathfinder_datasets(cfg)
    cfg.PATHFINDER.DATA.TRAIN_FOLDERS = [""]
    with pytest.raises(ValueError, match="PATHFINDER.DATA.TRAIN_FOLDERS"):
        validate_pathfinder_config(cfg)
    with pytest.raises(ValueError, match=r"\[N, 16, 16\]"):
        write_prepared(folder, PathfinderConfig(size=16, length=3), images[:, :8], masks[:, :8], {})


def test_the_committed_tracer_follows_its_own_single_contours(gen, samples):
    """Seed 0 of the recipe, never trained on these contours: on contours that cross nothing it
    predicts most of its own pixels and few of the other contours' (1.0 and 0.09 here)."""
    from experiments.crossings import grouping_metrics, model_predictions
    from experiments.equilibrium import run_config
    from experiments.runs import RESULTS_DIR
    from pathfinder.engine import PathfinderTrainer

    folder = os.path.join(RESULTS_DIR, "experiment", "crbp_continued_twice_steps64")
    with open(os.path.join(folder, "seed0.json")) as f:
        cfg = run_config(json.load(f))
    model = PathfinderTrainer.build_model(cfg).eval()
    model.load_state_dict(torch.load(os.path.join(folder, "seed0_model.pth"), weights_only=True))
    metrics = grouping_metrics(samples, model_predictions(model, samples, 100))["single"]  # one batch, as measured
    assert metrics["own"] > 0.8 and metrics["other_contours"] < 0.2, metrics


def test_report_rebuilds_from_the_json_alone(tmp_path):
    from experiments.crossings import FOLDER, RADII, write_json, write_report

    def group(iou):
        return {"n": 2, "iou": iou, "own": iou, "crossing_contours": 0.1, "other_contours": 0.05}

    def measured(iou):
        return {"contours": {"crossing": group(iou), "single": group(0.9)},
                "pathfinder": {"L14": group(iou + 0.3), "L18": group(iou + 0.2)}}

    results = str(tmp_path)
    write_json(os.path.join(results, FOLDER, "proximity.json"),
               {"radii": {str(r): measured(0.2) for r in RADII}, "commands": ["python -m experiments.crossings X",
                                                                           "python -m experiments.crossings Y"]})
    for seed, iou in ((0, 0.4), (1, 0.6)):
        write_json(os.path.join(results, FOLDER, f"crbp_continued_twice_steps64_seed{seed}.json"),
                   dict(measured(iou), model="crbp_continued_twice_steps64", seed=seed))
    write_json(os.path.join(results, FOLDER, "crbp_continued_twice_steps64_contours400_seed0.json"),
               dict(measured(0.7), model="crbp_continued_twice_steps64_contours400", seed=0))
    with open(write_report(results)) as f:
        text = f.read()
    assert "python -m experiments.crossings X\npython -m experiments.crossings Y\n" in text
    rows = [line for line in text.splitlines() if line.startswith("| hGRU") or line.startswith("| flood")]
    assert rows[0].startswith("| hGRU C-RBP (crbp.yaml) ") and "0.500 ± 0.141" in rows[0] and "0, 1" in rows[0]
    assert "then 400 iterations on contours" in rows[1] and "0.700" in rows[1]
    assert len(rows) == 2 + len(RADII)


def test_models_continued_on_the_contours_are_measured_beside_the_experiments(tmp_path, monkeypatch):
    """End to end on a small scale: the committed CNN (seed 0) measured as it is and after 2
    iterations on the train split's contours, each run's JSON, the report's rows and the picture."""
    import shutil

    from experiments import crossings
    from experiments.runs import RESULTS_DIR

    results = tmp_path / "results"
    shutil.copytree(os.path.join(RESULTS_DIR, "experiment", "cnn_continued_twice"),
                    results / "experiment" / "cnn_continued_twice")
    monkeypatch.setenv("CRBP_PATHFINDER_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(crossings, "DEFAULT_MODELS", ("cnn_continued_twice",))  # the picture's model
    small = ["PATHFINDER.DATA.TEST_PER_LENGTH", "4", "PATHFINDER.EVAL.VAL_COUNT", "4", "TEST.EVAL_PERIOD", "0",
             "PATHFINDER.DATA.TEST_LENGTHS", "[6]", "PATHFINDER.EVAL.SWEEP_LENGTHS", "[6]",
             "PATHFINDER.EVAL.SWEEP_MAX_STEPS", "0", "SOLVER.WARMUP_ITERS", "0"]
    crossings.main(["--models", "cnn_continued_twice", "--seeds", "0", "--images", "2", "--count", "3",
                    "--train", "2", "--train-images", "2", "--trained-models", "cnn_continued_twice", "--workers", "1",
                    "--scratch", str(tmp_path / "scratch"), "--results", str(results), "--opts", *small])
    folder = results / crossings.FOLDER
    zero_shot = json.loads((folder / "cnn_continued_twice_seed0.json").read_text())
    continued = json.loads((folder / "cnn_continued_twice_contours2_seed0.json").read_text())
    assert continued["experiment"] == crossings.TRAINED and zero_shot["experiment"] == "experiment"
    for result in (zero_shot, continued):
        assert set(result["pathfinder"]) == {"L14", "L18"} and result["pathfinder"]["L14"]["n"] == 3
        assert 0 <= result["contours"]["crossing"]["iou"] <= 1
    assert zero_shot["contours"] != continued["contours"] or zero_shot["pathfinder"] != continued["pathfinder"]
    trained = json.loads((results / crossings.TRAINED / "cnn_continued_twice_contours2" / "seed0.json").read_text())
    assert "TRAIN_FOLDERS" in trained["config"] and "contours_train" in trained["config"]
    report = (results / "pathfinder_crossings.md").read_text()
    assert "CNN, parameter-matched (cnn.yaml), then 2 iterations on contours" in report
    assert (results / "pathfinder_crossings.png").stat().st_size > 10000


def test_later_cycles_on_the_contours_continue_the_previous_cycle(tmp_path):
    """--cycles: cycle k of a model starts from cycle k - 1's weights (cycle 1 from the experiment's),
    graph-free models compile their steps past the first cycle, and a missing start names its command."""
    from experiments.crossings import (EXPERIMENT, TRAINED, contour_iterations, parse_name, picture_runs, run_label,
                                       trained_name, training_runs)

    for experiment, name in ((EXPERIMENT, "crbp_continued_twice_steps64"), (EXPERIMENT, "bptt8_continued_twice"),
                             (TRAINED, "crbp_continued_twice_steps64_contours5"),
                             (TRAINED, "bptt8_continued_twice_contours5")):
        (tmp_path / experiment / name).mkdir(parents=True)
        (tmp_path / experiment / name / "seed1_model.pth").write_bytes(b"")
    models = ["crbp_continued_twice_steps64", "bptt8_continued_twice"]
    first, second = (training_runs(models, [1], 5, str(tmp_path / "set"), str(tmp_path), cycle=c) for c in (1, 2))
    assert [r.name for r in second] == ["crbp_continued_twice_steps64_contours5x2", "bptt8_continued_twice_contours5x2"]
    for earlier, later in zip(first, second):
        start = later.opts[later.opts.index("MODEL.WEIGHTS") + 1]
        assert start.endswith(os.path.join(TRAINED, earlier.name, "seed1_model.pth"))
        assert later.opts[later.opts.index("SOLVER.MAX_ITER") + 1] == 5
    assert "MODEL.CRBP.FORWARD.COMPILE" in second[0].opts and "MODEL.CRBP.FORWARD.COMPILE" not in second[1].opts
    assert not any("MODEL.CRBP.FORWARD.COMPILE" in r.opts for r in first)
    with pytest.raises(FileNotFoundError, match="--train 5 --cycles 2"):
        training_runs(models[:1], [1], 5, str(tmp_path / "set"), str(tmp_path), cycle=3)
    assert trained_name(models[0], 5, 3) == "crbp_continued_twice_steps64_contours5x3"
    assert [contour_iterations(n) for n in ("cnn_continued_twice", "cnn_continued_twice_contours400",
                                            "cnn_continued_twice_contours1000x3")] == [0, 400, 3000]
    assert run_label("cnn_continued_twice_contours1000x3").endswith(", then 3 x 1000 iterations on contours")
    scratch, = training_runs(models[:1], [1], 5, str(tmp_path / "set"), str(tmp_path), cue="box", scratch=True)
    assert scratch.name == "crbp_continued_twice_steps64_boxed5_from_scratch"
    assert scratch.opts[scratch.opts.index("MODEL.WEIGHTS") + 1] == "" and "MODEL.CRBP.FORWARD.COMPILE" in scratch.opts
    with pytest.raises(FileNotFoundError, match="--cue box --from-scratch"):
        training_runs(models[:1], [1], 5, str(tmp_path / "set"), str(tmp_path), cycle=2, cue="box", scratch=True)
    assert parse_name("cnn_continued_twice_boxed1000x2_from_scratch") == ("cnn_continued_twice", "box", 1000, 2, True)
    assert parse_name("cnn_continued_twice") == ("cnn_continued_twice", None, 0, 0, False)
    assert picture_runs(["crbp_continued_twice_steps64", "crbp_continued_twice_steps64_contours1000",
                         "cnn_continued_twice_contours1000", "cnn_continued_twice_boxed1000", "cnn_continued_twice_boxed1000x2",
                         "cnn_continued_twice_boxed1000_from_scratch"]) == {
        "crbp_continued_twice_steps64", "crbp_continued_twice_steps64_contours1000", "cnn_continued_twice_boxed1000x2",
        "cnn_continued_twice_boxed1000_from_scratch"}
    assert run_label("cnn_continued_twice_boxed1000x2_from_scratch").endswith(
        ", from scratch 2 x 1000 iterations on boxed contours")


def test_models_trained_with_the_box_as_the_cue_are_measured_on_boxed_contours(tmp_path, monkeypatch):
    """End to end on a small scale: the committed CNN (seed 0) given two cycles of 2 iterations on
    the train split's contours drawn with the box as the cue; each cycle starts from the previous
    one's weights, the runs are measured on boxed contours, and the report's box section lists them
    beside all ink in the box and the box's grouping bound, with its picture."""
    import shutil

    import torch

    from experiments import crossings
    from experiments.runs import RESULTS_DIR

    results = tmp_path / "results"
    shutil.copytree(os.path.join(RESULTS_DIR, "experiment", "cnn_continued_twice"),
                    results / "experiment" / "cnn_continued_twice")
    monkeypatch.setenv("CRBP_PATHFINDER_DIR", str(tmp_path / "data"))
    small = ["PATHFINDER.DATA.TEST_PER_LENGTH", "4", "PATHFINDER.EVAL.VAL_COUNT", "4", "TEST.EVAL_PERIOD", "0",
             "PATHFINDER.DATA.TEST_LENGTHS", "[6]", "PATHFINDER.EVAL.SWEEP_LENGTHS", "[6]",
             "PATHFINDER.EVAL.SWEEP_MAX_STEPS", "0", "SOLVER.WARMUP_ITERS", "0"]
    crossings.main(["--models", "cnn_continued_twice", "--seeds", "0", "--images", "2", "--count", "3",
                    "--train", "2", "--cycles", "2", "--cue", "box", "--train-images", "2",
                    "--trained-models", "cnn_continued_twice", "--workers", "1",
                    "--scratch", str(tmp_path / "scratch"), "--results", str(results), "--opts", *small])
    folder = results / crossings.FOLDER
    trained = results / crossings.TRAINED
    first = json.loads((trained / "cnn_continued_twice_boxed2" / "seed0.json").read_text())
    second = json.loads((trained / "cnn_continued_twice_boxed2x2" / "seed0.json").read_text())
    assert "boxed_train" in first["config"] and "cnn_continued_twice_boxed2/seed0_model.pth" in second["config"]
    before, after = (torch.load(trained / name / "seed0_model.pth") for name in ("cnn_continued_twice_boxed2",
                                                                                   "cnn_continued_twice_boxed2x2"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for name in ("cnn_continued_twice_boxed2", "cnn_continued_twice_boxed2x2"):
        measured = json.loads((folder / f"{name}_seed0.json").read_text())
        assert 0 <= measured["contours"]["crossing"]["iou"] <= 1
    box = json.loads((folder / "proximity_box.json").read_text())
    assert box["bound"]["contours"]["crossing"]["iou"] > box["in_box"]["contours"]["crossing"]["iou"]
    report = (results / "pathfinder_crossings.md").read_text()
    marker_table, box_section = report.split("## The box as the cue")
    assert "then 2 x 2 iterations on boxed contours" in box_section and "boxed" not in marker_table.split("| predictor")[1]
    assert "the box's grouping bound" in box_section and "all ink inside the box (no grouping)" in box_section
    assert (results / "pathfinder_crossings_box.png").stat().st_size > 10000


def test_committed_runs_on_the_contours_are_what_their_names_configure():
    """Every committed run of results/crossings_trained was trained as training_runs configures its
    name today: from the weights its name says (experiment, previous cycle, or none), for its
    iterations, on the set drawn with its cue, compiled where the rule says."""
    import yaml

    from experiments.crossings import RUN_PREFIX, TRAINED, parse_name, training_runs
    from experiments.runs import PROJECT, RESULTS_DIR, load_experiment

    runs = load_experiment(TRAINED)
    assert any(parse_name(n).cue == "box" for n in runs) and any(parse_name(n).scratch for n in runs)
    for name, seeds in runs.items():
        run = parse_name(name)
        for seed, result in seeds.items():
            recorded = yaml.safe_load(result["config"])
            folder, = recorded["PATHFINDER"]["DATA"]["TRAIN_FOLDERS"]
            assert os.path.basename(folder) == f"{RUN_PREFIX[run.cue]}_train", (name, folder)
            configured, = training_runs([run.model], [seed], run.iterations, folder, RESULTS_DIR, cycle=run.cycles,
                                        cue=run.cue, scratch=run.scratch)
            opts = dict(zip(configured.opts[::2], configured.opts[1::2]))
            assert configured.name == name
            assert recorded["SOLVER"]["MAX_ITER"] == run.iterations == opts["SOLVER.MAX_ITER"]
            assert recorded["MODEL"]["CRBP"]["FORWARD"]["COMPILE"] == opts.get("MODEL.CRBP.FORWARD.COMPILE", False), name
            weights = recorded["MODEL"]["WEIGHTS"]
            assert (weights == "") == (opts["MODEL.WEIGHTS"] == "") == (run.scratch and run.cycles == 1), name
            if weights:  # project-relative when inside the project
                assert os.path.join(PROJECT, weights) == os.path.join(PROJECT, opts["MODEL.WEIGHTS"]), name

"""The Pathfinder benchmarks end to end on a tiny setting: the experiment trains its models through
the tool, writes per-run JSON and its report; the equilibrium diagnostic reads the seed-0 weights and
reports numbers that mean something (IoU in [0, 1], a spectral radius, a distance that shrinks); the
selection diagnostic's contour parts and marker influence have the properties they claim."""
import json
import os
import re

import numpy as np
import pytest
import torch
import yaml
from detectron2.evaluation.testing import flatten_results_dict

from pathfinder.config import load_pathfinder_config

from test_training import TINY

TINY_EXPERIMENT = [str(v) for v in TINY] + [
    "SOLVER.MAX_ITER", "6", "TEST.EVAL_PERIOD", "0", "PATHFINDER.MODEL.STRIDE", "1",
    "PATHFINDER.MODEL.CNN_LAYERS", "2", "PATHFINDER.EVAL.SWEEP_MAX_STEPS", "6", "SOLVER.CHECKPOINT_PERIOD", "3"]


@pytest.fixture(scope="module")
def experiment_results(tmp_path_factory):
    from experiments import experiment

    tmp = tmp_path_factory.mktemp("pf_bench")
    os.environ["CRBP_PATHFINDER_DIR"] = str(tmp / "data")
    try:
        experiment.main(["--models", "crbp_steps64", "bptt", "cnn_continued_twice", "--seeds", "0", "--workers", "1",
                         "--scratch", str(tmp / "scratch"), "--results", str(tmp / "results"),
                         "--opts", *TINY_EXPERIMENT])
    finally:
        os.environ.pop("CRBP_PATHFINDER_DIR")
    return tmp


def test_experiment_writes_runs_and_report(experiment_results):
    results = experiment_results / "results"
    for model in ("crbp_steps64", "bptt", "cnn"):
        run = json.loads((results / "experiment" / model / "seed0.json").read_text())
        assert set(run["test"]) == {"3", "4"} and all(0 <= v["iou"] <= 1 for v in run["test"].values())
    memory = json.loads((results / "experiment" / "memory.json").read_text())
    assert memory["crbp"] == memory["crbp_2x_steps"]  # flat in steps
    report = (results / "pathfinder.md").read_text()
    assert "hGRU C-RBP, 1000 iterations" in report and "CNN, 1000 iterations" in report and "BPTT-1" in report
    # a table model is its chain, run link by link: each from the previous link's weights
    for link, source in (("cnn_continued", "cnn"), ("cnn_continued_twice", "cnn_continued")):
        run = json.loads((results / "experiment" / link / "seed0.json").read_text())
        assert yaml.safe_load(run["config"])["MODEL"]["WEIGHTS"].endswith(f"{source}/seed0_model.pth")
    row = next(line for line in report.splitlines() if line.startswith("| CNN, parameter-matched (cnn.yaml)"))
    assert [c.strip() for c in row.strip("|").split("|")][4] == "18"  # 3 links of 6 iterations
    for picture in ("pathfinder_steps.png", "pathfinder_curves.png", "pathfinder_evolution.png"):
        assert (results / picture).stat().st_size > 0


def test_equilibrium_diagnostic_reads_the_weights(experiment_results):
    from experiments import equilibrium

    os.environ["CRBP_PATHFINDER_DIR"] = str(experiment_results / "data")
    try:
        equilibrium.main(["--models", "crbp_steps64", "--length", "3", "--count", "8", "--far", "12",
                          "--results", str(experiment_results / "results")])
    finally:
        os.environ.pop("CRBP_PATHFINDER_DIR")
    table = (experiment_results / "results" / "pathfinder_equilibrium.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| hGRU C-RBP"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    iou, distance, rho = float(cells[2]), float(cells[7]), float(cells[8])
    assert 0 <= iou <= 1 and 0 <= distance and 0 < rho < 10


# Keys that change no trained weight: what is evaluated after training (and during it, on the
# validation set) and when the generator gives up placing a sample (it changes no placed sample).
CHANGES_NO_WEIGHT = ("TEST/", "PATHFINDER/EVAL/", "PATHFINDER/DATA/TEST_LENGTHS", "PATHFINDER/DATA/TEST_PER_LENGTH",
                     "PATHFINDER/DATA/MAX_TRIES")


def test_committed_runs_are_what_their_model_names_configure():
    """Every committed Pathfinder run sits under a model of the experiment, and was trained with
    exactly the config that model loads today (but for where it wrote, its seed and its datasets'
    registered names): renaming a config or changing a base cannot silently relabel the results."""
    from experiments.equilibrium import run_config
    from experiments.experiment import DEFAULT_MODELS, EXPERIMENT, MODELS, NOT_RUN, Setting, runs_for
    from experiments.runs import load_experiment

    setting = Setting()
    found = load_experiment(EXPERIMENT)
    assert set(DEFAULT_MODELS) - set(NOT_RUN) <= set(found) <= set(MODELS)
    with open(setting.memory_json) as f:
        memory = json.load(f)  # the memory-matched BPTT's steps
    for name, runs in found.items():
        for seed, result in runs.items():
            trained = run_config(result)
            run = runs_for([name], [seed], memory, setting)[0]
            opts = run.opts + ["OUTPUT_DIR", trained.OUTPUT_DIR, "SEED", seed,
                               "PATHFINDER.DATA.ROOT", trained.PATHFINDER.DATA.ROOT]
            configured = load_pathfinder_config(run.config, opts)
            configured.DATASETS = trained.DATASETS  # registered names, set when the data are prepared
            want, got = (flatten_results_dict(yaml.safe_load(c.dump())) for c in (configured, trained))
            # the source run, wherever the results folder was when it trained (a run trained
            # outside the experiment's runner names the committed weights its start equals)
            got["MODEL/WEIGHTS"] = result.get("weights_source", got["MODEL/WEIGHTS"])
            for flat in (want, got):
                flat["MODEL/WEIGHTS"] = "/".join(flat["MODEL/WEIGHTS"].split("/")[-2:])
            differ = {k: (want.get(k), got.get(k)) for k in set(want) | set(got)
                      if got.get(k) != want.get(k) and not k.startswith(CHANGES_NO_WEIGHT)}
            assert not differ, f"{name}/seed{seed} was trained with another config: {differ}"



def test_each_table_row_is_its_one_command_config():
    """A row of the table is a chain of three 1000-iteration runs; its one-command config
    (crbp.yaml, ..., PATHFINDER.CYCLES 3) trains the same model on the same data with the same
    solver, so that `train_net.py --config-file crbp.yaml` is the run the table measured."""
    from experiments.experiment import DEFAULT_MODELS, MODEL_OPTS, MODELS, ONE_COMMAND, chain

    assert set(ONE_COMMAND) == set(DEFAULT_MODELS)
    for name in DEFAULT_MODELS:
        config, opts = ONE_COMMAND[name]
        one = load_pathfinder_config(config, opts)
        assert one.PATHFINDER.CYCLES == len(chain(name)) == 3 and one.SOLVER.MAX_ITER == 1000
        for link in chain(name):
            linked = load_pathfinder_config(MODELS[link][1], MODEL_OPTS.get(link, []))
            want, got = (flatten_results_dict(yaml.safe_load(c.dump())) for c in (one, linked))
            differ = {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if got.get(k) != want.get(k)
                      and not k.startswith(CHANGES_NO_WEIGHT + ("PATHFINDER/CYCLES", "MODEL/WEIGHTS", "OUTPUT_DIR"))}
            assert not differ, f"{config} {opts} is not {link}: {differ}"


def test_task_loss_curve_of_a_single_loss_run_is_its_total_loss():
    """Detectron2 logs a model's only loss as total_loss alone: the report reads the task loss of
    BPTT, RBP and the CNN from there, and a penalised run's task loss from its own term."""
    from experiments.report import curve_values

    single = {"curve": [{"iteration": 19, "total_loss": 0.5}, {"iteration": 39, "total_loss": 0.25}]}
    penalised = {"curve": [{"iteration": 19, "total_loss": 0.7, "loss_pixel": 0.4, "loss_penalty/body": 0.3}]}
    assert curve_values(single, "loss_pixel") == [(19, 0.5), (39, 0.25)]
    assert curve_values(penalised, "loss_pixel") == [(19, 0.4)]
    assert curve_values(single, "crbp/body/residual") == []


def test_selection_diagnostic_measures_and_rebuilds_its_report(experiment_results):
    """The selection diagnostic reads seed 0's weights, commits its measurements as JSON, and
    --report-only rebuilds the same report from them."""
    from experiments import selection

    results = experiment_results / "results"
    os.environ["CRBP_PATHFINDER_DIR"] = str(experiment_results / "data")
    try:
        selection.main(["--models", "crbp_steps64", "cnn", "--length", "4", "--count", "8", "--results", str(results)])
        measured = (results / "pathfinder_selection.md").read_text()
        selection.main(["--models", "crbp_steps64", "cnn", "--length", "4", "--report-only", "--results", str(results)])
    finally:
        os.environ.pop("CRBP_PATHFINDER_DIR")
    assert (results / "pathfinder_selection.md").read_text() == measured
    crbp = json.loads((results / "experiment" / "crbp_steps64" / "selection_L4_seed0.json").read_text())
    assert crbp["horizon"] == 3 and len(crbp["selection"]) == 3 and len(crbp["influence"]) == 3
    assert all(0 <= v <= 1 for step in crbp["selection"] for v in step if v == v)  # nan: no such part
    assert all(-1 <= v <= 1 for step in crbp["influence"] for v in step if v == v)
    assert "hGRU C-RBP, 1000 iterations" in measured and "CNN, 1000 iterations" in measured


def test_selection_over_training_measures_every_checkpoint(experiment_results):
    """--checkpoints measures each periodic checkpoint the run left in the scratch folder; the last
    one holds the final weights, so its numbers are the final measurement's at the horizon."""
    from experiments import selection

    results = experiment_results / "results"
    os.environ["CRBP_PATHFINDER_DIR"] = str(experiment_results / "data")
    try:
        with pytest.raises(SystemExit, match="no checkpoints of crbp_steps64 seed 0"):
            selection.main(["--models", "crbp_steps64", "--length", "4", "--count", "8", "--results", str(results),
                            "--checkpoints", str(experiment_results / "elsewhere")])
        selection.main(["--models", "crbp_steps64", "--length", "4", "--count", "8", "--results", str(results),
                        "--checkpoints", str(experiment_results / "scratch")])
        measured = (results / "pathfinder_selection.md").read_text()
        selection.main(["--models", "crbp_steps64", "--length", "4", "--report-only", "--results", str(results)])
    finally:
        os.environ.pop("CRBP_PATHFINDER_DIR")
    assert (results / "pathfinder_selection.md").read_text() == measured
    folder = results / "experiment" / "crbp_steps64"
    final = json.loads((folder / "selection_L4_seed0.json").read_text())
    training = json.loads((folder / "selection_L4_seed0_training.json").read_text())
    assert training["iterations"] == [3, 6] and training["horizon"] == final["horizon"] == 3
    assert training["selection"][-1] == final["selection"][-1]
    assert training["influence"][-1] == final["influence"][-1]
    assert training["selection"][0] != training["selection"][-1]  # the first checkpoint is another model
    rows = [line.split("|") for line in measured.split("Over training, at the horizon")[1].splitlines()]
    assert [r[2].strip() for r in rows if len(r) > 2 and r[1].startswith(" hGRU C-RBP")] == ["3", "6"]
    assert (results / "pathfinder_selection_training.png").stat().st_size > 0


def test_a_continued_run_starts_from_its_source_and_counts_its_iterations(experiment_results, tmp_path, monkeypatch):
    """A model that CONTINUES another starts each seed from that model's final weights of the same
    seed (at learning rate 0 its weights stay exactly those), records them as MODEL.WEIGHTS, and
    the selection diagnostic counts its checkpoints from the first run's start. Without the
    source's weights it is refused before anything trains, naming them."""
    import shutil

    from experiments import experiment, selection

    monkeypatch.setitem(experiment.CONTINUES, "crbp_continued_steps64", "crbp_steps64")
    results, scratch = tmp_path / "results", tmp_path / "scratch"
    shutil.copytree(experiment_results / "results", results)
    setting = experiment.Setting(str(results))
    with pytest.raises(FileNotFoundError, match="crbp_steps64's weights of that seed.*--seeds 1"):
        experiment.runs_for(["crbp_continued_steps64"], [1], {}, setting)
    monkeypatch.setenv("CRBP_PATHFINDER_DIR", str(experiment_results / "data"))
    experiment.main(["--models", "crbp_continued_steps64", "--seeds", "0", "--workers", "1", "--scratch", str(scratch),
                     "--results", str(results), "--opts", *TINY_EXPERIMENT, "SOLVER.BASE_LR", "0.0"])
    folder = results / "experiment"
    source = torch.load(folder / "crbp_steps64" / "seed0_model.pth", weights_only=True)
    continued = torch.load(folder / "crbp_continued_steps64" / "seed0_model.pth", weights_only=True)
    model = experiment.PathfinderTrainer.build_model(setting.cfg("crbp_continued_steps64", TINY_EXPERIMENT))
    parameters = [name for name, _ in model.named_parameters()]
    assert parameters and all(torch.equal(source[name], continued[name]) for name in parameters)
    run = json.loads((folder / "crbp_continued_steps64" / "seed0.json").read_text())
    assert yaml.safe_load(run["config"])["MODEL"]["WEIGHTS"] == str(folder / "crbp_steps64" / "seed0_model.pth")

    selection.main(["--models", "crbp_continued_steps64", "--length", "4", "--count", "8", "--results", str(results),
                    "--checkpoints", str(scratch)])
    training = json.loads((folder / "crbp_continued_steps64" / "selection_L4_seed0_training.json").read_text())
    assert training["iterations"] == [9, 12]  # the source's 6, then checkpoints at 3 and 6


@pytest.fixture(scope="module")
def contours(tmp_path_factory):
    """64 px test contours of 10 paddles with one long and two short distractors, and their parts."""
    from experiments.selection import contour_parts
    from pathfinder.data import test_name, test_tensors
    from pathfinder.engine import prepare_datasets

    cfg = load_pathfinder_config("cnn.yaml", [
        "PATHFINDER.DATA.ROOT", str(tmp_path_factory.mktemp("pf_parts")), "PATHFINDER.DATA.TEST_LENGTHS", [10],
        "PATHFINDER.DATA.TRAIN_LENGTHS", [10], "PATHFINDER.DATA.TRAIN_PER_LENGTH", 4,
        "PATHFINDER.DATA.TEST_PER_LENGTH", 12, "PATHFINDER.DATA.DISTRACTORS", 3, "PATHFINDER.DATA.WORKERS", 1,
        "PATHFINDER.MODEL.CNN_LAYERS", 1, "PATHFINDER.MODEL.STRIDE", 1, "PATHFINDER.MODEL.FRONT_KERNEL_SIZE", 3])
    prepare_datasets(cfg)
    images, masks = test_tensors(cfg, test_name(10), 12)
    return cfg, images, masks, contour_parts(cfg, 10, len(images), images)


def test_contour_parts_split_the_canvas_and_erase_only_the_marker(contours):
    cfg, images, masks, parts = contours
    p, order, unmarked = parts["parts"], parts["order"], parts["unmarked"]
    assert (p.sum(1) <= 1).all()  # disjoint
    assert (p[:, :3].any(1) == masks[:, 0].numpy()).all()  # the thirds are the label
    assert p[:, 3].any() and p[:, 4].any()  # a long and short distractors
    assert set(np.unique(order)) == set(range(-1, 10))
    assert ((order >= 0) <= masks[:, 0].numpy()).all()
    for n in range(len(images)):  # position 0 is the paddle at the marker: nearest to the erased pixels
        erased = (images[n, 0] != unmarked[n, 0]).numpy()
        assert erased.any() and not (erased & (order[n] >= 0)).any() and not (erased & p[n, 3:5].any(0)).any()
        ys, xs = np.nonzero(erased)
        first, last = (np.argwhere(order[n] == k) for k in (0, 9))
        centre = np.array([ys.mean(), xs.mean()])
        assert np.linalg.norm(first - centre, axis=1).min() < np.linalg.norm(last - centre, axis=1).min()
    from experiments.selection import contour_parts

    with pytest.raises(RuntimeError, match="differs from the stored one"):
        contour_parts(cfg, 10, 2, images.flip(-1))


def test_marker_influence_is_zero_beyond_a_feed_forward_models_reach(contours):
    """A feed-forward model sees a fixed neighbourhood: the marker's influence must be exactly
    zero on target paddles out of its reach, and not zero at the marker's own paddle."""
    from experiments.selection import measure
    from pathfinder.engine import PathfinderTrainer

    cfg, images, masks, parts = contours
    torch.manual_seed(0)
    model = PathfinderTrainer.build_model(cfg).eval()  # 3x3 front, one 3x3 layer, 1x1 readout: reach 2 px
    out = measure(model, images, parts, steps=1, length=10)
    influence = out["influence"][0]
    assert abs(influence[0]) > 1e-4
    erased = (images != parts["unmarked"])[:, 0].numpy()
    for k in range(10):
        pixels = np.argwhere(parts["order"] == k)
        near = [np.abs(np.argwhere(erased[n]) - (y, x)).max(1).min() <= 2 for n, y, x in pixels]
        if not any(near):
            assert influence[k] == 0.0, (k, influence)


def test_marker_free_line_marks_both_long_paths(contours):
    """The marker-free predictor finds the whole target (recall 1) and pays for the distractor as
    long as it (IoU = precision = target / both paths); with no long distractor it is the label."""
    from experiments.marker_free import marker_free_metrics

    cfg, _, masks, parts = contours
    both = parts["parts"][:, :4].any(1)
    metrics = marker_free_metrics(cfg, 10, 12)
    assert metrics["images"] == 12 and metrics["recall"] == 1.0
    assert metrics["iou"] == pytest.approx(metrics["precision"])
    assert metrics["iou"] == pytest.approx(masks.sum().item() / both.sum())
    assert 0.3 < metrics["iou"] < 0.8  # one distractor as long as the target: about half the marked pixels
    cfg.defrost()
    cfg.PATHFINDER.DATA.LONG_DISTRACTORS = 0  # generated afresh: a set without long distractors
    from pathfinder.engine import prepare_datasets

    prepare_datasets(cfg)
    assert marker_free_metrics(cfg, 10, 12)["iou"] == 1.0


def test_restarts_section_compares_the_recipe_with_one_schedule_seed_by_seed():
    from experiments.experiment import DEFAULT_MODELS, MODELS, ONE_SCHEDULE, restarts_section

    def runs(ious):
        return {seed: {"test": {"14": {"iou": a}, "18": {"iou": b}}} for seed, (a, b) in enumerate(ious)}

    groups = {DEFAULT_MODELS[0]: runs([(0.9, 0.8), (0.7, 0.6)]), ONE_SCHEDULE: runs([(0.8, 0.8), (0.5, 0.4)])}
    text = restarts_section(groups)
    assert f"| {MODELS[ONE_SCHEDULE][0]} | 0.800 / 0.500 | 0.800 / 0.400 |" in re.sub(" +", " ", text)
    assert "14 paddles -0.150 ± 0.071; 18 paddles -0.100 ± 0.141" in text
    assert restarts_section({DEFAULT_MODELS[0]: groups[DEFAULT_MODELS[0]]}).startswith("Not measured yet")


def test_wall_clock_section_counts_each_baselines_time_in_crbps_and_names_the_strongest_cheaper_one(tmp_path):
    """Baselines given more time: each further cycle's share of C-RBP's 3000 iterations is
    iterations x (its cost per iteration / C-RBP's, the median paired ratio), every baseline with
    further cycles has its rows, and the strongest at 18 paddles is looked for among the baselines
    at most half as dear as C-RBP (RBP, as dear, is not it even when it scores highest)."""
    from experiments import wall_clock
    from experiments.experiment import DEFAULT_MODELS, EXPERIMENT, MODELS, chain, wall_clock_section

    crbp, rbp, bptt4, bptt8 = (DEFAULT_MODELS[0], "rbp_continued_twice", "bptt4_continued_twice",
                               "bptt8_continued_twice")

    def result(a, b):
        return {"test": {"14": {"iou": a}, "18": {"iou": b}}}

    def write(experiment, name, seed, r):
        folder = tmp_path / experiment / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"seed{seed}.json").write_text(json.dumps(r))

    groups = {crbp: {0: result(0.94, 0.84)}, rbp: {0: result(0.9, 0.8)}, bptt4: {0: result(0.62, 0.47)},
              bptt8: {0: result(0.85, 0.59)}}
    for model in (bptt4, bptt8):
        for cycle, link in enumerate(chain(model), 1):
            write(EXPERIMENT, link, 0, groups[model][0] if link == model else result(0.1 * cycle, float("nan")))
    write(wall_clock.WALL_CLOCK, f"{bptt4}_cycle4", 0, result(0.64, 0.49))
    for cycle, r in ((4, result(0.87, 0.61)), (5, result(0.88, 0.63))):
        write(wall_clock.WALL_CLOCK, f"{bptt8}_cycle{cycle}", 0, r)
    names = wall_clock.SPEED_NAMES
    speed = tmp_path / "speed.json"
    speed.write_text(json.dumps({"times": {names[crbp]: [2.0, 4.0, 2.0], names[rbp]: [1.9, 3.6, 1.8],
                                           names[bptt4]: [0.3, 0.8, 0.4], names[bptt8]: [0.6, 1.2, 0.6]}}))
    text = re.sub(" +", " ", wall_clock_section(groups, {"14": {"iou": 0.52}, "18": {"iou": 0.51}},
                                                str(tmp_path), str(speed)))
    assert f"| {MODELS[bptt8][0]} | 0.590 ± 0.000 | 0.300 | 10,000 |" in text  # ratios 0.3, 0.3, 0.3
    assert f"| {MODELS[bptt4][0]} | 4 | 4000 | 0.27 | 0.640 | 0.490 |" in text  # ratios 0.15, 0.2, 0.2
    assert f"| {MODELS[bptt8][0]} | 3 | 3000 | 0.30 | 0.850 | 0.590 |" in text
    assert f"| {MODELS[bptt8][0]} | 1 | 1000 | 0.10 | 0.100 | – |" in text
    assert f"| {MODELS[crbp][0]} | 3 | 3000 | 1.00 | 0.940 | 0.840 |" in text
    assert "| marker-free line | – | – | – | 0.520 | 0.510 |" in text
    assert (f"{MODELS[bptt8][0]}, reached 0.50 of C-RBP's time: IoU 0.880 / 0.630 at 14 / 18 paddles, "
            "against C-RBP's seed 0 at its 3000 iterations: 0.940 / 0.840.") in text
    without = {m: g for m, g in groups.items() if m != bptt8}
    assert f"{MODELS[bptt4][0]}, reached 0.27 of C-RBP's time" in wall_clock_section(without, {}, str(tmp_path),
                                                                                     str(speed))


def test_compiled_section_compares_the_compiled_first_cycle_with_the_eager_one_seed_by_seed():
    from experiments.experiment import COMPILED, MODELS, compiled_section

    def runs(ious, seconds):
        return {seed: {"test": {"14": {"iou": a}, "18": {"iou": b}}, "train": {"seconds_per_iteration": seconds}}
                for seed, (a, b) in enumerate(ious)}

    groups = {"crbp_steps64": runs([(0.5, 0.3), (0.4, 0.2), (0.6, 0.4)], 3.5),
              COMPILED: runs([(0.52, 0.3), (0.41, 0.25), (0.5, 0.3)], 1.2)}
    text = re.sub(" +", " ", compiled_section(groups))
    assert f"| {MODELS[COMPILED][0]} | 0.520 / 0.410 / 0.500 | 0.300 / 0.250 / 0.300 |" in text
    assert "14 paddles -0.023 ± 0.067; 18 paddles -0.017 ± 0.076" in text
    assert "eager 3.50 ± 0.00, compiled 1.20 ± 0.00" in text
    assert compiled_section({"crbp_steps64": groups["crbp_steps64"]}).startswith("Not measured yet")


def test_longer_section_follows_each_table_model_past_three_cycles_and_checks_every_crbp_seed():
    """The table's models after three, four and five cycles, seed by seed: C-RBP's verdict names
    the seeds under the bar (0.90 at 14 paddles, 0.80 at 18), the 2x-steps ratio comes from the
    sweep, and a baseline's further cycles are found under its own names."""
    from experiments.experiment import CRBP_LONGER, DEFAULT_MODELS, MODELS, longer_section

    def runs(ious, steps=64):  # IoU 1.02x at twice the steps
        return {seed: {"test": {"14": {"iou": a}, "18": {"iou": b}}, "steps": steps,
                       "sweep": {str(L): [{"iou": v}] * steps + [{"iou": v * 1.02}] * steps
                                 for L, v in ((14, a), (18, b))}}
                for seed, (a, b) in enumerate(ious)}

    crbp = DEFAULT_MODELS[0]
    groups = {crbp: runs([(0.94, 0.84), (0.95, 0.84), (0.72, 0.56)]),
              CRBP_LONGER[0]: runs([(0.96, 0.88), (0.97, 0.90), (0.87, 0.65)]),
              CRBP_LONGER[1]: runs([(0.96, 0.89), (0.97, 0.91), (0.93, 0.81)]),
              "rbp_continued_thrice": runs([(0.9, 0.8), (0.91, 0.81), (0.92, 0.79)])}
    text = re.sub(" +", " ", longer_section(groups))
    assert "after 3 cycles (3 seeds) seed 2 short of it; after 4 cycles (3 seeds) seed 2 short of it; " \
           "after 5 cycles (3 seeds) every seed reaches it." in text
    assert f"| {MODELS[crbp][0].split(' (')[0]} | 5 | 5000 | 0, 1, 2 | 0.960 / 0.970 / 0.930 | 0.890 / 0.910 / 0.810 |" in text
    assert f"| {MODELS['rbp_continued_twice'][0].split(' (')[0]} | 4 | 4000 | 0, 1, 2 | 0.900 / 0.910 / 0.920 |" in text
    assert "| 1.02-1.02x |" in text
    assert longer_section({crbp: groups[crbp]}).startswith("Not measured yet")


def test_marker_reach_reads_each_seeds_selection_at_the_horizon(tmp_path):
    """The longer-training section's diagnostic: per C-RBP seed, the marker's influence at the
    horizon at the first, middle and last paddle (the selection measurement's last step) and its
    decay, beside the IoU at the horizon and at twice the steps; seeds without a measurement are left out."""
    from experiments.experiment import CRBP_LONGER, DEFAULT_MODELS, EXPERIMENT, longer_section
    from experiments.selection import results_path

    def runs(ious, steps=4):
        return {seed: {"test": {"14": {"iou": a}, "18": {"iou": b}}, "steps": steps,
                       "sweep": {str(L): [{"iou": v}] * (2 * steps) for L, v in ((14, a), (18, b))}}
                for seed, (a, b) in enumerate(ious)}

    groups = {DEFAULT_MODELS[0]: runs([(0.94, 0.84), (0.72, 0.56)]), CRBP_LONGER[0]: runs([(0.96, 0.88), (0.87, 0.65)])}
    influence = [[0.0] * 18, [0.6 - 0.03 * i for i in range(18)]]  # steps 1 and 2 (the horizon of the measurement)
    (tmp_path / EXPERIMENT).mkdir()
    for seed in (0, 1):
        path = results_path(str(tmp_path), CRBP_LONGER[0], 18, seed)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"influence": influence}, f)
    text = re.sub(" +", " ", longer_section(groups, results_dir=str(tmp_path)))
    assert "\n| 4 | 1 | 0.650 | 0.650 | 0.60 | 0.33 | 0.09 | 0.15 |" in text
    assert "\n| 3 | 0 |" not in text  # no measurement for the three-cycle model
    assert "marker influence" not in re.sub(" +", " ", longer_section(groups))

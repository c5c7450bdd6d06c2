"""The Pathfinder benchmarks end to end on a tiny setting: the experiment trains its models through
the tool, writes per-run JSON and its report; the equilibrium diagnostic reads the seed-0 weights and
reports numbers that mean something (IoU in [0, 1], a spectral radius, a distance that shrinks)."""
import json
import os

import pytest
import yaml
from detectron2.evaluation.testing import flatten_results_dict

from crbp_detectron.pathfinder.config import load_pathfinder_config

from ..pathfinder.test_training import TINY

TINY_EXPERIMENT = [str(v) for v in TINY] + [
    "SOLVER.MAX_ITER", "6", "TEST.EVAL_PERIOD", "0", "PATHFINDER.MODEL.STRIDE", "1",
    "PATHFINDER.MODEL.CNN_LAYERS", "2", "PATHFINDER.EVAL.SWEEP_MAX_STEPS", "6"]


@pytest.fixture(scope="module")
def experiment_results(tmp_path_factory):
    from benchmarks.pathfinder import experiment

    tmp = tmp_path_factory.mktemp("pf_bench")
    os.environ["CRBP_PATHFINDER_DIR"] = str(tmp / "data")
    try:
        experiment.main(["--models", "crbp", "bptt", "cnn", "--seeds", "0", "--workers", "1",
                         "--scratch", str(tmp / "scratch"), "--results", str(tmp / "results"),
                         "--opts", *TINY_EXPERIMENT])
    finally:
        os.environ.pop("CRBP_PATHFINDER_DIR")
    return tmp


def test_experiment_writes_runs_and_report(experiment_results):
    results = experiment_results / "results"
    for model in ("crbp", "bptt", "cnn"):
        run = json.loads((results / "pathfinder" / "experiment" / model / "seed0.json").read_text())
        assert set(run["test"]) == {"3", "4"} and all(0 <= v["iou"] <= 1 for v in run["test"].values())
    memory = json.loads((results / "pathfinder" / "experiment" / "memory.json").read_text())
    assert memory["crbp"] == memory["crbp_2x_steps"]  # flat in steps
    report = (results / "pathfinder.md").read_text()
    assert "hGRU C-RBP" in report and "CNN, parameter-matched" in report and "BPTT" in report
    for picture in ("pathfinder_steps.png", "pathfinder_curves.png", "pathfinder_evolution.png"):
        assert (results / picture).stat().st_size > 0


def test_equilibrium_diagnostic_reads_the_weights(experiment_results):
    from benchmarks.pathfinder import equilibrium

    os.environ["CRBP_PATHFINDER_DIR"] = str(experiment_results / "data")
    try:
        equilibrium.main(["--models", "crbp", "--length", "3", "--count", "8", "--far", "12",
                          "--results", str(experiment_results / "results")])
    finally:
        os.environ.pop("CRBP_PATHFINDER_DIR")
    table = (experiment_results / "results" / "pathfinder_equilibrium.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| hGRU C-RBP"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    iou, distance, rho = float(cells[2]), float(cells[7]), float(cells[8])
    assert 0 <= iou <= 1 and 0 <= distance and 0 < rho < 10


def test_committed_runs_are_what_their_model_names_configure():
    """Every committed Pathfinder run sits under a model of the experiment, and was trained with
    exactly the config that model loads today (but for where it wrote, its seed and its datasets'
    registered names): renaming a config or changing a base cannot silently relabel the results."""
    from benchmarks.pathfinder.equilibrium import run_config
    from benchmarks.pathfinder.experiment import DEFAULT_MODELS, EXPERIMENT, MODELS, Setting, runs_for
    from benchmarks.pathfinder.runs import load_experiment

    setting = Setting()
    found = load_experiment(EXPERIMENT)
    assert set(DEFAULT_MODELS) <= set(found) <= set(MODELS)
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
            differ = {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if got.get(k) != want.get(k)}
            assert not differ, f"{name}/seed{seed} was trained with another config: {differ}"



def test_task_loss_curve_of_a_single_loss_run_is_its_total_loss():
    """Detectron2 logs a model's only loss as total_loss alone: the report reads the task loss of
    BPTT, RBP and the CNN from there, and a penalised run's task loss from its own term."""
    from benchmarks.pathfinder.report import curve_values

    single = {"curve": [{"iteration": 19, "total_loss": 0.5}, {"iteration": 39, "total_loss": 0.25}]}
    penalised = {"curve": [{"iteration": 19, "total_loss": 0.7, "loss_pixel": 0.4, "loss_penalty/body": 0.3}]}
    assert curve_values(single, "loss_pixel") == [(19, 0.5), (39, 0.25)]
    assert curve_values(penalised, "loss_pixel") == [(19, 0.4)]
    assert curve_values(single, "crbp/body/residual") == []

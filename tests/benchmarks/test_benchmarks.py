"""The benchmark code paths at tiny sizes (seconds): tables written with the expected rows,
crbp's saved-for-backward bytes equal across steps, torchdeq's methods skipped when it is absent."""
import argparse
import json
import os
import re
import sys

import pytest
import torch

from benchmarks import core_memory, recurrence
from benchmarks.exact_gradient import agreement, exact_implicit_gradient, method_gradient
from benchmarks.memory import peak_rss_in_subprocess
from benchmarks.methods import MethodSettings, build_method, split_methods, torchdeq_status
from crbp_detectron.utils.tables import markdown_table


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The scripts' --threads sets torch's thread count for the process: restore it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def table_rows(markdown: str, first_column_values):
    """Rows of the Markdown tables whose first cell is one of `first_column_values`, as lists of cells."""
    rows = []
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] in first_column_values:
                rows.append(cells)
    return rows


def test_core_memory_tiny(tmp_path):
    rows = core_memory.main(["--tiny", "--steps", "1", "4", "--repeats", "1", "--no-rss", "--threads", "1", "--out", str(tmp_path)])
    md = (tmp_path / "core_memory.md").read_text()
    assert (tmp_path / "core_memory.png").stat().st_size > 0
    assert "python -m benchmarks.core_memory --tiny" in md
    assert "os.cpu_count()" in md and "torch threads" in md
    table = table_rows(md, core_memory.MODES)
    assert [(r[0], r[1]) for r in table] == [(m, s) for m in core_memory.MODES for s in ("1", "4")]
    saved = {(r["mode"], r["steps"]): r["saved"] for r in rows}
    assert saved[("crbp", 1)] > 0 and saved[("crbp", 1)] == saved[("crbp", 4)]
    assert saved[("rbp", 1)] == saved[("rbp", 4)]
    assert saved[("bptt", 4)] > 2 * saved[("bptt", 1)]
    assert all(r["time"] > 0 for r in rows)
    assert "crbp memory at 4 steps ÷ at 1 step(s), saved-for-backward bytes: **1.000**" in md


def test_recurrence_tiny(tmp_path):
    methods = ["bptt", "crbp", "rbp"] + (["torchdeq_ift", "torchdeq_hook_ift", "torchdeq_phantom"]
                                         if torchdeq_status()[0] else [])
    written = recurrence.main(["--tiny", "--workloads", "pathfinder", "mask_head", "fpn", "--steps", "1", "3",
                               "--repeats", "1", "--no-rss", "--threads", "1", "--out", str(tmp_path), "--methods", *methods])
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["recurrence_mask_head.md", "recurrence_pathfinder.md"]
    assert not (tmp_path / "recurrence_fpn.md").exists()  # GPU only: skipped on CPU
    for workload in ("pathfinder", "mask_head"):
        md = (tmp_path / f"recurrence_{workload}.md").read_text()
        assert (tmp_path / f"recurrence_{workload}.png").stat().st_size > 0
        assert "python -m benchmarks.recurrence --tiny" in md and "cpu: " in md
        perf, grads = md.split("## Gradient agreement")
        rows = table_rows(perf, methods)
        assert [(r[0], r[1]) for r in rows] == [(m, s) for m in methods for s in ("1", "3")]
        saved = {(r[0], r[1]): float(r[2]) for r in rows}
        assert saved[("crbp", "1")] > 0 and saved[("crbp", "1")] == saved[("crbp", "3")]
        assert saved[("bptt", "3")] > saved[("bptt", "1")]
        grad_rows = table_rows(grads, methods)
        assert len(grad_rows) == 2 * len(methods)
        for r in grad_rows:
            assert -1.0 <= float(r[2]) <= 1.0 and float(r[3]) >= 0
        by = {(r[0], r[1]): r for r in grad_rows}
        assert by[("crbp", "3")][3] == by[("rbp", "3")][3]  # crbp's task gradient is rbp's
        if "torchdeq_hook_ift" in methods:  # the same quantity, J taken at the same point
            assert float(by[("torchdeq_hook_ift", "3")][3]) == pytest.approx(float(by[("rbp", "3")][3]), rel=1e-6)
        assert "## Goals" in md


def test_torchdeq_methods_skipped_when_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdeq", None)  # import torchdeq -> ImportError
    ok, message = torchdeq_status()
    assert not ok and "skipping" in message
    methods, notes = split_methods(["crbp", "torchdeq_ift", "torchdeq_phantom"])
    assert methods == ["crbp"] and notes == [message]
    assert split_methods(["crbp", "bptt"]) == (["crbp", "bptt"], [])


def test_peak_rss_subprocess_measures_a_step():
    case = {"workload": "mask_head", "shape": [2, 32, 6, 6], "kernel": 3, "method": "crbp", "steps": 2,
            "device": "cpu", "seed": 0}
    result = peak_rss_in_subprocess(recurrence.FACTORY, case, timeout=300)
    assert "error" not in result, result
    assert result["peak_rss_increase_bytes"] >= 0 and result["rss_before_bytes"] > 0


def test_exact_implicit_gradient_matches_a_converged_rbp():
    """On a contractive cell run to convergence, our RBP with enough terms agrees with the dense solve."""
    case = {"workload": "pathfinder", "shape": [1, 4, 5, 5], "kernel": 3, "dtype": "float64", "seed": 0}
    cell, x, readout = recurrence.make_problem(case)
    exact = exact_implicit_gradient(cell, x, readout)
    assert exact.residual < 1e-10 and exact.spectral_radius < 1
    method = build_method("rbp", cell, 200, MethodSettings(neumann_steps=400))  # rho(J) ~ 0.9
    grads, residual = method_gradient(method, cell, x, readout)
    agree = agreement(grads, exact.grads)
    assert residual < 1e-8
    assert agree["rel_err"] < 1e-6 and agree["cosine"] > 1 - 1e-10


def test_markdown_formatting():
    md = markdown_table(["a", "b"], [["x", 1.5], ["y", None], ["z", 1e-5]])
    lines = md.splitlines()
    assert re.fullmatch(r"\|-+\|-+\|", lines[1])  # GitHub table: header, separator, rows
    assert table_rows(md, ["a", "x", "y", "z"]) == [["a", "b"], ["x", "1.5"], ["y", "–"], ["z", "1.000e-05"]]


def test_model_cost_tiny(tmp_path):
    """The whole-model benchmark's code paths on small images: the RoI and detection counts are
    forced, the recompute step keeps less than the recorded one, the recurrent head costs FLOPs."""
    from benchmarks import model_cost

    ff, crbp, recorded = "feed-forward (model zoo)", "crbp-5", "crbp-5 (recorded step)"
    results = model_cost.main([
        "--workloads", "train", "infer", "--rois", "4", "--train-size", "64", "--train-configs", crbp, recorded,
        "--sizes", "128x128", "--detections", "40", "--infer-configs", ff, "recurrent, 5 steps", "--repeats", "1",
        "--threads", "1", "--out", str(tmp_path)])
    train = results["train"][4]
    assert all(train[name]["rois_seen"] == [4] for name in (crbp, recorded)), train
    assert train[crbp]["saved_bytes"] < train[recorded]["saved_bytes"]
    assert train[crbp]["saved_by_module"]["roi_heads.mask_head"] < train[recorded]["saved_by_module"]["roi_heads.mask_head"]
    infer = results["infer"][(128, 128)][40]  # more than the random-weight RPN's own proposals
    assert infer[ff]["rois_seen"] == [40] and infer["recurrent, 5 steps"]["rois_seen"] == [40]
    assert infer["recurrent, 5 steps"]["mask_head_flops"] > infer[ff]["mask_head_flops"] > 0
    md = (tmp_path / "model_cost.md").read_text()
    assert "python -m benchmarks.model_cost --workloads train infer" in md and "### Inference, 128x128" in md
    assert (tmp_path / "model_cost_infer.png").stat().st_size > 0


def test_demo_compare_report(tmp_path):
    """The side-by-side report from per-run results: one row per model with mean ± std over seeds,
    PQ per class in the dataset's category order, the command that made the runs, the picture."""
    import json

    from benchmarks import demo_compare
    from crbp_detectron.data.coco_panoptic import read_panoptic_png
    from crbp_detectron.data.demo import CATEGORIES, DemoParams, register_demo_datasets
    from crbp_detectron.data.demo import generate_demo_dataset

    params = DemoParams(train_images=2, val_images=3, seed=1)
    paths = generate_demo_dataset(str(tmp_path / "data"), params, progress=False)
    register_demo_datasets(str(tmp_path / "data"), params, progress=False)
    with open(paths["val"]["panoptic_json"]) as f:
        truth = json.load(f)["annotations"][:2]
    pictures = []  # the ground truth as each model's prediction
    for ann in truth:
        ids = read_panoptic_png(f"{paths['val']['panoptic_root']}/{ann['file_name']}")
        segments = [{"id": s["id"], "category_id": s["category_id"], "isthing": int(s["category_id"] < 10),
                     "rle": demo_compare._rle(ids == s["id"])} for s in ann["segments_info"]]
        pictures.append({"file_name": ann["file_name"].replace(".png", ".jpg"), "segments": segments})
    (tmp_path / "results" / "demo_compare").mkdir(parents=True)
    for model, pqs in (("feedforward", (60.0, 70.0)), ("crbp", (50.0, 50.0))):
        for seed, pq in enumerate(pqs):
            evaluation = {"panoptic_seg/PQ": pq, "panoptic_seg/PQ_th": pq - 10, "panoptic_seg/PQ_st": pq + 10,
                          "bbox/AP": 40.0, **{f"panoptic_seg/PQ/{c['name']}": float(c["id"]) for c in CATEGORIES}}
            run = {"model": model, "label": demo_compare.MODELS[model][1], "seed": seed, "iterations": 500,
                   "ims_per_batch": 4, "evaluation": evaluation, "instances_confidence_thresh": 0.5,
                   "trainable_parameters": 1234567, "saved_for_backward_bytes": 3 * 2 ** 20,
                   "seconds_per_iteration": 0.5, "inference_ms_per_image": 100.0, "pictures": pictures,
                   "command": f"python benchmarks/demo_compare.py --models {model}", "machine": "cpu: test",
                   "data": "test data", "training_wall_seconds": 60.0}
            (tmp_path / "results" / "demo_compare" / f"{model}_seed{seed}.json").write_text(json.dumps(run))
    demo_compare.write_report(str(tmp_path / "results"), paths)
    md = (tmp_path / "results" / "demo_compare.md").read_text()
    assert "python benchmarks/demo_compare.py --models crbp\npython benchmarks/demo_compare.py --models feedforward" in md
    rows = table_rows(md, [label for _, label in demo_compare.MODELS.values()])
    assert rows[0][:5] == ["Panoptic FPN (feed-forward)", "0, 1", "65.0 ± 7.1", "55.0 ± 7.1", "75.0 ± 7.1"]
    assert rows[1][:5] == ["C-RBP Panoptic FPN", "0, 1", "50.0 ± 0.0", "40.0 ± 0.0", "60.0 ± 0.0"]
    assert rows[1][6:8] == ["1,234,567", "3.0"]
    per_class = table_rows(md, [c["name"] for c in CATEGORIES])
    assert [r[0] for r in per_class] == [c["name"] for c in CATEGORIES]  # things first, then stuff
    assert all(r[1] == r[2] == f"{c['id']:.1f} ± 0.0" for r, c in zip(per_class, CATEGORIES))
    assert (tmp_path / "results" / "demo_compare.png").stat().st_size > 0


def test_train_and_measure_runs_each_missing_model_and_seed_once(tmp_path, monkeypatch):
    """The comparisons' shared run loop: models alternate within a seed, a run with its JSON is not
    trained again, each JSON records the measurement, the machine and what the caller adds, and the
    weights go unless --keep-models."""
    from benchmarks import demo_compare

    trained = []

    def fake_train(config, seed, run_dir, threads, opts):
        trained.append((config, seed, list(opts)))
        os.makedirs(run_dir, exist_ok=True)
        open(os.path.join(run_dir, "model_final.pth"), "w").close()
        return 12.0

    monkeypatch.setattr(demo_compare, "train", fake_train)
    models = {"a": ("a.yaml", "A"), "b": ("b.yaml", "B")}
    json_path = lambda results, model, seed: str(tmp_path / "results" / f"{model}_seed{seed}.json")  # noqa: E731
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "b_seed0.json").write_text("{}")  # already done
    args = argparse.Namespace(seeds=[0, 1], models=["a", "b"], threads=1, out=str(tmp_path / "runs"),
                              results=str(tmp_path / "results"), keep_models=False)
    demo_compare.train_and_measure(args, models, json_path, ["K", "V"],
                                   lambda model, seed, run_dir: {"model": model, "seed": seed}, command="cmd")
    assert trained == [("a.yaml", 0, ["K", "V"]), ("a.yaml", 1, ["K", "V"]), ("b.yaml", 1, ["K", "V"])]
    run = json.loads((tmp_path / "results" / "a_seed1.json").read_text())
    assert run["model"] == "a" and run["seed"] == 1 and run["command"] == "cmd"
    assert run["training_wall_seconds"] == 12.0 and run["machine"]
    assert json.loads((tmp_path / "results" / "b_seed0.json").read_text()) == {}
    assert not any(os.path.isfile(tmp_path / "runs" / f"{m}_seed{s}" / "model_final.pth") for m in "ab" for s in (0, 1))

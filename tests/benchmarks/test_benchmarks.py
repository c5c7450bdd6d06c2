"""The benchmark code paths at tiny sizes (seconds): tables written with the expected rows,
crbp's saved-for-backward bytes equal across steps, torchdeq's methods skipped when it is absent."""
import re
import sys

import pytest
import torch

from benchmarks import core_memory, recurrence
from benchmarks.exact_gradient import agreement, exact_implicit_gradient, method_gradient
from benchmarks.memory import peak_rss_in_subprocess
from benchmarks.methods import MethodSettings, build_method, split_methods, torchdeq_status
from crbp_detectron.tables import markdown_table


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
        "--sizes", "128x128", "--detections", "5", "--infer-configs", ff, "recurrent, 5 steps", "--repeats", "1",
        "--threads", "1", "--out", str(tmp_path)])
    train = results["train"][4]
    assert all(train[name]["rois_seen"] == [4] for name in (crbp, recorded)), train
    assert train[crbp]["saved_bytes"] < train[recorded]["saved_bytes"]
    assert train[crbp]["saved_by_module"]["roi_heads.mask_head"] < train[recorded]["saved_by_module"]["roi_heads.mask_head"]
    infer = results["infer"][(128, 128)][5]
    assert infer[ff]["rois_seen"] == [5] and infer["recurrent, 5 steps"]["rois_seen"] == [5]
    assert infer["recurrent, 5 steps"]["mask_head_flops"] > infer[ff]["mask_head_flops"] > 0
    md = (tmp_path / "model_cost.md").read_text()
    assert "python -m benchmarks.model_cost --workloads train infer" in md and "### Inference, 128x128" in md
    assert (tmp_path / "model_cost_infer.png").stat().st_size > 0

"""Cell evaluations each forward solver needs to reach a relative residual, on trained models (issue 27).

    python -m benchmarks.forward_solvers --demo-weights /tmp/demo/model_final.pth --threads 1
    python -m benchmarks.forward_solvers --report-only        # the table from forward_solvers.json

Models (their trained weights, float32, evaluation mode):
  pathfinder seed S   the trained Pathfinder tracing recipe (crbp_continued_twice_steps64: 3000
                      iterations, 64 steps) of seed S, its committed weights; the drive of test
                      contours of 14 paddles, in batches of 16 (the training batch): the cell's
                      BatchNorm normalises with the batch's statistics, so the samples of a batch are
                      coupled and the batch is solved together (no per-sample slicing).
  demo mask head      the demo's C-RBP mask head (32 channels, GroupNorm) with the weights of a
                      trained demo model (--demo-weights), on the RoI features of the detections its
                      model makes on the first --demo-images demo validation images; GroupNorm is
                      per RoI, so every RoI is its own problem.
Each solver runs from h = 0 for --budget evaluations (no tolerance); the map records, at every
evaluation, each sample's relative residual ||f(z) - z|| / ||f(z)||. A sample's count for a target
is the first evaluation whose residual is under it (the evaluation that tells a per-sample stop to
stop). Compared over the samples that both solvers bring under the target within the budget;
samples that one of them never brings there are counted beside.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional

import torch

from crbp_detectron.crbp import FixedPointMap, ForwardConfig, solve_forward
from crbp_detectron.utils.tables import markdown_table

from .machine import machine_info, machine_line
from .memory import PATHFINDER_PROJECT, REPO_ROOT, import_pathfinder_project
from .report import command_line, write_json

TARGETS = (1e-3, 1e-4)
SOLVERS = {
    "plain": ForwardConfig(),
    "anderson (window 5)": ForwardConfig("anderson", window=5),
    "anderson (window 10)": ForwardConfig("anderson", window=10),
}
PATHFINDER_RUN = os.path.join(PATHFINDER_PROJECT, "results", "experiment", "crbp_continued_twice_steps64")
RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results")


class ResidualRecorder(FixedPointMap):
    """The map, recording each sample's relative residual ||f(z) - z|| / ||f(z)|| per evaluation."""

    def __init__(self, cell, x):
        super().__init__(cell, x, sliceable=False)
        self.residuals: List[torch.Tensor] = []

    def __call__(self, z):
        out = super().__call__(z)
        size = (out - z).flatten(1).norm(dim=1)
        self.residuals.append(size / out.flatten(1).norm(dim=1).clamp_min(1e-30))
        return out


def first_under(residuals: List[torch.Tensor], target: float) -> List[Optional[int]]:
    """Per sample: the first evaluation (1-based) with residual <= target, None if none."""
    hit = torch.stack(residuals) <= target
    return [int(hit[:, i].nonzero()[0]) + 1 if bool(hit[:, i].any()) else None for i in range(hit.shape[1])]


@torch.no_grad()
def measure(cell, drives: List[torch.Tensor], budget: int) -> Dict[str, Dict[str, List[Optional[int]]]]:
    """{solver: {target: per-sample first evaluation under it}} over the batches `drives`."""
    out = {}
    for label, config in SOLVERS.items():
        counts = {str(t): [] for t in TARGETS}
        for x in drives:
            f = ResidualRecorder(cell, x)
            solve_forward(f, torch.zeros_like(x), budget, 0.0, config)
            for t in TARGETS:
                counts[str(t)] += first_under(f.residuals, t)
        out[label] = counts
        print(f"  {label}: " + ", ".join(f"{t}: {sum(v is not None for v in c)}/{len(c)} reached"
                                         for t, c in counts.items()), flush=True)
    return out


def pathfinder_problem(seed: int, images: int, data_root: str):
    import_pathfinder_project()
    from experiments.equilibrium import trained_model
    from experiments.runs import load_result
    from pathfinder.data import test_name, test_tensors

    result = load_result(os.path.join(PATHFINDER_RUN, f"seed{seed}.json"))
    model, cfg = trained_model(result, os.path.join(PATHFINDER_RUN, f"seed{seed}_model.pth"), data_root)
    batch = cfg.SOLVER.IMS_PER_BATCH
    pictures, _ = test_tensors(cfg, test_name(14), images)
    with torch.no_grad():
        drives = [model.front(chunk) for chunk in pictures.split(batch)]
    return model.recurrence.cell, drives


def demo_problem(weights: str, images: int):
    from .backward_solvers import demo_mask_head_inputs

    cell, features = demo_mask_head_inputs(weights, images)
    return cell, [torch.cat(features)]


# ----------------------------------------------------------------------------------- output
def summary_rows(results: Dict) -> List[list]:
    rows = []
    for model, by_solver in results["models"].items():
        plain = by_solver["plain"]
        for label in [s for s in by_solver if s != "plain"]:
            for target in map(str, TARGETS):
                p, a = plain[target], by_solver[label][target]
                both = [(x, y) for x, y in zip(p, a) if x is not None and y is not None]
                p_sum, a_sum = sum(x for x, _ in both), sum(y for _, y in both)
                rows.append([model, label, target, len(p), len(both),
                             p_sum / len(both) if both else None, a_sum / len(both) if both else None,
                             a_sum / p_sum if both else None,
                             sum(x is None for x in p), sum(y is None for y in a)])
    return rows


COLUMNS = ["model", "accelerated solver", "relative residual", "samples", "reached by both",
           "plain: evaluations (mean)", "accelerated: evaluations (mean)", "accelerated ÷ plain",
           "plain: not reached", "accelerated: not reached"]


def write_markdown(results: Dict, path: str):
    lines = ["# Forward solvers: cell evaluations to a relative residual, trained models", "",
             "Command (from the repository root):", "", "```", results["command"], "```", "",
             "`python -m benchmarks.forward_solvers --report-only` rebuilds this file from "
             "`forward_solvers.json`.", "", "Machine: " + results["machine"], "",
             __doc__.split("\n\n", 2)[2].strip(), "", f"Budget: {results['budget']} evaluations per solver.",
             "", markdown_table(COLUMNS, summary_rows(results)), ""]
    lines += results.get("notes", [])
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path}", flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["pathfinder", "demo"], choices=["pathfinder", "demo"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pathfinder-images", type=int, default=64)
    p.add_argument("--demo-weights", default=None, help="a trained demo checkpoint (model_final.pth)")
    p.add_argument("--demo-images", type=int, default=8)
    p.add_argument("--budget", type=int, default=400)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    json_path = os.path.join(args.out, "forward_solvers.json")
    md_path = os.path.join(args.out, "forward_solvers.md")
    if args.report_only:
        with open(json_path) as f:
            write_markdown(json.load(f), md_path)
        return
    torch.set_num_threads(args.threads)
    results = {"command": command_line("benchmarks.forward_solvers", argv), "budget": args.budget,
               "machine": machine_line(machine_info("cpu")), "models": {}}
    if "pathfinder" in args.models:
        for seed in args.seeds:
            print(f"== pathfinder seed {seed}", flush=True)
            cell, drives = pathfinder_problem(seed, args.pathfinder_images, os.environ.get("CRBP_PATHFINDER_DIR", ""))
            results["models"][f"pathfinder seed {seed}"] = measure(cell, drives, args.budget)
    if "demo" in args.models:
        if not args.demo_weights:
            raise SystemExit("the demo model needs --demo-weights (a trained demo checkpoint)")
        print("== demo mask head", flush=True)
        cell, drives = demo_problem(args.demo_weights, args.demo_images)
        results["models"]["demo mask head"] = measure(cell, drives, args.budget)
    write_json(json_path, results)
    write_markdown(results, md_path)


if __name__ == "__main__":
    main()

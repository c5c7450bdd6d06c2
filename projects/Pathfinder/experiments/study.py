"""Why does the contraction penalty stop C-RBP learning, and what recipe makes it learn?
Short seeded runs at the first round's scale (configs/study/Base-Pathfinder-32px.yaml:
32 px, contours of 3/5/7 paddles, where C-RBP came last of five models), each changing one thing.

    python -m experiments.study                       # every variant, 3 seeds (resumable)
    python -m experiments.study --variants paper rbp  # some
    python -m experiments.study --report-only         # tables and plots from the results

Writes projects/Pathfinder/results/study/<variant>/seed<k>.json (one run each),
projects/Pathfinder/results/pathfinder_study.md and pathfinder_study.png.
"""
import argparse
import os
import shlex
import sys
import time

from crbp_detectron.utils.tables import markdown_table

from . import report
from .runs import PROJECT, RESULTS_DIR, Run, execute_all, load_experiment

CONFIG = "study/Base-Pathfinder-32px.yaml"
EXPERIMENT = "study"
LENGTH = 7  # the longest trained contour: the study's measure
# name: (hypothesis tested, overrides of the base config)
VARIANTS = {
    "paper": ("the first round's recipe (the paper's Pathfinder LCP): lambda 0.9, mean over elements, "
              "weight 10, slow (chrono) update gate", []),
    "rbp": ("no penalty in the loss: is the penalty what stops learning?", ["MODEL.CRBP.MODE", "rbp"]),
    "weight_1": ("penalty weight 10 -> 1: is the penalty too strong against this task loss?",
                 ["MODEL.CRBP.PENALTY_WEIGHT", 1.0]),
    "weight_0.1": ("penalty weight 10 -> 0.1", ["MODEL.CRBP.PENALTY_WEIGHT", 0.1]),
    "warmup": ("penalty weight ramped from 0 over the first half of training",
               ["MODEL.CRBP.PENALTY_WARMUP_ITERS", "HALF"]),
    "delayed": ("penalty off for the first third, then ramped over the next third",
                ["MODEL.CRBP.PENALTY_WARMUP_DELAY", "THIRD", "MODEL.CRBP.PENALTY_WARMUP_ITERS", "THIRD"]),
    "lambda_0.99": ("lambda 0.9 -> 0.99: is the contraction target too strict?", ["MODEL.CRBP.LCP_LAMBDA", 0.99]),
    "neutral_gate": ("update gate starting half open (bias 0) instead of slow: does 1 - g ~ 1 at the start "
                     "keep the penalty active?", ["MODEL.CRBP.CELL.UPDATE_GATE_INIT", "neutral"]),
    "absolute": ("penalise |1^T J| (large negative column sums too)", ["MODEL.CRBP.LCP_ABSOLUTE", True]),
    "lr_0.001": ("learning rate 2e-3 -> 1e-3 (the paper's)", ["SOLVER.BASE_LR", 0.001]),
    "kernel_7_channels_16": ("more capacity: 7x7 kernels, 16 channels",
                             ["MODEL.CRBP.CELL.KERNEL_SIZE", 7, "PATHFINDER.MODEL.CHANNELS", 16]),
    "groupnorm": ("GroupNorm in the cell (statistics per image: no dependence on the batch)",
                  ["MODEL.CRBP.CELL.NORM", "GN", "MODEL.CRBP.CELL.NUM_GROUPS", 4]),
    "running_bn": ("BatchNorm with running statistics at test time", ["PATHFINDER.MODEL.CELL_BN_STATISTICS", "running"]),
}


def resolve_opts(opts, iterations):
    """Overrides with HALF / THIRD replaced by that fraction of the iterations."""
    fractions = {"HALF": iterations // 2, "THIRD": iterations // 3}
    return [fractions.get(o, o) if isinstance(o, str) else o for o in opts]


def runs_for(variants, seeds, iterations):
    out = []
    for name in variants:
        opts = resolve_opts(VARIANTS[name][1], iterations) + ["SOLVER.MAX_ITER", iterations]
        out += [Run(EXPERIMENT, name, seed, CONFIG, opts) for seed in seeds]
    return out


def gradient_table(variants, iterations: int, seeds=(0, 1, 2)) -> str:
    from pathfinder.config import load_pathfinder_config
    from pathfinder.engine import prepare_datasets

    from .gradients import gradient_balance

    rows = []
    for name in variants:
        cfg = load_pathfinder_config(CONFIG, resolve_opts(VARIANTS[name][1], iterations))
        prepare_datasets(cfg)
        found = [gradient_balance(cfg, seed) for seed in seeds]
        found = [b for b in found if b]
        if not found:
            rows.append([name, "no penalty in the loss", "", "", ""])
            continue
        rows.append([name, report.pm([b["penalty"] / b["task"] for b in found], 2),
                     report.pm([b["penalty_cell"] / b["task_cell"] for b in found], 2),
                     report.pm([b["cosine"] for b in found], 2), report.pm([b["cosine_cell"] for b in found], 2)])
    return markdown_table(["variant", "penalty / task gradient norm", "the same, cell parameters", "cosine",
                           "cosine, cell"], rows)


def write_report(command: str):
    found = load_experiment(EXPERIMENT)
    groups = {name: found[name] for name in VARIANTS if name in found}
    if not groups:
        print("no study results yet")
        return
    rows = []
    for name, runs in groups.items():
        results = list(runs.values())
        first = results[0]
        steps = first.get("steps") or 20
        at_horizon = [report.test_metric(r, LENGTH) for r in results]
        at_2x = [report.sweep_metric(r, LENGTH, 2 * steps) for r in results]
        ratio = [b / a for a, b in zip(at_horizon, at_2x) if a > 0]
        rows.append([
            name, len(results), first["train"]["iterations"], report.pm(at_horizon), report.pm(at_2x),
            report.pm(ratio, 2),
            report.pm([report.final_value(r, "loss_pixel") for r in results], 4),
            report.pm([report.final_value(r, report.block_stat(r, "max_column_sum")) for r in results], 2),
            report.pm([report.final_value(r, report.block_stat(r, "residual")) for r in results], 4),
            report.pm([report.final_value(r, report.block_stat(r, "backward_vjps")) for r in results], 1),
            report.pm([r["train"]["seconds_per_iteration"] for r in results], 2),
        ])
    table = markdown_table(
        ["variant", "seeds", "iterations", f"IoU L={LENGTH} at the horizon", "at 2x the horizon", "ratio",
         "final task loss", "final max column sum", "final residual", "backward VJPs", "s / iteration"], rows)
    hypotheses = markdown_table(["variant", "what it tests"], [[n, VARIANTS[n][0]] for n in groups])
    balance = gradient_table(list(groups), iterations=groups[next(iter(groups))][min(groups[next(iter(groups))])]["train"]["iterations"])
    png = os.path.join(RESULTS_DIR, "pathfinder_study.png")
    report.plot_curves(png, "Training-recipe study (32 px): every seed", groups,
                       [("loss_pixel", "task loss (focal)", True),
                        ("crbp/body/max_column_sum", "largest column sum of J", False),
                        ("crbp/body/residual", "forward residual at the last step", True)])
    md = os.path.join(RESULTS_DIR, "pathfinder_study.md")
    with open(md, "w") as f:
        f.write("# Pathfinder training-recipe study\n\nProduced by:\n\n```\n" + command + "\n```\n\n"
                "Results per run: `projects/Pathfinder/results/study/<variant>/seed<k>.json`; "
                "`--report-only` rebuilds this file and the plot. Mean ± sample standard deviation over "
                f"seeds. IoU on {LENGTH}-paddle test contours (300 images), pooled pixels; the training "
                "statistics are the mean of the last three logged values (every 20 iterations).\n\n"
                + hypotheses + "\n\n" + table + "\n\n![curves](pathfinder_study.png)\n\n"
                "## The penalty's pull at initialisation\n\nNorm of the gradient of the weighted penalty "
                "against the task loss's (ratio), over all parameters and over the recurrent cell's, and the "
                "cosine between the two gradients; one training batch of 32 images, at initialisation (seeds 0-2, "
                "`python -m experiments.gradients`). Schedules start at weight 0: their ratio is the one "
                "they reach when the ramp ends, at initial weights.\n\n" + balance + "\n")
    print(f"wrote {md}\n" + table)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--workers", type=int, default=2, help="runs at a time (one CPU thread each)")
    p.add_argument("--scratch", default=os.path.join(PROJECT, "output", "runs"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m experiments.study " + " ".join(shlex.quote(a) for a in argv if a != "--report-only")
    if not args.report_only:
        t0 = time.time()
        execute_all(runs_for(args.variants, args.seeds, args.iterations), args.scratch, args.workers)
        print(f"study runs: {(time.time() - t0) / 60:.1f} min", flush=True)
    write_report(command.strip())


if __name__ == "__main__":
    main()

"""The strongest baseline at equal iterations given more time: further warm-restart cycles of
1000 iterations from its 3000-iteration weights (each from the previous cycle's weights, a fresh
Adam and the same warm-up and cosine schedule), seed 0. Its time is counted in C-RBP's: iterations
x its cost per iteration relative to C-RBP's, measured side by side on one machine
(benchmarks/results/train_speed_pathfinder_table.json: `python -m benchmarks.train_speed --suite
pathfinder_table`), against C-RBP's 3000 iterations. (The runs' own seconds per iteration depend on
what else shared the CPU, so they are not compared.)

    python -m experiments.wall_clock --model cnn_continued_twice --cycles 4 12   # trains cycles 4..12
    python -m experiments.wall_clock --report-only

Runs: results/wall_clock/<model>_cycle<k>/seed0.json (+ weights); the report is a section of
results/pathfinder.md (python -m experiments.experiment --report-only).
"""
import argparse
import json
import os
import statistics

from .experiment import CYCLE, DEFAULT_MODELS, EXPERIMENT, LONGER_EVALUATION, MODEL_OPTS, MODELS, chain
from .runs import PROJECT, RESULTS_DIR, Run, execute, load_experiment

WALL_CLOCK = "wall_clock"
# evaluation only (no trained weight changes): the trained lengths and 18, no validation in between
EVALUATION = LONGER_EVALUATION + ["TEST.EVAL_PERIOD", 0]


SPEED = os.path.join(os.path.dirname(os.path.dirname(PROJECT)), "benchmarks", "results",
                     "train_speed_pathfinder_table.json")
# the table's models under their names in that benchmark
SPEED_NAMES = {"crbp_continued_twice_steps64": "C-RBP (crbp.yaml, 64 steps)",
               "rbp_continued_twice": "RBP, no penalty (rbp.yaml)",
               "cbptt_continued_twice": "C-BPTT-1 (cbptt.yaml)", "bptt_continued_twice": "BPTT-1 (bptt.yaml)",
               "bptt4_continued_twice": "BPTT-4", "bptt8_continued_twice": "BPTT-8", "cnn_continued_twice": "CNN (cnn.yaml)"}


def cost_ratio(model: str, speed_json: str = SPEED) -> float:
    """Median over the benchmark's rounds of (an iteration of `model`) / (one of C-RBP's)."""
    with open(speed_json) as f:
        times = json.load(f)["times"]
    base, own = times[SPEED_NAMES[DEFAULT_MODELS[0]]], times[SPEED_NAMES[model]]
    return statistics.median(a / b for a, b in zip(own, base))


def cycle_run(model: str, cycle: int, seed: int, results_dir: str) -> Run:
    """Cycle `cycle` (> len(chain(model))) of `model`, from the previous cycle's final weights."""
    first = len(chain(model)) + 1
    previous = (Run(EXPERIMENT, model, seed, "", results_dir=results_dir) if cycle == first
                else Run(WALL_CLOCK, f"{model}_cycle{cycle - 1}", seed, "", results_dir=results_dir))
    weights = os.path.relpath(previous.weights_path(), PROJECT)
    opts = list(MODEL_OPTS.get(model, CYCLE)) + EVALUATION + ["MODEL.WEIGHTS", weights]
    return Run(WALL_CLOCK, f"{model}_cycle{cycle}", seed, MODELS[model][1], opts, results_dir)


def rows(model: str, results_dir: str = RESULTS_DIR, seed: int = 0):
    """[(cycles, iterations, results)] of `model`'s chain and its further cycles (seed `seed`)."""
    table = load_experiment(EXPERIMENT, results_dir)
    further = load_experiment(WALL_CLOCK, results_dir)
    out = [(cycle, cycle * 1000, table[link][seed]) for cycle, link in enumerate(chain(model), 1)]
    cycle = len(out) + 1
    while seed in further.get(f"{model}_cycle{cycle}", {}):
        out.append((cycle, cycle * 1000, further[f"{model}_cycle{cycle}"][seed]))
        cycle += 1
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn_continued_twice", choices=list(DEFAULT_MODELS))
    p.add_argument("--cycles", nargs=2, type=int, metavar=("FIRST", "LAST"), default=[4, 12])
    p.add_argument("--scratch", default=os.path.join(PROJECT, "output", "runs"))
    p.add_argument("--results", default=RESULTS_DIR)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if not args.report_only:
        for cycle in range(args.cycles[0], args.cycles[1] + 1):
            execute(cycle_run(args.model, cycle, 0, args.results), args.scratch, keep_weights=True)
    for cycle, iterations, result in rows(args.model, args.results):
        print(cycle, iterations, {k: round(v["iou"], 3) for k, v in result["test"].items()}, flush=True)


if __name__ == "__main__":
    main()

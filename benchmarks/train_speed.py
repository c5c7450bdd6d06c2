"""Seconds per training iteration of models side by side, in one process (issue 27).

    python -m benchmarks.train_speed --suite demo --iterations 40 --threads 2
    python -m benchmarks.train_speed --suite pathfinder --iterations 30 --threads 1
    python -m benchmarks.train_speed --report-only       # the tables from train_speed_*.json

Suites (each model built from its config; its optimizer the trainer's, at the config's learning
rate x --lr-scale, no schedule: timing only):
  demo        the demo's feed-forward Panoptic FPN against the C-RBP one (configs/demo/), and
              variants of the C-RBP one; random initialisation (seed 0), as `make demo` trains.
  pathfinder  the tracing recipe (projects/Pathfinder study/crbp_continued_twice_steps64.yaml) with the plain
              forward against its accelerated-forward twin (study/crbp_anderson_*), both
              from the committed seed-0 weights of the trained tracing recipe (3000 iterations:
              the dynamics the last cycle of training sees).
  pathfinder_table  the Pathfinder table's models (projects/Pathfinder/configs), random
              initialisation: each baseline's iteration against C-RBP's.
  softplus    the tracing recipe (crbp.yaml) and RBP (rbp.yaml) from the committed seed-0 weights,
              each with ATen's softplus in every cell evaluation (as before the graph-free
              formula, crbp/cells.py: softplus) and as they run now.
  compiled    the tracing recipe from the committed seed-0 weights: ATen's softplus everywhere
              (before), as it runs now, and with MODEL.CRBP.FORWARD.COMPILE (the graph-free
              evaluations through torch.compile; compiled in the warm-up iterations).
Every model gets the same batches (loaded before timing: data loading is not counted) and they
train round-robin, one iteration of each in turn (benchmarks.timing.time_interleaved), so that the
shared machine's load falls on all alike. An iteration: forward, summed losses, backward,
optimizer step. Reported: the median seconds per iteration after --warmup iterations, and the
median over rounds of each model's time / the first model's in the same round (paired ratio).
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import torch

from crbp_detectron.crbp.cells import softplus
from crbp_detectron.utils.tables import markdown_table

from .machine import machine_info, machine_line
from .memory import PATHFINDER_PROJECT, REPO_ROOT, import_pathfinder_project
from .report import command_line, write_json
from .timing import median, paired_ratio, time_interleaved

PATHFINDER_WEIGHTS = os.path.join(PATHFINDER_PROJECT, "results", "experiment", "crbp_continued_twice_steps64",
                                  "seed0_model.pth")
# suite: {model: (config, overrides)}; the first model is the baseline of the ratios.
SUITES: Dict[str, Dict[str, Tuple[str, list]]] = {
    "demo": {
        "feed-forward Panoptic FPN": ("demo/panoptic_fpn_demo.yaml", []),
        "C-RBP (demo recipe: 6 steps, 15 VJPs)": ("demo/panoptic_crbp_demo.yaml", []),
        "C-RBP, 5 VJPs": ("demo/panoptic_crbp_demo.yaml", ["MODEL.CRBP.BACKWARD.MAX_VJPS", 5]),
        "C-RBP, implicit step in chunks of 4 RoIs": ("demo/panoptic_crbp_demo.yaml", ["MODEL.CRBP.IMPLICIT_CHUNK", 4]),
        # what the LCP's double backward costs, and the two levers together
        "RBP (the demo recipe without the penalty)": ("demo/panoptic_crbp_demo.yaml", ["MODEL.CRBP.MODE", "rbp"]),
        "RBP, 5 VJPs": ("demo/panoptic_crbp_demo.yaml", ["MODEL.CRBP.MODE", "rbp", "MODEL.CRBP.BACKWARD.MAX_VJPS", 5]),
    },
    "pathfinder": {
        "C-RBP, plain forward (tracing recipe, 64 steps)": ("study/crbp_continued_twice_steps64.yaml", []),
        "C-RBP, Anderson forward (<= 64 evaluations, TOL 1e-3)":
            ("study/crbp_anderson_continued_twice_steps64.yaml", []),
    },
    # the Pathfinder table's models from their one-command configs, random initialisation: what
    # an iteration of each costs against C-RBP's (the baselines' budget at C-RBP's wall-clock time)
    "pathfinder_table": {
        "C-RBP (crbp.yaml, 64 steps)": ("crbp.yaml", []),
        "RBP, no penalty (rbp.yaml)": ("rbp.yaml", []),
        "C-BPTT-1 (cbptt.yaml)": ("cbptt.yaml", []),
        "BPTT-1 (bptt.yaml)": ("bptt.yaml", []),
        "BPTT-4": ("bptt.yaml", ["MODEL.CRBP.STEPS", 4]),
        "BPTT-8": ("bptt.yaml", ["MODEL.CRBP.STEPS", 8]),
        "CNN (cnn.yaml)": ("cnn.yaml", []),
    },
    "softplus": {
        "C-RBP (crbp.yaml), ATen softplus everywhere (before)": ("crbp.yaml", []),
        "C-RBP (crbp.yaml)": ("crbp.yaml", []),
        "RBP (rbp.yaml), ATen softplus everywhere (before)": ("rbp.yaml", []),
        "RBP (rbp.yaml)": ("rbp.yaml", []),
    },
}
SUITES["compiled"] = {
    "C-RBP (crbp.yaml), ATen softplus everywhere (before)": ("crbp.yaml", []),
    "C-RBP (crbp.yaml)": ("crbp.yaml", []),
    "C-RBP (crbp.yaml), compiled forward": ("crbp.yaml", ["MODEL.CRBP.FORWARD.COMPILE", True]),
}
# models whose cells evaluate ATen's softplus in graph-free steps too (the cells' code before)
ATEN_SOFTPLUS = {name for suite in ("softplus", "compiled") for name in SUITES[suite] if name.endswith("(before)")}


def _demo_model(config: str, opts: list, lr_scale: float):
    from detectron2.modeling import build_model

    from crbp_detectron.config import load_config
    from crbp_detectron.data.demo import register_demo_datasets
    from crbp_detectron.engine import Trainer

    register_demo_datasets(progress=False)
    cfg = load_config(config, list(opts) + ["MODEL.WEIGHTS", "", "DATALOADER.NUM_WORKERS", 0])
    cfg.defrost()
    cfg.SOLVER.BASE_LR *= lr_scale
    torch.manual_seed(0)
    model = build_model(cfg).train()
    return model, Trainer.build_optimizer(cfg, model), Trainer.build_train_loader(cfg)


def _pathfinder_model(config: str, opts: list, lr_scale: float, weights: Optional[str] = PATHFINDER_WEIGHTS):
    import_pathfinder_project()
    from pathfinder.config import load_pathfinder_config
    from pathfinder.engine import PathfinderTrainer, prepare_datasets

    cfg = load_pathfinder_config(config, list(opts))
    cfg.SOLVER.BASE_LR *= lr_scale
    prepare_datasets(cfg)
    torch.manual_seed(0)
    model = PathfinderTrainer.build_model(cfg)
    if weights:
        model.load_state_dict(torch.load(weights, weights_only=True))
    return model.train(), PathfinderTrainer.build_optimizer(cfg, model), PathfinderTrainer.build_train_loader(cfg)


def training_steps(suite: str, names: List[str], iterations: int, lr_scale: float):
    """({model: a callable running its next training iteration, each on the same batches},
    {model: its EventStorage, where its recurrent blocks' statistics go})."""
    from detectron2.utils.events import EventStorage

    from crbp_detectron.crbp import HGRUCell

    build = {"demo": _demo_model, "pathfinder": _pathfinder_model, "softplus": _pathfinder_model,
             "compiled": _pathfinder_model, "pathfinder_table": lambda *a: _pathfinder_model(*a, weights=None)}[suite]
    steps, storages, batches = {}, {}, None
    for name in names:
        config, opts = SUITES[suite][name]
        model, optimizer, loader = build(config, opts, lr_scale)
        if name in ATEN_SOFTPLUS:
            for cell in model.modules():
                if isinstance(cell, HGRUCell) and cell.eta is softplus:
                    cell.eta = torch.nn.functional.softplus
        if batches is None:
            stream = iter(loader)
            batches = [next(stream) for _ in range(iterations)]

        storages[name] = EventStorage()

        def step(model=model, optimizer=optimizer, storage=storages[name], position=[0]):
            batch = batches[position[0] % len(batches)]
            position[0] += 1
            with storage:
                loss = sum(model(batch).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        steps[name] = step
    return steps, storages


def forward_evaluations(storage) -> Optional[float]:
    """Median over iterations of the cell evaluations per sample of the model's recurrent blocks
    (summed over blocks), None without one."""
    keys = [k for k in storage.histories() if k.endswith("/evaluations")]
    if not keys:
        return None
    per_iteration = [sum(v) for v in zip(*[[x for x, _ in storage.history(k).values()] for k in keys])]
    return median(per_iteration)


def write_markdown(results: Dict, path: str):
    names = list(results["times"])
    base = results["times"][names[0]]
    evaluations = results.get("evaluations", {})
    rows = [[name, median(ts), paired_ratio(ts, base), evaluations.get(name), len(ts)]
            for name, ts in results["times"].items()]
    lines = [f"# Seconds per training iteration, side by side: {results['suite']}", "",
             "Command (from the repository root):", "", "```", results["command"], "```", "",
             "`python -m benchmarks.train_speed --report-only` rebuilds this file from its JSON.", "",
             "Machine: " + results["machine"], "", __doc__.split("\n\n", 2)[2].strip(), "",
             markdown_table(["model", "s / iteration (median)", f"÷ {names[0]} (paired, median)",
                             "cell evaluations per sample (forward, median)", "iterations timed"], rows), ""]
    with open(path, "w") as f:
        f.write("\n".join(lines + results.get("notes", [])) + "\n")
    print(f"wrote {path}\n" + "\n".join(lines[-2:]), flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="demo")
    p.add_argument("--models", nargs="+", default=None, help="a subset of the suite's models (the first: the baseline)")
    p.add_argument("--iterations", type=int, default=30, help="timed iterations per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--lr-scale", type=float, default=0.01,
                   help="x the config's learning rate: no warm-up schedule here, and a diverging model would time NaNs")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results"))
    args = p.parse_args(argv)
    json_path = os.path.join(args.out, f"train_speed_{args.suite}.json")
    md_path = os.path.join(args.out, f"train_speed_{args.suite}.md")
    if args.report_only:
        for suite in sorted(SUITES):
            path = os.path.join(args.out, f"train_speed_{suite}.json")
            if os.path.exists(path):
                with open(path) as f:
                    write_markdown(json.load(f), path[:-len(".json")] + ".md")
        return
    torch.set_num_threads(args.threads)
    names = args.models or list(SUITES[args.suite])
    machine = machine_line(machine_info("cpu"))
    steps, storages = training_steps(args.suite, names, args.iterations + args.warmup, args.lr_scale)
    times = time_interleaved(steps, args.iterations, warmup=args.warmup)
    try:
        load = f"; load average (1 min) at the end: {os.getloadavg()[0]:.2f}"
    except OSError:
        load = ""
    results = {"suite": args.suite, "command": command_line("benchmarks.train_speed", argv),
               "machine": machine + load, "times": {n: times[n] for n in names},
               "evaluations": {n: forward_evaluations(storages[n]) for n in names}}
    write_json(json_path, results)
    write_markdown(results, md_path)


if __name__ == "__main__":
    main()

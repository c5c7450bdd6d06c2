"""Inference that stops when each RoI has converged: recurrent steps used and PQ on the trained demo
model, against fixed-step inference (issue 12, item 2).

    python -m benchmarks.early_stop --weights output/demo/model_final.pth --threads 1

For each setting the demo validation set is evaluated by Detectron2's COCO panoptic evaluator
(Trainer.test: what `tools/train_net.py --eval-only` runs) while hooks on the mask head's
recurrent block count, per forward, the RoIs and the iterations each ran (RecurrenceStats.mean_steps
with a tolerance; every RoI runs all steps without one). Settings: fixed test steps, and the
per-sample stop (MODEL.CRBP.TOL: estimated relative distance to the fixed point, see
crbp_detectron/crbp/solver.py) with a cap of --cap steps.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

from crbp_detectron.utils.tables import markdown_table

from .machine import machine_info, machine_line
from .memory import REPO_ROOT
from .report import command_line

DEMO_CONFIG = "demo/panoptic_crbp_demo.yaml"


class StepCounter:
    """RoIs and iterations of the mask head's recurrent block over an evaluation."""

    def __init__(self, model):
        self.model, self.rois, self.iterations, self.max_steps, self.converged = model, 0, 0.0, 0, 0.0
        self.block = model.roi_heads.mask_head.recurrence
        self._pending = 0
        self.handles = [
            self.block.register_forward_pre_hook(lambda _m, args: setattr(self, "_pending", int(args[0].shape[0]))),
            model.register_forward_hook(lambda *_: self._collect())]

    def close(self):
        for handle in self.handles:
            handle.remove()

    def _collect(self):
        summary = (self.model.last_recurrence or {}).get("roi_heads.mask_head")
        if summary is None or not summary.stats or not self._pending:
            return
        s = summary.stats[-1]
        mean = s.mean_steps if s.mean_steps is not None else s.steps
        self.rois += self._pending
        self.iterations += mean * self._pending
        self.max_steps = max(self.max_steps, s.steps)
        self.converged += (s.converged_fraction or 0.0) * self._pending
        self._pending = 0


def evaluate(cfg, model, tol: float, steps: int):
    from crbp_detectron.engine import Trainer

    block = model.roi_heads.mask_head.recurrence
    block.tol, block.test_steps = tol, steps
    counter = StepCounter(model)
    t0 = time.perf_counter()
    results = Trainer.test(cfg, model)["panoptic_seg"]
    seconds = time.perf_counter() - t0
    counter.close()
    rois = max(counter.rois, 1)
    return {"tol": tol, "cap": steps, "PQ": results["PQ"], "PQ_th": results["PQ_th"], "PQ_st": results["PQ_st"],
            "rois": counter.rois, "mean_steps": counter.iterations / rois, "max_steps": counter.max_steps,
            "converged": counter.converged / rois if tol > 0 else None, "seconds": seconds}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="a trained demo checkpoint")
    p.add_argument("--config-file", default=DEMO_CONFIG, help="the config the checkpoint was trained with")
    p.add_argument("--fixed", type=int, nargs="+", default=[6, 20])
    p.add_argument("--tols", type=float, nargs="+", default=[1e-2, 3e-3, 1e-3, 1e-4])
    p.add_argument("--cap", type=int, default=20)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from detectron2.checkpoint import DetectionCheckpointer

    from crbp_detectron.config import load_config
    from crbp_detectron.data.demo import register_demo_datasets
    from crbp_detectron.engine import Trainer

    register_demo_datasets(progress=False)
    cfg = load_config(args.config_file, ["MODEL.WEIGHTS", args.weights, "OUTPUT_DIR", tempfile.mkdtemp()])
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(args.weights)
    model.eval()
    rows = [evaluate(cfg, model, 0.0, n) for n in args.fixed] + [evaluate(cfg, model, t, args.cap) for t in args.tols]
    info = machine_info("cpu")
    reference = rows[0]
    table = [["fixed" if r["tol"] == 0 else f"tol {r['tol']:g}", r["cap"], r["PQ"], r["PQ"] - reference["PQ"],
              r["PQ_th"], r["PQ_st"], r["rois"], r["mean_steps"], r["max_steps"], r["converged"], r["seconds"]]
             for r in rows]
    lines = ["# Per-sample early stop at inference: steps and PQ on the demo model", "",
             "Command (from the repository root):", "", "```", command_line("benchmarks.early_stop", argv),
             "```", "", "Machine: " + machine_line(info) + " (shared: times are indicative).", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             f"Config `{args.config_file}`, trained with {cfg.MODEL.CRBP.STEPS} steps; PQ differences are against fixed {reference['cap']} steps.", "",
             markdown_table(["setting", "steps (cap)", "PQ", "Δ PQ", "PQ_th", "PQ_st", "RoIs",
                                    "steps per RoI (mean)", "steps (max)", "RoIs converged", "eval (s)"], table), ""]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "early_stop.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines[-3:]), flush=True)


if __name__ == "__main__":
    main()

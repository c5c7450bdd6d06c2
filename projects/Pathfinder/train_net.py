#!/usr/bin/env python
"""Train and evaluate a Pathfinder (contour tracing) model on the project's Detectron2 engine.

    python projects/Pathfinder/train_net.py --config-file crbp.yaml
    python projects/Pathfinder/train_net.py --config-file bptt.yaml SOLVER.MAX_ITER 100 OUTPUT_DIR out/bptt
    python projects/Pathfinder/train_net.py --config-file crbp.yaml --eval-only \
        MODEL.WEIGHTS out/crbp/cycle3/model_final.pth MODEL.CRBP.TEST_STEPS 128

Configs are Detectron2 configs (`_BASE_` chains, trailing KEY VALUE overrides), named by path or
under projects/Pathfinder/configs: MODEL.CRBP for the recurrent block, PATHFINDER.* for the data
and model, SOLVER.* for each training cycle (PATHFINDER.CYCLES of them, warm restarts). OUTPUT_DIR
gets Detectron2's metrics.json and checkpoints (per cycle in cycle<k>/ when there are several;
--resume continues; SIGTERM/SIGINT checkpoints and exits with 128 + the signal) and results.json:
IoU / F1 / precision / recall / balanced accuracy per contour length, IoU against test-time steps,
training memory, the learning curve. Data are generated on first use and cached
(PATHFINDER.DATA.ROOT, or $CRBP_PATHFINDER_DIR, or ~/.cache/crbp_detectron/pathfinder).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spin-wait thrash on shared CPUs

import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser

import crbp_detectron  # noqa: F401  (registers the components)
from crbp_detectron.engine import Preempted, launch_from_args
from pathfinder.engine import PathfinderTrainer, cycle_dirs, final_report, setup, train_in_cycles


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = setup(args)
    if args.eval_only:
        model = PathfinderTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return final_report(cfg, model)
    current = []
    try:
        trainer = train_in_cycles(cfg, resume=args.resume, on_trainer=current.append)
    except Preempted as e:
        print(f"Preempted: {e}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except FloatingPointError as e:
        # The guarded step stopped a diverging run before its last update: its weights are the last
        # good ones. For an experiment that is a result (this recipe diverges), reported as such.
        trainer = current[-1]
        iteration = trainer.iter + cycle_dirs(cfg).index(trainer.cfg.OUTPUT_DIR) * cfg.SOLVER.MAX_ITER
        print(f"Training stopped at iteration {iteration}: {e}", file=sys.stderr, flush=True)
        return final_report(cfg, trainer.model, stopped={"iteration": iteration, "reason": str(e)})
    return final_report(cfg, trainer.model)


def parser():
    p = default_argument_parser()
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


if __name__ == "__main__":
    launch_from_args(main, parser().parse_args())

#!/usr/bin/env python
"""Train and evaluate a Pathfinder (contour tracing) model on the project's Detectron2 engine.

    python tools/train_pathfinder.py --config-file pathfinder/crbp.yaml
    python tools/train_pathfinder.py --config-file pathfinder/bptt.yaml SOLVER.MAX_ITER 100 OUTPUT_DIR out/bptt
    python tools/train_pathfinder.py --config-file pathfinder/crbp.yaml --eval-only \
        MODEL.WEIGHTS out/crbp/model_final.pth MODEL.CRBP.TEST_STEPS 40

Configs are Detectron2 configs (`_BASE_` chains, trailing KEY VALUE overrides): MODEL.CRBP for the
recurrent block, PATHFINDER.* for the data and model, SOLVER.* for training. OUTPUT_DIR gets
Detectron2's metrics.json, checkpoints (--resume continues; SIGTERM/SIGINT checkpoints and exits
with 128 + the signal) and results.json: IoU / F1 / precision / recall / balanced accuracy per
contour length, IoU against test-time steps, training memory, the learning curve. Data are
generated on first use and cached (PATHFINDER.DATA.ROOT, or $CRBP_PATHFINDER_DIR, or
~/.cache/crbp_detectron/pathfinder).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spin-wait thrash on shared CPUs

import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser

import crbp_detectron  # noqa: F401  (registers the components)
from crbp_detectron.engine import Preempted, launch_from_args
from crbp_detectron.pathfinder.engine import PathfinderTrainer, final_report, setup


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = setup(args)
    if args.eval_only:
        model = PathfinderTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return final_report(cfg, model)
    trainer = PathfinderTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    try:
        trainer.train()
    except Preempted as e:
        print(f"Preempted: {e}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except FloatingPointError as e:
        # The guarded step stopped a diverging run before its last update: its weights are the last
        # good ones. For an experiment that is a result (this recipe diverges), reported as such.
        print(f"Training stopped at iteration {trainer.iter}: {e}", file=sys.stderr, flush=True)
        return final_report(cfg, trainer.model, stopped={"iteration": trainer.iter, "reason": str(e)})
    return final_report(cfg, trainer.model)


def parser():
    p = default_argument_parser()
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


if __name__ == "__main__":
    launch_from_args(main, parser().parse_args())

#!/usr/bin/env python
"""Train or evaluate a C-RBP model with Detectron2's engine.

    python tools/train_net.py --config-file panoptic_crbp.yaml --num-gpus 8
    python tools/train_net.py --config-file panoptic_crbp.yaml --eval-only MODEL.WEIGHTS model.pth
    python tools/train_net.py --config-file panoptic_crbp.yaml --eval-only --test-steps 5 10 20 30 \
        MODEL.WEIGHTS model.pth          # PQ against test-time steps (CSV + PNG)
    torchrun --nproc_per_node 4 tools/train_net.py --config-file ... MODEL.DEVICE cpu   # CPU, gloo

SIGTERM/SIGINT saves a checkpoint at the current iteration and exits (128 + signal number);
--resume continues from it with the same schedule and data stream (from the newest readable
checkpoint, if the latest is damaged). Under torchrun, `python -m crbp_detectron.engine.launch` exits
143 on preemption too (torchrun itself exits 1). A bad config, dataset or weights file stops at
start-up with "error: ..." naming it, and exit status 2.

Your own COCO-format panoptic data: --dataset NAME IMAGE_ROOT PANOPTIC_ROOT PANOPTIC_JSON (repeatable)
registers it as NAME_separated (datasets/README.md), e.g.
    python tools/train_net.py --config-file panoptic_crbp.yaml --dataset mine_train imgs/ pngs/ panoptic.json \
        DATASETS.TRAIN "('mine_train_separated',)" DATASETS.TEST "()" MODEL.ROI_HEADS.NUM_CLASSES ...

--config-file takes a path, a config packaged with crbp_detectron (e.g. panoptic_crbp.yaml,
COCO-PanopticSegmentation/panoptic_crbp_R_50_1x.yaml) or a Detectron2 model-zoo name.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spin-wait thrash on shared CPUs

import sys

from detectron2.engine import default_argument_parser

import crbp_detectron  # noqa: F401  (registers the components)
from crbp_detectron.checkpoint import Checkpointer, CheckpointError
from crbp_detectron.config import ConfigError
from crbp_detectron.data.coco_panoptic import DatasetError
from crbp_detectron.engine import Preempted, Trainer, add_dataset_argument, launch_from_args, setup
from crbp_detectron.evaluation.test_steps import sweep_test_steps

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, FileNotFoundError)


def main(args):
    try:
        return run(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def run(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        Checkpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        if args.test_steps:
            return sweep_test_steps(cfg, model, args.test_steps, os.path.join(cfg.OUTPUT_DIR, "test_steps"))
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.checkpointer.keep_only_latest = args.keep_only_latest_checkpoint
    trainer.resume_or_load(resume=args.resume)
    try:
        return trainer.train()
    except Preempted as e:
        print(f"Preempted: {e}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)


def parser():
    p = default_argument_parser()
    p.add_argument("--test-steps", type=int, nargs="+", default=None,
                   help="with --eval-only: evaluate at each of these test-time recurrent step counts")
    add_dataset_argument(p)
    p.add_argument("--keep-only-latest-checkpoint", action="store_true",
                   help="keep one checkpoint on disk (what --resume needs); a finished run leaves only model_final.pth")
    return p


if __name__ == "__main__":
    launch_from_args(main, parser().parse_args())

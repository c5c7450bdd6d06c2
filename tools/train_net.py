#!/usr/bin/env python
"""Train or evaluate a C-RBP model with Detectron2's engine.

    python tools/train_net.py --config-file panoptic_crbp.yaml --num-gpus 8
    python tools/train_net.py --config-file panoptic_crbp.yaml --eval-only MODEL.WEIGHTS model.pth
    python tools/train_net.py --config-file panoptic_crbp.yaml --eval-only --test-steps 5 10 20 30 \
        MODEL.WEIGHTS model.pth          # PQ against test-time steps (CSV + PNG)

--config-file takes a path, a config packaged with crbp_detectron (e.g. panoptic_crbp.yaml,
COCO-PanopticSegmentation/panoptic_crbp_R_50_1x.yaml) or a Detectron2 model-zoo name.
"""
import os

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch

import crbp_detectron  # noqa: F401  (registers the components)
from crbp_detectron.engine import Trainer, setup, sweep_test_steps


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        if args.test_steps:
            return sweep_test_steps(cfg, model, args.test_steps, os.path.join(cfg.OUTPUT_DIR, "test_steps"))
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parser():
    p = default_argument_parser()
    p.add_argument("--test-steps", type=int, nargs="+", default=None,
                   help="with --eval-only: evaluate at each of these test-time recurrent step counts")
    return p


if __name__ == "__main__":
    args = parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))

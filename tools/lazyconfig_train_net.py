#!/usr/bin/env python
"""Train or evaluate a C-RBP model from a LazyConfig (.py config) on Detectron2's engine.

    python tools/lazyconfig_train_net.py --config-file COCO-PanopticSegmentation/panoptic_crbp_R_50_1x.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file COCO-PanopticSegmentation/panoptic_crbp_R_50_1x.py \
        --eval-only train.init_checkpoint=output/model_final.pth
    ... train.device=cpu model.roi_heads.mask_head.recurrence.steps=10     # overrides: key=value

--config-file takes a path, a .py config packaged with crbp_detectron or a Detectron2 model-zoo
name; the demo data (crbp_demo_{train,val}_separated) is generated and registered when named. The
same components as tools/train_net.py (YAML configs), built by `instantiate`; the same guarded step
(train.amp.enabled, no non-finite loss or exploding gradient reaches the weights) and atomic
checkpoints as there.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spin-wait thrash on shared CPUs

import logging

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

import crbp_detectron  # noqa: F401  (registers the components)
from crbp_detectron.checkpoint import Checkpointer
from crbp_detectron.config import resolve_config_file
from crbp_detectron.data.demo import DEMO_DATASETS, register_demo_datasets
from crbp_detectron.engine import launch_from_args
from crbp_detectron.engine.train_loop import GradientGuard, GuardedTrainer

logger = logging.getLogger("detectron2.crbp")


def evaluate(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    print_csv_format(results)
    return results


def train(cfg, resume: bool):
    model = instantiate(cfg.model).to(cfg.train.device)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    model = create_ddp_model(model, **cfg.train.ddp)
    data = instantiate(cfg.dataloader.train)
    trainer = GuardedTrainer(model, data, optimizer, amp=cfg.train.amp.enabled, gradient_guard=GradientGuard())
    checkpointer = Checkpointer(model, cfg.train.output_dir, trainer=trainer)
    main = comm.is_main_process()
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: evaluate(cfg, model)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if main else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    args.config_file = resolve_config_file(args.config_file)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    names = [cfg.dataloader.train.dataset.names, cfg.dataloader.test.dataset.names]
    if any(n.startswith(DEMO_DATASETS) for name in names for n in ([name] if isinstance(name, str) else name)):
        register_demo_datasets(progress=comm.is_main_process())  # the embedded demo data (COCO: built in)
    if not args.eval_only:
        return train(cfg, args.resume)
    model = instantiate(cfg.model).to(cfg.train.device)
    Checkpointer(model).load(cfg.train.init_checkpoint)
    return evaluate(cfg, create_ddp_model(model))


if __name__ == "__main__":
    launch_from_args(main, default_argument_parser().parse_args())

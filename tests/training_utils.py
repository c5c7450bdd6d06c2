"""Tiny training runs on the demo data for the reliability tests: options, a run, weights, hooks."""
import logging
import os
import signal

import torch
from detectron2.engine import HookBase

from crbp_detectron.data.demo import DemoParams
from crbp_detectron.engine import Trainer

from .modeling.utils import tiny_demo_opts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = DemoParams(train_images=12, val_images=2, image_size=64, min_object_size=10, max_object_size=24)


def tiny_opts(out, **extra):
    """The demo config shrunk to seconds: 6 iterations of 2 images, no evaluation, seed 7.
    extra: KEY__SUB=value overrides."""
    opts = tiny_demo_opts()
    opts += ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.RANDOM_FLIP", "none",
             "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01",
             "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(4,)", "SOLVER.MAX_ITER", "6",
             "SOLVER.CHECKPOINT_PERIOD", "1000", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out), "SEED", "7"]
    for key, value in extra.items():
        opts += [key.replace("__", "."), str(value)]
    return opts


def train(cfg, resume=False, hooks=(), trainer_class=Trainer):
    torch.manual_seed(0)  # same initial weights in every run (the CLI's default_setup does this)
    trainer = trainer_class(cfg)
    trainer.register_hooks(list(hooks))
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


class SignalAt(HookBase):
    """Sends this process a signal after the step of the given iteration."""

    def __init__(self, iteration, signum=signal.SIGTERM):
        self.iteration, self.signum = iteration, signum

    def after_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.signum)


class CapturedLog(logging.Handler):
    """Collects what `detectron2.crbp` logs (Detectron2's logger does not propagate to pytest's caplog)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def text(self):
        return "\n".join(self.lines)

    def __enter__(self):
        logging.getLogger("detectron2.crbp").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("detectron2.crbp").removeHandler(self)

"""The trainer's own Detectron2 hooks: the contraction penalty's schedule and the ranks' replica
check. (Preemption and the training state have theirs in preemption.py and training_state.py.)"""
import logging

import detectron2.utils.comm as comm
import torch
from detectron2.engine import HookBase

from ..crbp import penalty_schedule_scale, set_penalty_scale

logger = logging.getLogger("detectron2.crbp")


class PenaltyScheduleHook(HookBase):
    """MODEL.CRBP.PENALTY_WARMUP_DELAY and PENALTY_WARMUP_ITERS: sets every recurrent block's
    penalty scale before each iteration, and logs it."""

    def __init__(self, warmup_iters: int, delay_iters: int = 0):
        self.warmup_iters, self.delay_iters = warmup_iters, delay_iters

    @classmethod
    def from_config(cls, cfg):
        """The hook a config asks for, or None (constant weight)."""
        c = cfg.MODEL.CRBP
        if c.PENALTY_WARMUP_ITERS == 0 and c.PENALTY_WARMUP_DELAY == 0:
            return None
        return cls(c.PENALTY_WARMUP_ITERS, c.PENALTY_WARMUP_DELAY)

    def before_step(self):
        scale = penalty_schedule_scale(self.trainer.iter, self.warmup_iters, self.delay_iters)
        set_penalty_scale(self.trainer.model, scale)
        self.trainer.storage.put_scalar("crbp/penalty_scale", scale, smoothing_hint=False)


class ReplicaConsistencyHook(HookBase):
    """At the end of multi-process training, checks that every rank holds the same parameters
    (DDP's all-reduce keeps them equal; a rank that drifted means a broken gradient path)."""

    def after_train(self):
        if comm.get_world_size() == 1:
            return
        with torch.no_grad():
            params = torch.cat([p.detach().reshape(-1).double().cpu() for p in self.trainer.model.parameters()])
        digests = comm.all_gather((float(params.sum()), float(params.abs().sum()), float(params.norm())))
        max_gap = max(abs(a - b) for d in digests for a, b in zip(d, digests[0]))
        logger.info("Parameters on %d ranks: max checksum difference %.3g", len(digests), max_gap)
        if max_gap > 1e-6 * max(1.0, abs(digests[0][2])):
            raise RuntimeError(f"Parameters differ across ranks after training: checksums {digests}")

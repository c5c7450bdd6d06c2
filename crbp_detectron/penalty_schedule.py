"""The contraction penalty's schedule during training (MODEL.CRBP.PENALTY_WARMUP_DELAY and
PENALTY_WARMUP_ITERS): a Detectron2 hook that sets every recurrent block's penalty scale before
each iteration, and logs it."""
from detectron2.engine import HookBase

from .crbp import penalty_schedule_scale, set_penalty_scale


class PenaltyScheduleHook(HookBase):
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

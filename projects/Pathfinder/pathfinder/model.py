"""The Pathfinder model, registered as Detectron2 meta-architecture `PathfinderModel`.

front-end (k x k conv, squared, BatchNorm: the paper's) -> body -> readout (BatchNorm, 1x1 conv to
one logit per pixel). The body is either one recurrent cell run to equilibrium by `Recurrence`
(PATHFINDER.MODEL.BODY "recurrent": the hGRU of the C-RBP paper, configured by MODEL.CRBP and
MODEL.CRBP.CELL like every recurrent block of this project) or a stack of k x k conv layers
("cnn": the feed-forward baseline, whose reach is fixed by its depth). Through
`RecurrenceLossMixin` the recurrent block's penalty joins the loss dict and its statistics go to
Detectron2's EventStorage, exactly as in the C-RBP Panoptic FPN.

The training mode and the step counts change how the same weights run, so a checkpoint trained in
one mode evaluates in any other (MODEL.CRBP.MODE, MODEL.CRBP.TEST_STEPS).
"""
from typing import List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from crbp_detectron.modeling.meta_arch import RecurrenceLossMixin
from crbp_detectron.modeling.tracer import Tracer, build_tracer_body


def pixel_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "focal", alpha: float = 0.75,
               gamma: float = 2.0) -> torch.Tensor:
    """Class-balanced pixel loss for one-logit segmentation.

    focal: sigmoid focal loss (Lin et al. 2017), alpha weighting the positives, averaged over
        pixels; balanced_bce: the mean BCE over positive pixels and the mean over negative pixels,
        averaged (each class weighs one half whatever its pixel count); bce: plain mean BCE.
    """
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if kind == "focal":
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        a_t = alpha * target + (1 - alpha) * (1 - target)
        return (a_t * (1 - p_t) ** gamma * bce).mean()
    if kind == "balanced_bce":
        pos = target.sum()
        pos_term = (bce * target).sum() / pos.clamp_min(1)
        neg_term = (bce * (1 - target)).sum() / (target.numel() - pos).clamp_min(1)
        return 0.5 * (pos_term + neg_term)
    raise ValueError(f"loss must be one of focal, balanced_bce, bce; got {kind!r}")


class _PathfinderBase(Tracer):
    @configurable
    def __init__(self, *, body: nn.Module, channels: int, front_kernel_size: int = 7, stride: int = 1,
                 in_channels: int = 1, loss: str = "focal", focal_alpha: float = 0.75, focal_gamma: float = 2.0):
        """The tracer's arguments (crbp_detectron.modeling.tracer.Tracer), and loss, focal_alpha,
        focal_gamma: see `pixel_loss`."""
        super().__init__(body, channels, front_kernel_size, stride, in_channels)
        self.loss, self.focal_alpha, self.focal_gamma = loss, focal_alpha, focal_gamma

    @classmethod
    def from_config(cls, cfg):
        m = cfg.PATHFINDER.MODEL
        body = build_tracer_body(cfg, m.BODY, m.CHANNELS, m.CNN_LAYERS, m.CNN_KERNEL_SIZE, m.CELL_BN_STATISTICS)
        loss = cfg.PATHFINDER.LOSS
        return {"body": body, "channels": m.CHANNELS, "front_kernel_size": m.FRONT_KERNEL_SIZE, "stride": m.STRIDE,
                "loss": loss.NAME, "focal_alpha": loss.FOCAL_ALPHA, "focal_gamma": loss.FOCAL_GAMMA}

    @property
    def device(self):
        return self.readout.conv.weight.device

    def forward(self, batched_inputs: List[dict]):
        """Detectron2's protocol: a list of {"image": uint8 [1, S, S], "mask": bool [1, S, S]};
        training returns the loss dict, evaluation one {"logits": [1, S, S]} per input."""
        images = torch.stack([d["image"] for d in batched_inputs]).to(self.device, torch.float32) / 255.0
        logits = self.logits(images)
        if not self.training:
            return [{"logits": out} for out in logits]
        target = torch.stack([d["mask"] for d in batched_inputs]).to(logits)
        return {"loss_pixel": pixel_loss(logits, target, self.loss, self.focal_alpha, self.focal_gamma)}


@META_ARCH_REGISTRY.register()
class PathfinderModel(RecurrenceLossMixin, _PathfinderBase):
    """Pathfinder segmentation: the recurrent block's penalty and statistics are collected as in
    every C-RBP meta-architecture."""


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

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

from crbp_detectron.crbp import Recurrence
from crbp_detectron.modeling.blocks import build_recurrence, cell_kwargs_from_cfg, recurrence_kwargs_from_cfg
from crbp_detectron.modeling.meta_arch import RecurrenceLossMixin


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


class FrontEnd(nn.Module):
    """k x k convolution (with a stride: the body then runs at 1/stride of the resolution),
    squared, BatchNorm."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, image):
        return self.norm(self.conv(image) ** 2)


class Readout(nn.Module):
    """One logit per image pixel from the body's state. At full resolution: BatchNorm -> 1x1
    conv. From a strided body: the state upsampled (bilinear) and joined with a few full-resolution
    features of the image (3x3 conv), then BatchNorm -> 1x1 conv -> ReLU -> 1x1 conv, so that the
    coarse state says *which* path and the image says *where* its thin strokes are."""

    IMAGE_FEATURES = 4

    def __init__(self, channels: int, stride: int = 1, in_channels: int = 1):
        super().__init__()
        self.stride = stride
        if stride == 1:
            self.norm = nn.BatchNorm2d(channels)
            self.conv = nn.Conv2d(channels, 1, 1)
            return
        self.image_features = nn.Conv2d(in_channels, self.IMAGE_FEATURES, 3, padding=1)
        joined = channels + self.IMAGE_FEATURES
        self.norm = nn.BatchNorm2d(joined)
        self.hidden = nn.Conv2d(joined, channels, 1)
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, h, image):
        if self.stride == 1:
            return self.conv(self.norm(h))
        up = F.interpolate(h, size=image.shape[-2:], mode="bilinear", align_corners=False)
        joined = self.norm(torch.cat([up, self.image_features(image)], dim=1))
        return self.conv(F.relu(self.hidden(joined)))


def conv_stack(channels: int, layers: int, kernel_size: int) -> nn.Sequential:
    body = []
    for _ in range(layers):
        body += [nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=False),
                 nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*body)


def use_batch_statistics(cell: nn.Module):
    """BatchNorms inside `cell` normalise with the current batch's statistics in evaluation too."""
    for name, module in list(cell.named_children()):
        if isinstance(module, nn.BatchNorm2d):
            setattr(cell, name, nn.BatchNorm2d(module.num_features, eps=module.eps, track_running_stats=False))


class _PathfinderBase(nn.Module):
    @configurable
    def __init__(self, *, body: nn.Module, channels: int, front_kernel_size: int = 7, stride: int = 1,
                 in_channels: int = 1, loss: str = "focal", focal_alpha: float = 0.75, focal_gamma: float = 2.0):
        """
        Args:
            body: maps the drive [B, C, H/stride, W/stride] to a state of the same shape: a
                `Recurrence` (the recurrent model) or any feed-forward module (the CNN baseline).
            channels: C. front_kernel_size: the front-end's kernel. stride: the front-end's stride
                (2: the body runs at half resolution, a quarter of the compute, twice the reach per
                step). in_channels: image channels.
            loss, focal_alpha, focal_gamma: see `pixel_loss`.
        """
        super().__init__()
        self.front = FrontEnd(in_channels, channels, front_kernel_size, stride)
        self.body = body
        self.readout = Readout(channels, stride, in_channels)
        self.loss, self.focal_alpha, self.focal_gamma = loss, focal_alpha, focal_gamma

    @classmethod
    def from_config(cls, cfg):
        m = cfg.PATHFINDER.MODEL
        if m.BODY == "recurrent":
            body = build_recurrence(m.CHANNELS, cell_kwargs=cell_kwargs_from_cfg(cfg), **recurrence_kwargs_from_cfg(cfg))
            if cfg.MODEL.CRBP.CELL.NORM == "BN" and m.CELL_BN_STATISTICS == "batch":
                use_batch_statistics(body.cell)
        else:
            body = conv_stack(m.CHANNELS, m.CNN_LAYERS, m.CNN_KERNEL_SIZE)
        loss = cfg.PATHFINDER.LOSS
        return {"body": body, "channels": m.CHANNELS, "front_kernel_size": m.FRONT_KERNEL_SIZE, "stride": m.STRIDE,
                "loss": loss.NAME, "focal_alpha": loss.FOCAL_ALPHA, "focal_gamma": loss.FOCAL_GAMMA}

    @property
    def device(self):
        return self.readout.conv.weight.device

    @property
    def recurrence(self):
        """The recurrent block, or None for the CNN."""
        return self.body if isinstance(self.body, Recurrence) else None

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B, 1, S, S] in [0, 1] -> logits [B, 1, S, S]."""
        return self.readout(self.body(self.front(images)), images)

    def forward(self, batched_inputs: List[dict]):
        """Detectron2's protocol: a list of {"image": uint8 [1, S, S], "mask": bool [1, S, S]};
        training returns the loss dict, evaluation one {"logits": [1, S, S]} per input."""
        images = torch.stack([d["image"] for d in batched_inputs]).to(self.device, torch.float32) / 255.0
        logits = self.logits(images)
        if not self.training:
            return [{"logits": out} for out in logits]
        target = torch.stack([d["mask"] for d in batched_inputs]).to(logits)
        return {"loss_pixel": pixel_loss(logits, target, self.loss, self.focal_alpha, self.focal_gamma)}

    @torch.no_grad()
    def step_outputs(self, images: torch.Tensor, steps: int) -> List[torch.Tensor]:
        """The logits after each of `steps` iterations of the recurrent cell (no graph), for the
        accuracy-against-steps sweep and the evolution picture, in one pass."""
        block = self.recurrence
        if block is None:
            raise ValueError("step_outputs needs a recurrent body (PATHFINDER.MODEL.BODY recurrent)")
        x = self.front(images)
        h = block.initial_state(x)
        outs = []
        for _ in range(steps):
            h = block.cell(x, h)
            outs.append(self.readout(h, images))
        return outs


@META_ARCH_REGISTRY.register()
class PathfinderModel(RecurrenceLossMixin, _PathfinderBase):
    """Pathfinder segmentation: the recurrent block's penalty and statistics are collected as in
    every C-RBP meta-architecture."""


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

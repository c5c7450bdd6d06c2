"""The tracer: a pixel-level contour tracer (front-end -> body -> readout, one logit per pixel),
the model of the Pathfinder project (projects/Pathfinder) and of the tracer mask head
(tracer_mask_head.py), which runs it on each RoI's window of the image.

front-end (k x k conv, squared, BatchNorm: the C-RBP paper's) -> body -> readout (BatchNorm, 1x1
conv). The body is one recurrent cell run to equilibrium by `Recurrence` (the hGRU, configured by
MODEL.CRBP like every recurrent block of the project) or a stack of k x k convs (the feed-forward
baseline, whose reach is fixed by its depth)."""
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TRACER_BODIES
from ..crbp import Recurrence
from .blocks import build_recurrence, cell_kwargs_from_cfg, recurrence_kwargs_from_cfg


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


def build_tracer_body(cfg, body: str, channels: int, cnn_layers: int = 6, cnn_kernel_size: int = 7,
                      cell_bn_statistics: str = "running") -> nn.Module:
    """The tracer's body from a config: a `Recurrence` of MODEL.CRBP's cell and solver ("recurrent"),
    its BatchNorms on batch statistics in evaluation too with `cell_bn_statistics` "batch", or a
    conv stack ("cnn")."""
    if body not in TRACER_BODIES:
        raise ValueError(f"the tracer's body must be one of {TRACER_BODIES}, got {body!r}")
    if body == "cnn":
        return conv_stack(channels, cnn_layers, cnn_kernel_size)
    recurrence = build_recurrence(channels, cell_kwargs=cell_kwargs_from_cfg(cfg), **recurrence_kwargs_from_cfg(cfg))
    if cfg.MODEL.CRBP.CELL.NORM == "BN" and cell_bn_statistics == "batch":
        use_batch_statistics(recurrence.cell)
    return recurrence


class Tracer(nn.Module):
    def __init__(self, body: nn.Module, channels: int, front_kernel_size: int = 7, stride: int = 1,
                 in_channels: int = 1):
        """
        Args:
            body: maps the drive [B, C, H/stride, W/stride] to a state of the same shape: a
                `Recurrence` (the recurrent tracer) or any feed-forward module (the CNN baseline).
            channels: C. front_kernel_size: the front-end's kernel. stride: the front-end's stride
                (2: the body runs at half resolution, a quarter of the compute, twice the reach per
                step). in_channels: image channels.
        """
        super().__init__()
        self.front = FrontEnd(in_channels, channels, front_kernel_size, stride)
        self.body = body
        self.readout = Readout(channels, stride, in_channels)

    @property
    def recurrence(self):
        """The recurrent block, or None for the CNN."""
        return self.body if isinstance(self.body, Recurrence) else None

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B, in_channels, S, S] -> logits [B, 1, S, S]."""
        return self.readout(self.body(self.front(images)), images)

    @torch.no_grad()
    def step_outputs(self, images: torch.Tensor, steps: int) -> List[torch.Tensor]:
        """The logits after each of `steps` iterations of the recurrent cell (no graph), for
        accuracy-against-steps sweeps and evolution pictures, in one pass."""
        block = self.recurrence
        if block is None:
            raise ValueError("step_outputs needs a recurrent body")
        x = self.front(images)
        h = block.initial_state(x)
        outs = []
        for _ in range(steps):
            h = block.cell(x, h)
            outs.append(self.readout(h, images))
        return outs


def load_tracer_weights(tracer: Tracer, state_dict: dict):
    """Loads a tracer's weights (a Pathfinder model's state dict: front.*, body.*, readout.*) into
    `tracer`, whose image may have more channels than the one trained: a kernel trained on one
    channel is spread evenly over the tracer's (each channel gets 1/C of it), so the tracer starts
    as the trained one on the image's channel mean. Every key must match; other shapes must too."""
    own = tracer.state_dict()
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise KeyError(f"tracer weights do not fit the tracer: missing {missing[:5]}, unexpected {unexpected[:5]} "
                       "(are body and channels those of the run that saved them?)")
    fitted = {}
    for key, value in state_dict.items():
        target = own[key].shape
        if value.shape != target and value.dim() == 4 and value.shape[1] == 1 and value.shape[0] == target[0] \
                and value.shape[2:] == target[2:]:
            value = value.expand(target) / target[1]
        elif value.shape != target:
            raise ValueError(f"tracer weight {key}: shape {tuple(value.shape)} does not fit {tuple(target)}")
        fitted[key] = value
    tracer.load_state_dict(fitted)

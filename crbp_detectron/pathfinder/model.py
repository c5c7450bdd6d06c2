"""Pathfinder models: the hGRU of the C-RBP paper and a feed-forward CNN baseline.

PathfinderHGRU (facts section 2): a k x k front-end convolution whose output is squared, then
BatchNorm, gives the drive x; one hGRU layer (`HGRUCell.pathfinder`) iterated by `Recurrence`
from h0 = 0; the readout is Norm -> 1x1 convolution to one logit per pixel (or to two classes).
The training mode (crbp, rbp, bptt, cbptt) and the step counts only change how the same
weights are run, so a checkpoint trained in one mode evaluates in any other:
`model.configure(mode="bptt", steps=6, test_steps=40)`.

PathfinderCNN: the same front-end, then `layers` k x k convolutions (BatchNorm, ReLU), the same
readout. No recurrence: its reach is fixed by its depth.
"""
from typing import List, Optional

import torch
from torch import nn

from crbp_detectron.crbp import HGRUCell, Recurrence
from crbp_detectron.crbp.recurrence import MODES

TASKS = ("segmentation", "classification")
# Norms inside the recurrent cell: "batch" uses batch statistics in training and evaluation
# (the map iterated at test time is the trained one); "batch_running" is the usual BatchNorm
# with running statistics in evaluation; "group", "none" as in HGRUCell.
CELL_NORMS = ("batch", "batch_running", "group", "none")


class _Readout(nn.Module):
    """Norm -> 1x1 conv to `outputs` maps; for classification the maps are max-pooled over
    space into logits (one per class)."""

    def __init__(self, channels: int, outputs: int, task: str):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.norm = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, outputs, 1)

    def forward(self, h):
        out = self.conv(self.norm(h))
        if self.task == "classification":
            out = out.amax(dim=(2, 3))
        return out


class _FrontEnd(nn.Module):
    """k x k convolution, squared, BatchNorm."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, image):
        return self.norm(self.conv(image) ** 2)


class PathfinderHGRU(nn.Module):
    """The Pathfinder hGRU. Output: logits [B, outputs, H, W] (segmentation) or [B, outputs]."""

    def __init__(
        self,
        channels: int = 25,
        kernel_size: int = 7,
        front_kernel_size: int = 7,
        in_channels: int = 1,
        outputs: int = 1,
        task: str = "segmentation",
        mode: str = "crbp",
        steps: int = 20,
        test_steps: Optional[int] = None,
        cell_norm: str = "batch",
        penalty: str = "lcp",
        lcp_lambda: float = 0.9,
        penalty_reduction: str = "mean",
        penalty_weight: float = 10.0,
        neumann_steps: int = 15,
        neumann_tol: float = 1e-4,
        tol: float = 0.0,
    ):
        super().__init__()
        self.front = _FrontEnd(in_channels, channels, front_kernel_size)
        if cell_norm not in CELL_NORMS:
            raise ValueError(f"cell_norm must be one of {CELL_NORMS}, got {cell_norm!r}")
        cell = HGRUCell.pathfinder(channels=channels, kernel_size=kernel_size, timesteps=steps,
                                   norm="batch" if cell_norm.startswith("batch") else cell_norm)
        if cell_norm == "batch":
            # Batch statistics in training and in evaluation alike: the map iterated at test time
            # is the one that was trained, at every step. (Running statistics are one average
            # over all steps of the last few batches, so eval-mode steps differ from trained ones.)
            cell.norm_inh = nn.BatchNorm2d(channels, track_running_stats=False)
            cell.norm_exc = nn.BatchNorm2d(channels, track_running_stats=False)
        self.recurrence = Recurrence(
            cell, mode=mode, steps=steps, test_steps=test_steps, tol=tol, backward_max_vjps=neumann_steps,
            backward_tol=neumann_tol, penalty=penalty, lcp_lambda=lcp_lambda,
            penalty_reduction=penalty_reduction, penalty_weight=penalty_weight)
        self.readout = _Readout(channels, outputs, task)

    @property
    def cell(self):
        return self.recurrence.cell

    @property
    def mode(self):
        return self.recurrence.mode

    def configure(self, mode: Optional[str] = None, steps: Optional[int] = None,
                  test_steps: Optional[int] = None, **recurrence_options):
        """Changes how the recurrence runs (no weight changes): mode, steps, test_steps, and any
        other Recurrence attribute (lcp_lambda, penalty_weight, tol, ...)."""
        rec = self.recurrence
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
            rec.mode = mode
        if steps is not None:
            if steps < 1:
                raise ValueError(f"steps must be >= 1, got {steps}")
            rec.steps = steps
        if test_steps is not None:
            if test_steps < 1:
                raise ValueError(f"test_steps must be >= 1, got {test_steps}")
            rec.test_steps = test_steps
        for key, value in recurrence_options.items():
            if not hasattr(rec, key):
                raise AttributeError(f"Recurrence has no option {key!r}")
            setattr(rec, key, value)
        return self

    def forward(self, image):
        return self.readout(self.recurrence(self.front(image)))

    @torch.no_grad()
    def step_outputs(self, image, steps: int) -> List[torch.Tensor]:
        """The readout after each of `steps` iterations (no graph; the block's train/eval state
        decides the norms): a list of `steps` outputs, for plots of the evolution and the
        accuracy-versus-steps sweep in one pass."""
        x = self.front(image)
        h = torch.zeros_like(x)
        outs = []
        for _ in range(steps):
            h = self.cell(x, h)
            outs.append(self.readout(h))
        return outs


class PathfinderCNN(nn.Module):
    """Feed-forward baseline: the same front-end and readout around `layers` k x k conv layers."""

    def __init__(self, channels: int = 25, kernel_size: int = 7, layers: int = 6, front_kernel_size: int = 7,
                 in_channels: int = 1, outputs: int = 1, task: str = "segmentation"):
        super().__init__()
        self.front = _FrontEnd(in_channels, channels, front_kernel_size)
        body = []
        for _ in range(layers):
            body += [nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=False),
                     nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*body)
        self.readout = _Readout(channels, outputs, task)

    def forward(self, image):
        return self.readout(self.body(self.front(image)))


def build_model(cfg: dict) -> nn.Module:
    """From a config dict: {"type": "hgru"|"cnn", ...keyword arguments of the class}."""
    cfg = dict(cfg)
    kind = cfg.pop("type", "hgru")
    if kind == "hgru":
        return PathfinderHGRU(**cfg)
    if kind == "cnn":
        return PathfinderCNN(**cfg)
    raise ValueError(f"model type must be 'hgru' or 'cnn', got {kind!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

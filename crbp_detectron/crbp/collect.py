"""The one mechanism that gathers every recurrent block's penalty and statistics from a model."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from .recurrence import Recurrence
from .stats import BackwardStats, RecurrenceStats


@dataclass
class BlockSummary:
    """What one recurrent block did since the last collection."""

    loss: Optional[torch.Tensor]  # sum of its weighted penalties (None if not penalised)
    stats: List[RecurrenceStats] = field(default_factory=list)  # one per call, oldest first
    last_backward: Optional[BackwardStats] = None  # its most recent backward pass
    consecutive_divergences: int = 0
    divergence_events: int = 0


def block_name(module_path: str) -> str:
    """A readable name for the block at `module_path` (DDP's "module." prefix and the
    wrapper's own attribute name dropped): "roi_heads.mask_head"."""
    parts = [p for p in module_path.split(".") if p]
    if parts and parts[0] == "module":
        parts = parts[1:]
    if len(parts) > 1 and parts[-1] in ("recurrence", "block"):
        parts = parts[:-1]
    return ".".join(parts) or "recurrence"


def recurrent_blocks(model: nn.Module) -> Dict[str, Recurrence]:
    """Every Recurrence in `model`, by block name."""
    blocks = {}
    for path, module in model.named_modules():
        if isinstance(module, Recurrence):
            name = block_name(path)
            if name in blocks:
                raise ValueError(f"Two recurrent blocks map to the same name {name!r}")
            blocks[name] = module
    return blocks


def penalty_schedule_scale(iteration: int, warmup_iters: int, delay_iters: int = 0) -> float:
    """The penalty's scale at `iteration` of a warm-up schedule: 0 for the first `delay_iters`
    iterations, then a linear ramp to 1 over `warmup_iters` (1 throughout when both are 0)."""
    if iteration < delay_iters:
        return 0.0
    if warmup_iters <= 0:
        return 1.0
    return min(1.0, (iteration - delay_iters + 1) / warmup_iters)


def set_penalty_scale(model: nn.Module, scale: float) -> Dict[str, Recurrence]:
    """Sets the penalty scale of every recurrent block in `model` (a penalty schedule's step)."""
    blocks = recurrent_blocks(model)
    for block in blocks.values():
        block.penalty_scale = float(scale)
    return blocks


def collect_recurrence(model: nn.Module) -> Dict[str, BlockSummary]:
    """Takes the records every recurrent block left since the last call, wherever it sits.

    Call once per iteration (the C-RBP meta-architecture does). A block that was called several
    times (e.g. a cell shared across FPN levels) sums its penalties.
    """
    out = {}
    for name, block in recurrent_blocks(model).items():
        records = block.pop_records()
        losses = [r.loss for r in records if r.loss is not None]
        out[name] = BlockSummary(
            loss=torch.stack(losses).sum() if losses else None,
            stats=[r.stats for r in records],
            last_backward=block.last_backward,
            consecutive_divergences=block.consecutive_divergences,
            divergence_events=block.divergence_events,
        )
    return out


def penalty_losses(summaries: Dict[str, BlockSummary], prefix: str = "loss_penalty") -> Dict[str, torch.Tensor]:
    """Loss-dict entries, one per penalised block: {"loss_penalty/roi_heads.mask_head": ...}."""
    return {f"{prefix}/{name}": s.loss for name, s in summaries.items() if s.loss is not None}


def summary_scalars(summaries: Dict[str, BlockSummary], prefix: str = "crbp") -> Dict[str, float]:
    """Flat scalars for a logger: "crbp/<block>/<stat>", averaged over the block's calls; the
    backward solver's statistics come from the block's latest backward pass."""
    scalars = {}
    for name, s in summaries.items():
        per_call = [st.as_dict() for st in s.stats]
        backward_keys = set(BackwardStats().as_dict())
        keys = sorted({k for d in per_call for k in d if k not in backward_keys})
        for key in keys:
            values = [d[key] for d in per_call if key in d]
            scalars[f"{prefix}/{name}/{key}"] = float(sum(values) / len(values))
        if s.last_backward is not None:
            for key, value in s.last_backward.as_dict().items():
                scalars[f"{prefix}/{name}/{key}"] = float(value)
        scalars[f"{prefix}/{name}/consecutive_divergences"] = float(s.consecutive_divergences)
        scalars[f"{prefix}/{name}/divergence_events"] = float(s.divergence_events)
    return scalars

"""Forward iteration of h <- f(x, h) without a graph, with a per-sample early stop.

Convergence is judged per sample (dim 0: an image, an RoI), by an estimate of the distance to the
fixed point rather than by the step size alone: for a map contracting at rate q,
||h_t+1 - h*|| <= q / (1 - q) ||h_t+1 - h_t||. With slow gates (g ~ 1/T) the steps are small
while h is still far from h* (q near 1), and the step size alone would stop far too early; the
factor q / (1 - q) accounts for that. q is estimated per sample from the ratio of successive
step sizes (the larger of the last two ratios, for some robustness to oscillation); a sample
whose steps do not shrink is never judged converged. It is an estimate, not a bound: early in a
run the fast modes decay first and q looks smaller than the rate that will govern later steps
(on the trained demo mask head the ratio rises from 0.35 at step 2 to 0.94 at step 20), so a
loose tolerance can stop a sample after a few steps; keep TOL small (1e-3 or less).

Samples that have converged stop costing compute: only the active ones are iterated, when the
cell treats samples independently. A cell whose output for one sample depends on the others
(BatchNorm with batch statistics: in training, or with track_running_stats=False) cannot be
sliced: the whole batch iterates until every sample has converged. `samples_independent` decides
(a cell may declare `samples_independent = False`/`True` itself).
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

import torch
from torch import nn

Cell = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def relative_residual(h_next: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """||h_next - h|| / ||h_next|| over the whole batch (0-dim tensor); 0 when both are zero."""
    diff = (h_next - h).norm()
    scale = h_next.norm()
    return torch.where(scale > 0, diff / scale.clamp_min(torch.finfo(scale.dtype).tiny), diff)


def samples_independent(cell) -> bool:
    """False if the cell couples the samples of a batch (see the module's docstring)."""
    declared = getattr(cell, "samples_independent", None)
    if declared is not None:
        return bool(declared)
    if not isinstance(cell, nn.Module):
        return False  # an arbitrary callable: nothing known
    for m in cell.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats):
            return False
    return True


@dataclass
class IterationResult:
    h: torch.Tensor
    steps: int  # iterations run by the longest-running sample
    residual: Union[float, torch.Tensor]  # batch relative residual of the last step (nan if none ran)
    sample_steps: Optional[torch.Tensor] = None  # iterations per sample (with a tolerance)
    distance: Optional[torch.Tensor] = None  # per-sample estimate of ||h - h*|| / ||h||
    sliced: bool = False  # whether converged samples were dropped from the iteration


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


@torch.no_grad()
def iterate(cell: Cell, x: torch.Tensor, h: torch.Tensor, steps: int, tol: float = 0.0,
            trace: Optional[List[float]] = None) -> IterationResult:
    """Runs up to `steps` iterations of `cell` from `h` with no graph.

    tol > 0: each sample stops once its estimated relative distance to the fixed point,
    q / (1 - q) ||h_t+1 - h_t|| / ||h_t+1||, falls under `tol`; the call returns when all have.
    tol <= 0: exactly `steps` iterations, and the result's residual a 0-dim tensor: no Python
    number is taken from the data (no host sync; `torch.export` and tracing see no data-dependent
    value). `trace` gets the batch relative residual of each step (floats).
    """
    if tol <= 0 or h.shape[0] == 0:
        residual = float("nan")
        for t in range(steps):
            h_next = cell(x, h)
            if trace is not None or t == steps - 1:
                residual = relative_residual(h_next, h)
                if trace is not None:
                    trace.append(float(residual))
            h = h_next
        return IterationResult(h, steps, residual)

    batch = h.shape[0]
    sliced = samples_independent(cell)
    sample_steps = torch.zeros(batch, dtype=torch.long, device=h.device)
    step_size = torch.zeros(batch, dtype=torch.float64, device=h.device)  # ||h_t+1 - h_t|| per sample
    scale = torch.zeros(batch, dtype=torch.float64, device=h.device)  # ||h_t+1|| per sample
    ratios = torch.full((2, batch), float("inf"), dtype=torch.float64, device=h.device)
    distance = torch.full((batch,), float("inf"), dtype=torch.float64, device=h.device)
    active = torch.arange(batch, device=h.device)
    x_active, run = x, 0
    for t in range(steps):
        if sliced:
            h_next_active = cell(x_active, h.index_select(0, active))
            h_prev_active = h.index_select(0, active)
            h = h.index_copy(0, active, h_next_active)
        else:
            h_next_active, h_prev_active = cell(x, h), h
            h = h_next_active
        run = t + 1
        new_size = _per_sample_norm(h_next_active - h_prev_active).double()
        new_scale = _per_sample_norm(h_next_active).double()
        ratios[0, active] = ratios[1, active]
        old_size = step_size[active]
        ratios[1, active] = torch.where(old_size > 0, new_size / old_size.clamp_min(1e-300),
                                        torch.full_like(new_size, float("inf")))  # unknown yet
        step_size[active], scale[active] = new_size, new_scale
        sample_steps[active] += 1
        q = ratios[:, active].max(dim=0).values
        rel = torch.where(new_scale > 0, new_size / new_scale.clamp_min(1e-300), new_size)
        est = torch.where(q < 1, rel * q / (1 - q).clamp_min(1e-300), torch.full_like(rel, float("inf")))
        est = torch.where(new_size == 0, torch.zeros_like(est), est)  # an exact fixed point
        distance[active] = est
        if trace is not None:
            trace.append(_batch_residual(step_size, scale))
        still = est >= tol
        if not bool(still.any()):
            break
        if sliced and not bool(still.all()):
            active = active[still]
            x_active = x.index_select(0, active)
    return IterationResult(h, run, _batch_residual(step_size, scale), sample_steps, distance, sliced)


def _batch_residual(step_size: torch.Tensor, scale: torch.Tensor) -> float:
    num, den = float(step_size.pow(2).sum().sqrt()), float(scale.pow(2).sum().sqrt())
    return num / den if den > 0 else num

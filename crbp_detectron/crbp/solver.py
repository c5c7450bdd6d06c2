"""Forward iteration of h <- f(x, h) without a graph, with an optional early stop."""
from typing import Callable, List, Optional, Tuple

import torch


def relative_residual(h_next: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """||h_next - h|| / ||h_next|| over the whole batch (0-dim tensor); 0 when both are zero."""
    diff = (h_next - h).norm()
    scale = h_next.norm()
    return torch.where(scale > 0, diff / scale.clamp_min(torch.finfo(scale.dtype).tiny), diff)


@torch.no_grad()
def iterate(
    cell: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    h: torch.Tensor,
    steps: int,
    tol: float = 0.0,
    trace: Optional[List[float]] = None,
) -> Tuple[torch.Tensor, int, float]:
    """Runs up to `steps` iterations of `cell` from `h` with no graph.

    Stops early once the relative residual falls under `tol` (tol <= 0 never stops early).
    Returns the last state, the number of iterations run and the last relative residual
    (nan when no iteration ran). Appends each step's residual to `trace` when given.
    """
    residual = float("nan")
    want_residual = tol > 0 or trace is not None
    for t in range(steps):
        h_next = cell(x, h)
        if want_residual or t == steps - 1:
            residual = float(relative_residual(h_next, h))
            if trace is not None:
                trace.append(residual)
        h = h_next
        if tol > 0 and residual < tol:
            return h, t + 1, residual
    return h, steps, residual

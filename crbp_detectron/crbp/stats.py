"""Statistics of one recurrent call: what the forward did, and what its backward did."""
from dataclasses import dataclass, field
from typing import List, Optional, Union

import torch


@dataclass
class BackwardStats:
    """Filled in by the RBP gradient when the backward pass reaches the recurrent block. Every
    field describes the z that was returned (see backward_solvers)."""

    solver: str = ""
    vjps: int = 0  # VJPs the solver computed (its cost)
    vjps_in_result: int = 0  # VJPs that built the returned z (fewer when an earlier iterate was better)
    residual: float = float("nan")  # ||g - (I - J^T) z|| / ||g|| of the returned z
    converged: bool = False  # that residual is under the solver's tolerance
    diverged: bool = False  # evidence that the solve cannot succeed (see backward_solvers)

    def as_dict(self):
        """Flat scalars for loggers (the solver's name left out)."""
        return {"backward_vjps": self.vjps, "backward_vjps_in_result": self.vjps_in_result,
                "backward_residual": self.residual, "backward_converged": float(self.converged),
                "diverged": float(self.diverged)}


@dataclass
class RecurrenceStats:
    """What one forward of a recurrent block did: floats, except `residual` after a graph-free
    (inference) call without a tolerance, a 0-dim tensor so that inference takes no Python number
    from the data; `as_dict` gives floats."""

    mode: str
    steps: int  # iterations run (the recorded step included; the longest-running sample's)
    residual: Union[float, torch.Tensor]  # final relative residual ||h_t+1 - h_t|| / ||h_t+1|| (whole batch)
    converged: bool  # every sample converged to the tolerance (False without one)
    mean_steps: Optional[float] = None  # iterations per sample, averaged (with a tolerance)
    # Cell evaluations per sample, averaged, the recorded step included: the forward's cost (with
    # a tolerance, mean_steps; without one, steps).
    evaluations: Optional[float] = None
    converged_fraction: Optional[float] = None  # samples that converged to it
    # Largest per-sample convergence measure (with a tolerance; what the forward solver compares
    # with it: plain, an estimate of ||h - h*|| / ||h||; anderson, the relative residual).
    distance: Optional[float] = None
    penalty: Optional[float] = None  # value of the contraction penalty, if computed
    max_column_sum: Optional[float] = None  # max_j (1^T J)_j, from the LCP's VJP
    residual_trace: Optional[List[float]] = None  # residual after each step, if asked for
    backward: Optional[BackwardStats] = field(default=None)  # set when the backward runs

    def as_dict(self):
        """Flat dict of the scalar statistics (the trace left out)."""
        out = {
            "steps": self.steps,
            "residual": float(self.residual),
            "converged": float(self.converged),
        }
        for key in ("mean_steps", "converged_fraction", "distance", "evaluations"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.penalty is not None:
            out["penalty"] = self.penalty
        if self.max_column_sum is not None:
            out["max_column_sum"] = self.max_column_sum
        if self.backward is not None:
            out.update(self.backward.as_dict())
        return out


def spectral_radius(cell, x, h, iterations: int = 60) -> float:
    """|largest eigenvalue| of dF/dh at (x, h) by power iteration on vector-Jacobian products
    (the growth rate over the last third of the iterations). Gradient-based training is valid at a
    fixed point only where this is below 1: there the Neumann series of the RBP gradient converges."""
    h = h.detach().requires_grad_(True)
    with torch.enable_grad():
        out = cell(x.detach(), h)
    v = torch.randn_like(h, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    norms = []
    for _ in range(iterations):
        (v,) = torch.autograd.grad(out, h, v, retain_graph=True)
        norms.append(float(v.norm()))
        v = v / v.norm().clamp_min(1e-30)
    tail = norms[2 * iterations // 3:]
    return float(torch.tensor(tail).log().mean().exp())


def relative_distance(a, b) -> float:
    """Mean over samples of ||a - b|| / ||b||."""
    return float((a - b).flatten(1).norm(dim=1).div(b.flatten(1).norm(dim=1).clamp_min(1e-12)).mean())

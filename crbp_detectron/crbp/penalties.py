"""Penalties that keep a recurrent map contractive, computed from VJPs through one step.

- LCP, the Lipschitz-constant penalty of C-RBP (Linsley et al., NeurIPS 2020): one VJP with the
  all-ones vector gives the column sums of J, (1^T J)_j; penalise sum_j max(0, (1^T J)_j - lambda)^2.
- Jacobian Frobenius penalty (Bai et al., 2021, "Stabilizing Equilibrium Models by Jacobian
  Regularization"): ||J||_F^2 / d estimated with Hutchinson's trick, E_eps ||eps^T J||^2 / d with
  eps ~ N(0, I). A different quantity from the LCP, offered as an option under its own name.
"""
from typing import Optional, Tuple

import torch

from .arguments import check_choice

PENALTIES = ("lcp", "jacobian_frobenius", "none")
REDUCTIONS = ("mean", "sum")


def _vjp(h_next, h_in, v, create_graph):
    return torch.autograd.grad(h_next, h_in, v, create_graph=create_graph, retain_graph=True)[0]


def lipschitz_penalty(
    h_next: torch.Tensor,
    h_in: torch.Tensor,
    lam: float = 0.9,
    reduction: str = "mean",
    create_graph: bool = True,
    absolute: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """LCP for h_next = f(x, h_in). Returns (penalty, column sums 1^T J shaped like h_in).

    With create_graph=True the penalty is differentiable (a second-order term that trains the
    weights); otherwise it is a detached value for logging. `absolute` penalises |1^T J| - lambda
    (a column whose entries sum to a large negative number is not contractive either).
    """
    check_choice("LCP reduction", reduction, REDUCTIONS)
    column_sums = _vjp(h_next, h_in, torch.ones_like(h_next), create_graph)
    excess = torch.relu((column_sums.abs() if absolute else column_sums) - lam) ** 2
    # An empty state (e.g. a mask head on zero RoIs) has no excess: 0, not the NaN of an empty mean.
    penalty = excess.mean() if reduction == "mean" and excess.numel() else excess.sum()
    return penalty, column_sums


def jacobian_frobenius_penalty(
    h_next: torch.Tensor,
    h_in: torch.Tensor,
    samples: int = 1,
    create_graph: bool = True,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Hutchinson estimate of ||J||_F^2 / d (d = number of state elements), as in Bai et al."""
    total = h_next.new_zeros(())
    for _ in range(samples):
        eps = torch.randn(h_next.shape, generator=generator, dtype=h_next.dtype, device=h_next.device)
        total = total + _vjp(h_next, h_in, eps, create_graph).pow(2).sum()
    return total / (samples * max(h_in.numel(), 1))

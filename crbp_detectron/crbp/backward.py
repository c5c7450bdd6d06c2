"""The RBP gradient: a Neumann series of vector-Jacobian products through ONE recorded step.

At an equilibrium h* = f(x, h*), the implicit function theorem gives dL/dtheta = z^T df/dtheta
with z^T = g^T (I - J)^-1, J = df/dh at h*, g = dL/dh*. The Neumann series
z = sum_k g^T J^k needs only VJPs v <- v^T J through the recorded step f(x, h*); autograd then
carries z through that same step into the weights and x. Memory: one step, whatever the number
of forward iterations.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from .stats import BackwardStats


@dataclass(frozen=True)
class NeumannConfig:
    max_terms: int = 15  # K: VJPs at most (the paper's value)
    tol: float = 1e-4  # stop once ||v_k|| / ||g|| falls under this (relative: no loss-scale knob)
    patience: int = 3  # consecutive growing terms that count as divergence

    def __post_init__(self):
        if self.max_terms < 0:
            raise ValueError(f"neumann max_terms must be >= 0, got {self.max_terms}")
        if not self.tol >= 0:
            raise ValueError(f"neumann tol must be >= 0, got {self.tol}")
        if self.patience < 1:
            raise ValueError(f"neumann patience must be >= 1, got {self.patience}")


def neumann_series(
    vjp: Callable[[torch.Tensor], torch.Tensor], g: torch.Tensor, config: NeumannConfig
) -> Tuple[torch.Tensor, BackwardStats]:
    """Returns z = sum_{k=0..K} g^T J^k (with vjp(v) = v^T J) and what happened.

    Divergence guard: if ||v_k|| grows for `patience` consecutive terms, or a term is not finite,
    the partial sum from before the growth is returned and `diverged` is set. The result is
    always finite when g is; a non-finite g gives zeros (and `diverged`), so that no NaN reaches
    the weights through this block.
    """
    stats = BackwardStats()
    g_norm = float(g.norm())
    if not math.isfinite(g_norm):
        stats.diverged = True
        return torch.zeros_like(g), stats
    if g_norm == 0.0:
        stats.neumann_residual = 0.0
        return g, stats

    z, v, prev_norm = g, g, g_norm
    growing, z_before_growth, terms_before_growth = 0, z, 0
    for _ in range(config.max_terms):
        v = vjp(v)
        v_norm = float(v.norm())
        if not math.isfinite(v_norm):
            stats.diverged = True
            z = z_before_growth if growing else z
            stats.neumann_terms = terms_before_growth if growing else stats.neumann_terms
            break
        growing = growing + 1 if v_norm > prev_norm else 0
        if growing == 1:
            z_before_growth, terms_before_growth = z, stats.neumann_terms
        if growing >= config.patience:
            stats.diverged = True
            z, stats.neumann_terms = z_before_growth, terms_before_growth
            break
        z = z + v
        stats.neumann_terms += 1
        stats.neumann_residual = v_norm / g_norm
        prev_norm = v_norm
        if stats.neumann_residual < config.tol:
            break
    return z, stats


class _RBPGradient(torch.autograd.Function):
    """Identity on the recorded step's output; its backward swaps g for the Neumann sum.

    The recorded output and its input are kept on ctx (not saved tensors: they are the graph we
    take VJPs through) and released as soon as the backward has used them. The VJPs run through
    the recorded step's own graph, which does not contain this node, so they cannot re-enter it,
    and they ask for gradients w.r.t. the state only, so parameter hooks (DDP's all-reduce among
    them) fire once, in the ordinary backward that follows.
    """

    @staticmethod
    def forward(ctx, h_next, h_star, config, on_backward):
        ctx.h_next, ctx.h_star = h_next, h_star
        ctx.config, ctx.on_backward = config, on_backward
        return h_next.view_as(h_next)

    @staticmethod
    def backward(ctx, grad):
        h_next, h_star = ctx.h_next, ctx.h_star
        if h_next is None:
            raise RuntimeError(
                "The C-RBP gradient of this recurrent block was already used: backward through "
                "the same forward twice (retain_graph=True) is not supported."
            )
        ctx.h_next = ctx.h_star = None

        def vjp(v):
            return torch.autograd.grad(h_next, h_star, v, retain_graph=True)[0]

        z, stats = neumann_series(vjp, grad, ctx.config)
        if ctx.on_backward is not None:
            ctx.on_backward(stats)
        return z, None, None, None


def attach_rbp_gradient(
    h_next: torch.Tensor,
    h_star: torch.Tensor,
    config: NeumannConfig,
    on_backward: Optional[Callable[[BackwardStats], None]] = None,
) -> torch.Tensor:
    """Returns h_next with the RBP gradient attached.

    `h_star` is the detached state (a leaf with requires_grad) that `h_next = f(x, h_star)` was
    recorded from. `on_backward` receives the BackwardStats when the backward runs.
    """
    if not h_star.requires_grad:
        raise ValueError("attach_rbp_gradient: h_star must require grad (the recorded step's input)")
    return _RBPGradient.apply(h_next, h_star, config, on_backward)

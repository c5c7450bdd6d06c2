"""One module that runs any cell f(x, h) -> h to equilibrium and trains it in one of four modes.

    crbp   N-1 steps without a graph, one recorded step, the RBP gradient (Neumann VJPs through
           that step) and a differentiable contraction penalty (LCP). Memory O(1) in N.
    rbp    the same gradient; the penalty is computed for logging only.
    bptt   all N steps recorded; ordinary back-propagation through time. Memory O(N).
    cbptt  BPTT plus the differentiable penalty on the last step.

In eval mode (or under torch.no_grad) the block runs `test_steps` iterations with no graph; if
gradients are enabled in eval mode they flow with the RBP gradient, in every mode.

A note on gated cells: at an exact equilibrium a GRU-style update h = (1-g) h + g h~ satisfies
g * (h~(h*) - h*) = 0 with g > 0, so h* = h~(h*): the gate sets how fast h moves, not where it
settles, and the implicit (RBP) gradient of the task loss w.r.t. the gate's parameters is zero.
Only the penalty and unconverged steps train them.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import nn

from .backward import NeumannConfig, attach_rbp_gradient
from .penalties import PENALTIES, REDUCTIONS, jacobian_frobenius_penalty, lipschitz_penalty
from .solver import iterate, relative_residual
from .stats import BackwardStats, RecurrenceStats

MODES = ("crbp", "rbp", "bptt", "cbptt")
# Modes whose penalty is part of the loss; the others compute it for logging only.
PENALIZED_MODES = ("crbp", "cbptt")
# Records a block keeps in training before someone collects them (see `pop_records`). Penalties
# hold their graphs, so an uncollected block would leak memory: past this we raise instead.
MAX_PENDING_RECORDS = 64


@dataclass
class RecurrenceRecord:
    """One call of a recurrent block: its weighted penalty loss (None unless penalised) and stats."""

    loss: Optional[torch.Tensor]
    stats: RecurrenceStats


class Recurrence(nn.Module):
    """Wraps `cell(x, h) -> h_next` and iterates it towards h* = cell(x, h*).

    Args:
        cell: module mapping (x, h) to the next state, h of the state's shape. If it has a method
            `initial_state(x)` that gives h0; otherwise h0 = zeros_like(x).
        mode: one of MODES.
        steps: iterations in training, the recorded one included (>= 1).
        test_steps: iterations in eval (defaults to `steps`).
        tol: stop the graph-free iterations early once the relative residual is under `tol`
            (0 disables the early stop).
        neumann_steps, neumann_tol, divergence_patience: the Neumann backward (NeumannConfig).
        penalty: "lcp", "jacobian_frobenius" or "none".
        lcp_lambda: the LCP's target lambda; penalty_reduction: "mean" or "sum" over elements.
        penalty_weight: the penalty's weight in the loss (the record's `loss` is weight x penalty).
        hutchinson_samples: random vectors for the Jacobian Frobenius estimate.
        record_trace: keep each step's residual in the stats (costs a norm per step).
    """

    def __init__(
        self,
        cell: nn.Module,
        *,
        mode: str = "crbp",
        steps: int = 20,
        test_steps: Optional[int] = None,
        tol: float = 0.0,
        neumann_steps: int = 15,
        neumann_tol: float = 1e-4,
        divergence_patience: int = 3,
        penalty: str = "lcp",
        lcp_lambda: float = 0.9,
        penalty_reduction: str = "mean",
        penalty_weight: float = 1.0,
        hutchinson_samples: int = 1,
        record_trace: bool = False,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Recurrence mode must be one of {MODES}, got {mode!r}")
        if penalty not in PENALTIES:
            raise ValueError(f"Recurrence penalty must be one of {PENALTIES}, got {penalty!r}")
        if penalty_reduction not in REDUCTIONS:
            raise ValueError(f"penalty_reduction must be one of {REDUCTIONS}, got {penalty_reduction!r}")
        if steps < 1 or (test_steps is not None and test_steps < 1):
            raise ValueError(f"steps and test_steps must be >= 1, got {steps} and {test_steps}")
        if tol < 0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        self.cell = cell
        self.mode = mode
        self.steps = steps
        self.test_steps = test_steps
        self.tol = tol
        self.neumann = NeumannConfig(neumann_steps, neumann_tol, divergence_patience)
        self.penalty = penalty
        self.lcp_lambda = lcp_lambda
        self.penalty_reduction = penalty_reduction
        self.penalty_weight = penalty_weight
        self.hutchinson_samples = hutchinson_samples
        self.record_trace = record_trace
        self._records: List[RecurrenceRecord] = []
        self.last_backward: Optional[BackwardStats] = None
        self.consecutive_divergences = 0  # backward passes in a row whose Neumann series diverged
        self.divergence_events = 0  # backward passes whose Neumann series diverged, in all

    def extra_repr(self):
        return (f"mode={self.mode}, steps={self.steps}, test_steps={self.test_steps}, tol={self.tol}, "
                f"penalty={self.penalty}, lcp_lambda={self.lcp_lambda}, weight={self.penalty_weight}")

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None, return_record: bool = False):
        """Returns the final state, or (state, RecurrenceRecord) if `return_record`.

        Without `return_record` the record stays on the block until `pop_records` (which
        `collect_recurrence` calls) takes it.

        h0 is a constant initial condition: no gradient flows into it, in any mode.
        """
        h = self._initial_state(x) if h0 is None else h0.detach()
        trace = [] if self.record_trace else None
        grad = torch.is_grad_enabled()
        if self.training and grad and self.mode in ("bptt", "cbptt"):
            h, stats, loss = self._unrolled(x, h, trace)
        elif grad:
            steps = self.steps if self.training else self._eval_steps
            h, stats, loss = self._implicit(x, h, steps, trace, with_penalty=self.training)
        else:
            steps = self.steps if self.training else self._eval_steps
            h, run, residual = iterate(self.cell, x, h, steps, self.tol, trace)
            stats = self._stats(run, residual, trace)
            loss = None
        record = RecurrenceRecord(loss, stats)
        if return_record:  # the caller takes the record; nothing is left on the block
            return h, record
        self._remember(record)
        return h

    @property
    def _eval_steps(self):
        return self.steps if self.test_steps is None else self.test_steps

    def _initial_state(self, x):
        init = getattr(self.cell, "initial_state", None)
        return init(x) if callable(init) else torch.zeros_like(x)

    def _stats(self, steps, residual, trace):
        return RecurrenceStats(
            mode=self.mode, steps=steps, residual=residual,
            converged=self.tol > 0 and residual < self.tol, residual_trace=trace,
        )

    def _implicit(self, x, h, steps, trace, with_penalty):
        """N-1 graph-free steps, one recorded step, the RBP gradient attached to its output."""
        h, run, _ = iterate(self.cell, x, h, steps - 1, self.tol, trace)
        h_star = h.detach().requires_grad_()
        h_next = self.cell(x, h_star)
        residual = float(relative_residual(h_next.detach(), h_star.detach()))
        if trace is not None:
            trace.append(residual)
        stats = self._stats(run + 1, residual, trace)
        loss = self._penalty(h_next, h_star, stats) if with_penalty else None
        return attach_rbp_gradient(h_next, h_star, self.neumann, self._backward_hook(stats)), stats, loss

    def _unrolled(self, x, h, trace):
        """BPTT: every step recorded."""
        if self.penalty != "none":
            h = h.requires_grad_()  # a leaf inside the graph, so a 1-step unroll has a Jacobian
        run, residual, h_prev = 0, float("nan"), h
        for t in range(self.steps):
            h_prev, h = h, self.cell(x, h)
            run = t + 1
            if self.tol > 0 or trace is not None or t == self.steps - 1:
                residual = float(relative_residual(h.detach(), h_prev.detach()))
                if trace is not None:
                    trace.append(residual)
            if self.tol > 0 and residual < self.tol:
                break
        stats = self._stats(run, residual, trace)
        loss = self._penalty(h, h_prev, stats)
        return h, stats, loss

    def _penalty(self, h_next, h_in, stats):
        """Computes the penalty (differentiable in penalised modes) and fills the stats."""
        if self.penalty == "none":
            return None
        differentiable = self.mode in PENALIZED_MODES
        if self.penalty == "lcp":
            value, column_sums = lipschitz_penalty(
                h_next, h_in, self.lcp_lambda, self.penalty_reduction, create_graph=differentiable)
            if column_sums.numel():
                stats.max_column_sum = float(column_sums.detach().max())
        else:
            value = jacobian_frobenius_penalty(
                h_next, h_in, self.hutchinson_samples, create_graph=differentiable)
        stats.penalty = float(value.detach())
        return self.penalty_weight * value if differentiable else None

    def _backward_hook(self, stats: RecurrenceStats) -> Callable[[BackwardStats], None]:
        def on_backward(backward_stats: BackwardStats):
            stats.backward = backward_stats
            self.last_backward = backward_stats
            self.consecutive_divergences = self.consecutive_divergences + 1 if backward_stats.diverged else 0
            self.divergence_events += int(backward_stats.diverged)
        return on_backward

    # ------------------------------------------------------------------ records
    def _remember(self, record: RecurrenceRecord):
        if record.loss is not None and len(self._records) >= MAX_PENDING_RECORDS:
            raise RuntimeError(
                f"A recurrent block has {len(self._records)} uncollected penalty records: each "
                "training forward leaves its penalty on the block, to be taken by "
                "crbp_detectron.crbp.collect_recurrence(model) once per iteration (or use "
                "forward(..., return_record=True) and clear_records()).")
        if record.loss is None and len(self._records) >= MAX_PENDING_RECORDS:
            self._records.pop(0)  # stats only: keep the latest
        self._records.append(record)

    def pop_records(self) -> List[RecurrenceRecord]:
        """The records of the calls since the last pop, oldest first; clears them."""
        records, self._records = self._records, []
        return records

    def clear_records(self):
        self._records = []

"""One module that runs any cell f(x, h) -> h to equilibrium and trains it in one of four modes.

    crbp   N-1 steps without a graph, one step at the equilibrium h*, the RBP gradient (a backward
           solver's z from VJPs through that step) and a differentiable contraction penalty (LCP).
           Memory O(1) in N.
    rbp    the same gradient; the penalty is computed for logging only.
    bptt   all N steps recorded; ordinary back-propagation through time. Memory O(N).
    cbptt  BPTT plus the differentiable penalty on the last step.

The implicit modes keep their step in one of two ways (backward.py): "recompute" (the default)
keeps only x, h* and the parameters and recomputes the step and the penalty in the backward;
"recorded" keeps the step's graph and the penalty's double-backward graph. Same gradients.

In eval mode (or under torch.no_grad) the block runs `test_steps` iterations with no graph; if
gradients are enabled in eval mode they flow with the RBP gradient, in every mode (but not while
traced or exported: torch.jit.trace, torch.export and ONNX get the graph-free iteration). The
graph-free iterations are a forward solver's (solver.py: plain iteration, or Anderson acceleration),
with `steps` (`test_steps`) as its budget of cell evaluations, the recorded step included. With
`tol` > 0 every sample (dim 0) stops once it has converged (for plain iteration: its estimated
distance to the fixed point is under `tol`; for Anderson: its relative residual), and stopped
samples stop costing compute where the cell allows it.

A note on gated cells: at an exact equilibrium a GRU-style update h = (1-g) h + g h~ satisfies
g * (h~(h*) - h*) = 0 with g > 0, so h* = h~(h*): the gate sets how fast h moves, not where it
settles, and the implicit (RBP) gradient of the task loss w.r.t. the gate's parameters is zero.
Only the penalty and unconverged steps train them.
"""
import math
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import nn

from .arguments import check_choice
from .backward import ImplicitStep, attach_rbp_gradient, implicit_step, trainable_parameters
from .backward_solvers import BackwardConfig
from .penalties import PENALTIES, REDUCTIONS, jacobian_frobenius_penalty, lipschitz_penalty
from .solver import (FixedPointMap, ForwardConfig, IterationResult, compiled_cell, relative_residual,
                     samples_independent, solve_forward)
from .stats import BackwardStats, RecurrenceStats

MODES = ("crbp", "rbp", "bptt", "cbptt")
IMPLICIT_STEPS = ("recompute", "recorded")
# Modes whose penalty is part of the loss; the others compute it for logging only.
PENALIZED_MODES = ("crbp", "cbptt")
# Records a block keeps in training before someone collects them (see `pop_records`). Penalties
# hold their graphs, so an uncollected block would leak memory: past this we raise instead.
MAX_PENDING_RECORDS = 64


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


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
        tol: per-sample early stop of the graph-free iterations once a sample has converged to
            `tol` (solver.py says what each solver compares with it; 0 disables the early stop).
        forward_solver: "plain" or "anderson" (solver.py), the solver of the graph-free
            iterations, in training and evaluation; forward_window, forward_beta, forward_ridge:
            Anderson's window, mixing and regularisation (ForwardConfig).
        forward_compile: evaluate the cell in the graph-free iterations through torch.compile
            (`compiled_cell`): the same function to round-off, faster; the recorded step, BPTT
            and the backward stay eager.
        backward_solver: "gmres", "neumann" or "bicgstab" (backward_solvers.py);
        backward_max_vjps, backward_tol, backward_restart: its VJP budget, relative residual
            tolerance, and GMRES restart length; divergence_window, divergence_growth_bound: what
            counts as divergence (BackwardConfig).
        implicit_step: "recompute" or "recorded" (how the step at h* is kept for the backward).
        implicit_chunk: with "recompute", the step at h* (its penalty's value in the forward; its
            recomputation, VJPs and gradients in the backward) over this many samples at a time
            (0: all at once): the backward's peak memory holds one chunk's graph, at the cost of
            one more step's forward per VJP; the same gradients. Needs a cell whose samples are
            independent (solver.samples_independent: not BatchNorm with batch statistics).
        penalty: "lcp", "jacobian_frobenius" or "none".
        lcp_lambda: the LCP's target lambda; penalty_reduction: "mean" or "sum" over elements.
        lcp_absolute: penalise |1^T J| instead of the signed column sums 1^T J (large negative
            sums count too).
        penalty_weight: the penalty's weight in the loss. The record's `loss` is
            weight x `penalty_scale` x penalty; `penalty_scale` (1 by default) is what a penalty
            schedule changes during training (`collect.set_penalty_scale`); at scale 0 the
            penalty is computed for the statistics only, without its double-backward graph.
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
        forward_solver: str = "plain",
        forward_window: int = 5,
        forward_beta: float = 1.0,
        forward_ridge: float = 1e-6,
        forward_compile: bool = False,
        backward_solver: str = "gmres",
        backward_max_vjps: int = 15,
        backward_tol: float = 1e-10,
        backward_restart: int = 20,
        divergence_window: int = 100,
        divergence_growth_bound: float = 1e6,
        implicit_step: str = "recompute",
        implicit_chunk: int = 0,
        penalty: str = "lcp",
        lcp_lambda: float = 0.9,
        penalty_reduction: str = "mean",
        lcp_absolute: bool = False,
        penalty_weight: float = 1.0,
        hutchinson_samples: int = 1,
        record_trace: bool = False,
    ):
        super().__init__()
        check_choice("Recurrence mode", mode, MODES)
        check_choice("Recurrence penalty", penalty, PENALTIES)
        check_choice("penalty_reduction", penalty_reduction, REDUCTIONS)
        check_choice("implicit_step", implicit_step, IMPLICIT_STEPS)
        if steps < 1 or (test_steps is not None and test_steps < 1):
            raise ValueError(f"steps and test_steps must be >= 1, got {steps} and {test_steps}")
        if not tol >= 0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        if not (isinstance(implicit_chunk, int) and implicit_chunk >= 0):
            raise ValueError(f"implicit_chunk must be an integer >= 0 (0: all samples at once), got {implicit_chunk!r}")
        if implicit_chunk and implicit_step != "recompute":
            raise ValueError(f"implicit_chunk = {implicit_chunk} needs implicit_step 'recompute' (the recorded step "
                             f"keeps the whole batch's graph), got implicit_step {implicit_step!r}")
        self.cell = cell
        self.mode = mode
        self.steps = steps
        self.test_steps = test_steps
        self.tol = tol
        self.forward_config = ForwardConfig(solver=forward_solver, window=forward_window, beta=forward_beta,
                                            ridge=forward_ridge, compile=forward_compile)
        self.backward_config = BackwardConfig(
            solver=backward_solver, max_vjps=backward_max_vjps, tol=backward_tol,
            growth_bound=divergence_growth_bound, window=divergence_window, restart=backward_restart)
        self.implicit_step = implicit_step
        self.implicit_chunk = implicit_chunk
        self.penalty = penalty
        self.lcp_lambda = lcp_lambda
        self.penalty_reduction = penalty_reduction
        self.lcp_absolute = lcp_absolute
        self.penalty_weight = penalty_weight
        self.penalty_scale = 1.0
        self.hutchinson_samples = hutchinson_samples
        self.record_trace = record_trace
        self._records: List[RecurrenceRecord] = []
        self.last_backward: Optional[BackwardStats] = None
        self.consecutive_divergences = 0  # backward passes in a row whose solve diverged
        self.divergence_events = 0  # backward passes whose solve diverged, in all

    def extra_repr(self):
        return (f"mode={self.mode}, steps={self.steps}, test_steps={self.test_steps}, tol={self.tol}, "
                f"forward={self.forward_config.solver}{' (compiled)' if self.forward_config.compile else ''}, "
                f"backward={self.backward_config.solver}({self.backward_config.max_vjps}), "
                f"implicit_step={self.implicit_step}, implicit_chunk={self.implicit_chunk}, penalty={self.penalty}, "
                f"lcp_lambda={self.lcp_lambda}, weight={self.penalty_weight}")

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None, return_record: bool = False):
        """Returns the final state, or (state, RecurrenceRecord) if `return_record`.

        Without `return_record` the record stays on the block until `pop_records` (which
        `collect_recurrence` calls) takes it.

        h0 is a constant initial condition: no gradient flows into it, in any mode.
        """
        h = self.initial_state(x) if h0 is None else h0.detach()
        trace = [] if self.record_trace else None
        # Traced or exported for inference (torch.jit.trace, torch.export, ONNX): graph-free, even
        # with gradients enabled (the RBP gradient's autograd.Function has nothing to export).
        grad = torch.is_grad_enabled() and (self.training or not _exporting())
        steps = self.steps if self.training else self._eval_steps
        if self.training and grad and self.mode in ("bptt", "cbptt"):
            h, stats, loss = self._unrolled(x, h, trace)
        elif grad:
            h, stats, loss = self._implicit(x, h, steps, trace, with_penalty=self.training)
        else:
            run = self._solve(x, h, steps, trace)
            h, stats, loss = run.h, self._stats(run, trace), None
        record = RecurrenceRecord(loss, stats)
        if return_record:  # the caller takes the record; nothing is left on the block
            return h, record
        self._remember(record)
        return h

    @property
    def _eval_steps(self):
        return self.steps if self.test_steps is None else self.test_steps

    def initial_state(self, x):
        """h0 for drive x: the cell's `initial_state(x)` if it has one, else zeros like x."""
        init = getattr(self.cell, "initial_state", None)
        return init(x) if callable(init) else torch.zeros_like(x)

    def _solve(self, x, h, budget, trace) -> IterationResult:
        """The graph-free iterations: the forward solver on h -> cell(x, h)."""
        cell = compiled_cell(self.cell) if self.forward_config.compile and not _exporting() else self.cell
        return solve_forward(FixedPointMap(cell, x, samples_independent(self.cell)), h, budget, self.tol,
                             self.forward_config, trace)

    def _stats(self, run: IterationResult, trace, extra_steps: int = 0) -> RecurrenceStats:
        stats = RecurrenceStats(mode=self.mode, steps=run.steps + extra_steps, residual=run.residual,
                                converged=False, residual_trace=trace, evaluations=float(run.steps + extra_steps))
        if self.tol > 0 and run.distance is not None and run.distance.numel():
            converged = run.distance < self.tol
            stats.converged = bool(converged.all())
            stats.converged_fraction = float(converged.double().mean())
            stats.distance = float(run.distance.max())
            stats.mean_steps = float(run.sample_steps.double().mean()) + extra_steps
            stats.evaluations = stats.mean_steps
        return stats

    def _implicit(self, x, h, steps, trace, with_penalty):
        """N-1 graph-free steps, one step at h* with the RBP gradient (and the penalty)."""
        run = self._solve(x, h, steps - 1, trace)
        stats = self._stats(run, trace, extra_steps=1)
        penalised = with_penalty and self.penalty != "none"
        differentiable = penalised and self._penalty_trains
        penalty_fn = self._penalty_fn(stats) if penalised else None
        h_star = run.h.detach()
        if self.implicit_step == "recompute":
            if self.implicit_chunk and h_star.shape[0] > self.implicit_chunk and not samples_independent(self.cell):
                raise ValueError(f"implicit_chunk = {self.implicit_chunk}: this cell couples the samples of a batch "
                                 "(BatchNorm with batch statistics), so its step cannot be taken in chunks of "
                                 "samples; use implicit_chunk 0")
            spec = ImplicitStep(cell=self.cell, config=self.backward_config, penalty=penalty_fn,
                                differentiable_penalty=differentiable, on_backward=self._backward_hook(stats),
                                params=trainable_parameters(self.cell), chunk=self.implicit_chunk)
            h_next, value = implicit_step(spec, x, h_star)
        else:
            h_star = h_star.requires_grad_()
            h_next = self.cell(x, h_star)
            value = penalty_fn(h_next, h_star, differentiable) if penalised else None
            h_next = attach_rbp_gradient(h_next, h_star, self.backward_config, self._backward_hook(stats))
        stats.residual = float(relative_residual(h_next.detach(), h_star.detach()))
        if trace is not None:
            trace.append(stats.residual)
        return h_next, stats, self._penalty_loss(value) if differentiable else None

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
        stats = RecurrenceStats(mode=self.mode, steps=run, residual=residual,
                                converged=self.tol > 0 and residual < self.tol, residual_trace=trace,
                                evaluations=float(run))
        loss = None
        if self.penalty != "none":
            differentiable = self._penalty_trains
            value = self._penalty_fn(stats)(h, h_prev, differentiable)
            loss = self._penalty_loss(value) if differentiable else None
        return h, stats, loss

    @property
    def _penalty_trains(self) -> bool:
        """Whether the penalty is part of the loss (differentiable): a penalised mode, scale > 0.
        Otherwise it is computed for the statistics only, without its double-backward graph."""
        return self.mode in PENALIZED_MODES and self.penalty_scale > 0

    def _penalty_loss(self, value):
        return self.penalty_weight * self.penalty_scale * value

    def _penalty_fn(self, stats: RecurrenceStats):
        """penalty(h_next, h_in, create_graph, of=None, record=True) -> the unweighted penalty; fills
        the stats. The one place both implicit steps and BPTT compute the penalty (through
        penalties.py). With `of` (the batch's state elements) h_next is a chunk of the batch and the
        result the chunk's share (backward.ImplicitStep); its statistics add to the earlier chunks'."""
        def penalty(h_next, h_in, create_graph, of=None, record=True):
            column_max = None
            if self.penalty == "lcp":
                reduction = self.penalty_reduction if of is None else "sum"
                value, column_sums = lipschitz_penalty(
                    h_next, h_in, self.lcp_lambda, reduction, create_graph=create_graph,
                    absolute=self.lcp_absolute)
                if of is not None and self.penalty_reduction == "mean":
                    value = value / of
                if column_sums.numel():
                    column_max = float(column_sums.detach().max())
            else:  # a mean over elements; a chunk draws its own random vectors
                value = jacobian_frobenius_penalty(
                    h_next, h_in, self.hutchinson_samples, create_graph=create_graph)
                if of is not None:
                    value = value * (h_in.numel() / of)
            if record and of is None:
                stats.max_column_sum = column_max if column_max is not None else stats.max_column_sum
                stats.penalty = float(value.detach())
            elif record:
                if column_max is not None:
                    stats.max_column_sum = max(column_max, stats.max_column_sum or -math.inf)
                stats.penalty = (stats.penalty or 0.0) + float(value.detach())
            return value
        return penalty

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

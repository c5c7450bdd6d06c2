"""Forward solvers of the fixed point h* = f(x, h*), graph-free, with a per-sample stop.

One interface (as for the backward, backward_solvers.py): a solver gets the map z -> f(z)
(`FixedPointMap`: a cell with its drive x bound), the starting state, a budget of map evaluations
and a tolerance, and returns an `IterationResult`; it never sees the model. `solve_forward`
dispatches on `ForwardConfig.solver`:

    plain     h_t+1 = f(h_t), today's iteration (`iterate` is it, for a cell and x).
    anderson  Anderson acceleration (Anderson 1965; Walker & Ni 2011), per sample: each sample
              (dim 0: an image, an RoI) solves its own small least-squares problem over the last
              `window` residuals, so samples never mix. Costs 2 x `window` state-sized buffers.

Convergence is judged per sample (dim 0), and samples that have converged stop costing compute:
only the active ones are evaluated, when the cell treats samples independently. A cell whose output
for one sample depends on the others (BatchNorm with batch statistics: in training, or with
track_running_stats=False) cannot be sliced: the whole batch is evaluated until every sample has
converged. `samples_independent` decides (a cell may declare `samples_independent = False`/`True`).

What `tol` is compared with:
  plain     an estimate of the distance to the fixed point rather than the step size alone: for a
            map contracting at rate q, ||h_t+1 - h*|| <= q / (1 - q) ||h_t+1 - h_t||. With slow
            gates (g ~ 1/T) the steps are small while h is still far from h* (q near 1), and the
            step size alone would stop far too early; the factor q / (1 - q) accounts for that.
            q is estimated per sample from the ratio of successive step sizes (the larger of the
            last two ratios, for some robustness to oscillation); a sample whose steps do not
            shrink is never judged converged. It is an estimate, not a bound: early in a run the
            fast modes decay first and q looks smaller than the rate that will govern later steps
            (on the trained demo mask head the ratio rises from 0.35 at step 2 to 0.94 at step
            20), so a loose tolerance can stop a sample after a few steps; keep TOL small (1e-3 or
            less).
  anderson  the relative residual ||f(z) - z|| / ||f(z)|| of the sample's latest evaluation (the
            step sizes of an extrapolating solver say nothing about its rate); the sample's state
            is then f(z), one plain step further.
"""
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import torch
from torch import nn

from .arguments import check_choice

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


_COMPILED: "weakref.WeakKeyDictionary[nn.Module, Cell]" = weakref.WeakKeyDictionary()


def compiled_cell(cell: nn.Module) -> Cell:
    """`torch.compile(cell)`, made once per cell and kept beside it (not as a submodule: the
    cell's state dict, checkpoints and copies are unchanged). It shares the cell's parameters and
    buffers, so optimiser steps and BatchNorm statistics are seen and updated as by the cell.
    Shapes are dynamic (batches of RoIs vary); a new mode (train / eval) or device recompiles."""
    compiled = _COMPILED.get(cell)
    if compiled is None:
        compiled = _COMPILED[cell] = torch.compile(cell, dynamic=True)
    return compiled


class FixedPointMap:
    """z -> cell(x, z) for the samples `rows` of the batch (all of them by default).

    `sliceable` says whether the map may be evaluated on a subset of the samples
    (`samples_independent(cell)`); `rows(index)` is then the map on those samples only."""

    def __init__(self, cell: Cell, x: torch.Tensor, sliceable: Optional[bool] = None):
        self.cell, self.x = cell, x
        self.sliceable = samples_independent(cell) if sliceable is None else sliceable

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.cell(self.x, z)

    def rows(self, index: torch.Tensor) -> "FixedPointMap":
        if not self.sliceable:
            raise ValueError("this map couples its samples: it cannot be evaluated on a subset of them")
        return FixedPointMap(self.cell, self.x.index_select(0, index), sliceable=True)


@dataclass
class IterationResult:
    h: torch.Tensor
    steps: int  # map evaluations of the longest-running sample
    residual: Union[float, torch.Tensor]  # batch relative residual of the last evaluation (nan if none ran)
    sample_steps: Optional[torch.Tensor] = None  # map evaluations per sample (with a tolerance)
    distance: Optional[torch.Tensor] = None  # per sample, what `tol` was compared with (module docstring)
    sliced: bool = False  # whether converged samples were dropped from the evaluations


@dataclass(frozen=True)
class ForwardConfig:
    """The forward solver and its options (Anderson's; plain iteration has none).

    window: residuals in Anderson's least-squares problem (m). beta: mixing (damping) of the map's
    output into the extrapolated state, 1 = undamped. ridge: Tikhonov regularisation of the
    least-squares problem, relative to the largest diagonal entry of its Gram matrix: it bounds
    the problem's conditioning (nearly collinear residuals near convergence) at ~1 / ridge."""

    solver: str = "plain"
    window: int = 5
    beta: float = 1.0
    ridge: float = 1e-6
    compile: bool = False  # the map's cell through torch.compile (`compiled_cell`)

    def __post_init__(self):
        check_choice("forward solver", self.solver, FORWARD_SOLVERS)
        if not (isinstance(self.window, int) and self.window >= 1):
            raise ValueError(f"forward window must be an integer >= 1, got {self.window!r}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"forward beta must be in (0, 1], got {self.beta!r}")
        if not 0 <= self.ridge < 1:
            raise ValueError(f"forward ridge must be in [0, 1), got {self.ridge!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"forward compile must be True or False, got {self.compile!r}")


Solver = Callable[[FixedPointMap, torch.Tensor, int, float, ForwardConfig, Optional[List[float]]], IterationResult]
FORWARD_SOLVERS: Dict[str, Solver] = {}


def register_forward_solver(name: str):
    """Adds `solve(f, h, budget, tol, config, trace) -> IterationResult` to FORWARD_SOLVERS."""
    def register(fn):
        FORWARD_SOLVERS[name] = fn
        return fn
    return register


@torch.no_grad()
def solve_forward(f: FixedPointMap, h: torch.Tensor, budget: int, tol: float = 0.0,
                  config: Optional[ForwardConfig] = None, trace: Optional[List[float]] = None) -> IterationResult:
    """Runs `config.solver` from `h` with no graph, for at most `budget` evaluations of `f` per sample.

    tol > 0: each sample stops once its convergence measure (module docstring) is under `tol`; the
    call returns when all have. tol <= 0: exactly `budget` evaluations, and the result's residual a
    0-dim tensor: no Python number is taken from the data (no host sync; `torch.export` and
    tracing see no data-dependent value). `trace` gets the batch relative residual of each
    evaluation (floats).
    """
    config = PLAIN if config is None else config
    return FORWARD_SOLVERS[config.solver](f, h, budget, tol, config, trace)


def iterate(cell: Cell, x: torch.Tensor, h: torch.Tensor, steps: int, tol: float = 0.0,
            trace: Optional[List[float]] = None) -> IterationResult:
    """Plain iteration of `cell` from `h`: `solve_forward` with the plain solver."""
    return solve_forward(FixedPointMap(cell, x), h, steps, tol, PLAIN, trace)


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def _batch_residual(step_size: torch.Tensor, scale: torch.Tensor) -> float:
    num, den = float(step_size.pow(2).sum().sqrt()), float(scale.pow(2).sum().sqrt())
    return num / den if den > 0 else num


@register_forward_solver("plain")
def plain(f: FixedPointMap, h: torch.Tensor, steps: int, tol: float, config: ForwardConfig,
          trace: Optional[List[float]]) -> IterationResult:
    """h_t+1 = f(h_t); tol: the distance estimate q / (1 - q) ||h_t+1 - h_t|| / ||h_t+1||."""
    if tol <= 0 or h.shape[0] == 0:
        residual = float("nan")
        for t in range(steps):
            h_next = f(h)
            if trace is not None or t == steps - 1:
                residual = relative_residual(h_next, h)
                if trace is not None:
                    trace.append(float(residual))
            h = h_next
        return IterationResult(h, steps, residual)

    batch = h.shape[0]
    sliced = f.sliceable
    sample_steps = torch.zeros(batch, dtype=torch.long, device=h.device)
    step_size = torch.zeros(batch, dtype=torch.float64, device=h.device)  # ||h_t+1 - h_t|| per sample
    scale = torch.zeros(batch, dtype=torch.float64, device=h.device)  # ||h_t+1|| per sample
    ratios = torch.full((2, batch), float("inf"), dtype=torch.float64, device=h.device)
    distance = torch.full((batch,), float("inf"), dtype=torch.float64, device=h.device)
    active = torch.arange(batch, device=h.device)
    f_active, run = f, 0
    for t in range(steps):
        if sliced:
            h_prev_active = h.index_select(0, active)
            h_next_active = f_active(h_prev_active)
            h = h.index_copy(0, active, h_next_active)
        else:
            h_next_active, h_prev_active = f(h), h
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
            f_active = f.rows(active)
    return IterationResult(h, run, _batch_residual(step_size, scale), sample_steps, distance, sliced)


def _anderson_coefficients(d_res: torch.Tensor, res: torch.Tensor, ridge: float) -> torch.Tensor:
    """gamma = argmin ||res - d_res^T gamma||^2 + lambda ||gamma||^2 per sample, d_res [B, m, n],
    res [B, n], lambda = ridge x the largest diagonal entry of the Gram matrix (float64 solve)."""
    gram = torch.bmm(d_res, d_res.transpose(1, 2)).double()
    rhs = torch.bmm(d_res, res.unsqueeze(2)).double()
    scale = gram.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
    # A sample whose residuals are all zero (at its fixed point) gets gamma = 0.
    gamma = torch.linalg.solve(gram + (ridge * scale).view(-1, 1, 1) * eye + eye * torch.finfo(gram.dtype).tiny, rhs)
    return gamma.to(res.dtype)


@register_forward_solver("anderson")
def anderson(f: FixedPointMap, h: torch.Tensor, budget: int, tol: float, config: ForwardConfig,
             trace: Optional[List[float]]) -> IterationResult:
    """Anderson acceleration (type II, in differences), per sample. With X_k the states, G_k =
    f(X_k) - X_k their residuals and the last m differences dX, dG:
        gamma = argmin ||G_k - dG gamma||^2 + lambda ||gamma||^2
        X_k+1 = X_k + beta G_k - (dX + beta dG) gamma
    (the first step is a damped plain step). tol: the relative residual ||G_k|| / ||f(X_k)||;
    a sample's result is f(X_k) of its last evaluation."""
    batch = h.shape[0]
    if budget <= 0 or batch == 0:
        return IterationResult(h, 0, float("nan") if tol > 0 or budget <= 0 else h.new_zeros(()),
                               torch.zeros(batch, dtype=torch.long, device=h.device) if tol > 0 else None,
                               None, False)
    m, beta = config.window, config.beta
    sliced = f.sliceable and tol > 0
    shape = h.shape
    out = h.clone()  # f(X_k) of each sample's latest evaluation
    sample_steps = torch.zeros(batch, dtype=torch.long, device=h.device)
    residual_norm = torch.zeros(batch, dtype=torch.float64, device=h.device)
    scale = torch.zeros(batch, dtype=torch.float64, device=h.device)
    distance = torch.full((batch,), float("inf"), dtype=torch.float64, device=h.device)
    active = torch.arange(batch, device=h.device)
    f_active = f
    x_k = h.reshape(batch, -1)
    d_x = d_g = None  # [B, m, n] ring buffers of the last m differences
    g_prev = x_prev = None
    run, filled, residual = 0, 0, None
    for k in range(budget):
        f_k = f_active(x_k.view((x_k.shape[0],) + shape[1:])).reshape(x_k.shape[0], -1)
        g_k = f_k - x_k
        run = k + 1
        sample_steps[active] += 1
        res_norm = g_k.norm(dim=1).double()
        f_norm = f_k.norm(dim=1).double()
        residual_norm[active], scale[active] = res_norm, f_norm
        if tol <= 0:
            out = f_k
            if trace is not None or k == budget - 1:
                residual = relative_residual(f_k, x_k)
                if trace is not None:
                    trace.append(float(residual))
        else:
            out.view(batch, -1)[active] = f_k
            rel = torch.where(f_norm > 0, res_norm / f_norm.clamp_min(1e-300), res_norm)
            distance[active] = rel
            if trace is not None:
                trace.append(_batch_residual(residual_norm, scale))
            still = rel >= tol
            if not bool(still.any()) or k == budget - 1:
                break
            if sliced and not bool(still.all()):
                keep = still.nonzero().squeeze(1)
                active = active[keep]
                f_active = f.rows(active)
                x_k, f_k, g_k = x_k[keep], f_k[keep], g_k[keep]
                g_prev, x_prev = g_prev[keep] if g_prev is not None else None, x_prev[keep] if x_prev is not None else None
                if d_x is not None:
                    d_x, d_g = d_x[keep], d_g[keep]
        if k == budget - 1:
            break
        if g_prev is not None:  # the newest differences into the ring buffer
            if d_x is None:
                d_x = x_k.new_zeros((x_k.shape[0], m, x_k.shape[1]))
                d_g = torch.zeros_like(d_x)
            slot = (k - 1) % m
            d_x[:, slot] = x_k - x_prev
            d_g[:, slot] = g_k - g_prev
            filled = min(filled + 1, m)
        x_next = x_k + beta * g_k
        if filled:
            gamma = _anderson_coefficients(d_g[:, :filled], g_k, config.ridge)
            coeffs = gamma.transpose(1, 2)
            x_next = x_next - torch.bmm(coeffs, d_x[:, :filled]).squeeze(1) - beta * torch.bmm(coeffs, d_g[:, :filled]).squeeze(1)
        x_prev, g_prev, x_k = x_k, g_k, x_next
    if tol <= 0:
        return IterationResult(out.view(shape), run, residual)
    return IterationResult(out, run, _batch_residual(residual_norm, scale), sample_steps, distance, sliced)


PLAIN = ForwardConfig()  # after the solvers are registered

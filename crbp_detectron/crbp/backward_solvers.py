"""Solvers for the RBP backward's linear system (I - J^T) z = g, seeing only a VJP v -> J^T v.

At an equilibrium h* = f(x, h*) the implicit gradient needs z with z^T (I - J) = g^T, J = df/dh
at h*, g = dL/dh*. A solver gets `vjp(v) = v^T J` (one VJP through one step), g and a
`BackwardConfig`; it never sees the model (as in torchdeq's solver registry). Solvers:

    neumann   z = sum_k g^T J^k, one VJP per term; converges iff rho(J) < 1, slowly when
              rho(J) is near 1 or J is far from normal (terms may grow for a while first).
    gmres     restarted GMRES (Saad & Schultz 1986) on (I - J^T) z = g: the z of least residual in
              the Krylov space of the VJPs computed so far, so never worse than the Neumann sum
              with the same VJPs (whose z lies in that space); `restart` + 1 state-sized vectors.
    bicgstab  BiCGStab (van der Vorst 1992): constant memory (7 vectors), two VJPs per iteration.

Every solver returns the iterate of least residual it saw, with `BackwardStats` describing THAT
iterate: VJPs that built it, its relative residual ||g - (I - J^T) z|| / ||g||, whether that is
under `tol`; `diverged` only on evidence that the solve cannot succeed:
  * a non-finite VJP or iterate,
  * growth past `growth_bound` x ||g|| (a term of the Neumann series, or z itself),
  * (neumann) no net decrease over a window: the largest term among the last `window` is not
    smaller than the largest among the `window` before.
Transient growth of a non-normal contraction (||g^T J^k|| rising for many terms before it decays)
is none of these, so it is never taken for divergence.

The solve runs in float32 or float64 (float64 only for float64 states): bfloat16/float16 states
under autocast are solved in float32. Every criterion is relative to ||g||, so a scaled loss
(AMP's loss scale) changes nothing but the scale of z.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

from .arguments import check_choice
from .stats import BackwardStats

VJP = Callable[[torch.Tensor], torch.Tensor]
BACKWARD_SOLVERS: Dict[str, Callable[[VJP, torch.Tensor, "BackwardConfig"], Tuple[torch.Tensor, BackwardStats]]] = {}


def register_backward_solver(name: str):
    """Adds `solve(vjp, g, config) -> (z, BackwardStats)` to BACKWARD_SOLVERS under `name`."""
    def register(fn):
        BACKWARD_SOLVERS[name] = fn
        return fn
    return register


@dataclass(frozen=True)
class BackwardConfig:
    solver: str = "gmres"
    max_vjps: int = 15  # VJPs at most (the paper's 15 Neumann terms)
    tol: float = 1e-10  # relative residual to stop at (never below what the dtype can reach)
    growth_bound: float = 1e6  # ||term|| or ||z|| beyond this x ||g||: diverged
    window: int = 100  # neumann: no net decrease over this many terms: diverged (> a transient's rise)
    restart: int = 20  # gmres: Krylov vectors kept before a restart

    def __post_init__(self):
        check_choice("backward solver", self.solver, BACKWARD_SOLVERS)
        if self.max_vjps < 0:
            raise ValueError(f"backward max_vjps must be >= 0, got {self.max_vjps}")
        if not self.tol >= 0:
            raise ValueError(f"backward tol must be >= 0, got {self.tol}")
        if not self.growth_bound > 1:
            raise ValueError(f"backward growth_bound must be > 1, got {self.growth_bound}")
        if self.window < 1:
            raise ValueError(f"backward window must be >= 1, got {self.window}")
        if self.restart < 1:
            raise ValueError(f"backward restart must be >= 1, got {self.restart}")


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _reachable_tol(config: BackwardConfig, dtype: torch.dtype) -> float:
    # A relative residual much below the dtype's rounding cannot be reached; stop there instead of
    # spending the VJP budget on rounding noise.
    return max(config.tol, 10 * torch.finfo(dtype).eps)


def solve_backward(vjp: VJP, g: torch.Tensor, config: BackwardConfig) -> Tuple[torch.Tensor, BackwardStats]:
    """z with (I - J^T) z = g by `config.solver`, in float32 (float64 for float64 g); z has g's
    dtype. A non-finite g gives zeros and `diverged` (no NaN reaches the weights through here);
    a zero g gives zeros at no cost."""
    dtype = work_dtype(g.dtype)
    g_work = g.detach().to(dtype)
    g_norm = float(g_work.norm())
    if not math.isfinite(g_norm):
        return torch.zeros_like(g), BackwardStats(solver=config.solver, diverged=True)
    if g_norm == 0.0:
        return torch.zeros_like(g), BackwardStats(solver=config.solver, residual=0.0, converged=True)

    def vjp_work(v):
        return vjp(v.to(g.dtype)).to(dtype)

    z, stats = BACKWARD_SOLVERS[config.solver](vjp_work, g_work, config)
    return z.to(g.dtype), stats


@register_backward_solver("neumann")
def neumann(vjp: VJP, g: torch.Tensor, config: BackwardConfig) -> Tuple[torch.Tensor, BackwardStats]:
    """z_k = sum_{j<=k} g^T J^j; the residual of z_k is ||g^T J^(k+1)|| (the next term), so each
    iterate's residual is known exactly once its next term is computed."""
    g_norm = float(g.norm())
    tol = _reachable_tol(config, g.dtype)
    stats = BackwardStats(solver="neumann")
    z, v = g, g
    best_z, best_terms, best_residual = g, 0, math.inf
    norms = [g_norm]  # ||v_k||, k = 0, 1, ...
    for k in range(1, config.max_vjps + 1):
        v = vjp(v)
        stats.vjps = k
        v_norm = float(v.norm())
        if not math.isfinite(v_norm):
            stats.diverged = True
            break
        residual = v_norm / g_norm  # of z = z_{k-1}, which holds k - 1 VJP terms
        if residual < best_residual:
            best_z, best_terms, best_residual = z, k - 1, residual
        if residual < tol:
            break
        norms.append(v_norm)
        if residual > config.growth_bound or _no_net_decrease(norms, config.window):
            stats.diverged = True
            break
        z = z + v
    stats.vjps_in_result, stats.residual = best_terms, best_residual
    stats.converged = best_residual < tol
    return best_z, stats


def _no_net_decrease(norms, window: int) -> bool:
    """The largest of the last `window` norms is not below the largest of the `window` before."""
    if len(norms) < 2 * window:
        return False
    return max(norms[-window:]) >= max(norms[-2 * window:-window])


PROJECTION_SEGMENT = 1 << 20  # elements


@register_backward_solver("gmres")
def gmres(vjp: VJP, g: torch.Tensor, config: BackwardConfig) -> Tuple[torch.Tensor, BackwardStats]:
    """Restarted GMRES(restart) with classical Gram-Schmidt applied twice (CGS2: orthogonal to
    working precision, two matrix-vector products per step instead of j dot products). The small
    Hessenberg least-squares problem is solved in float64 with Givens rotations, which give each
    step's residual without another VJP."""
    g_norm = float(g.norm())
    tol = _reachable_tol(config, g.dtype)
    n = g.numel()
    stats = BackwardStats(solver="gmres")
    # Memory: the basis and two state-sized vectors at most. The solve's peak is the backward's
    # (issue 27), so no other vector is kept: the residual is g until a restart, z exists only once a
    # cycle ends, and the last basis vector of the budget's last cycle is never written (only a
    # restart would use it).
    z = None
    r = g.reshape(-1)
    beta = g_norm
    residual = 1.0
    stats.residual = 1.0  # of z = 0
    while stats.vjps < config.max_vjps and residual >= tol:
        m = min(config.restart, config.max_vjps - stats.vjps)
        basis = g.new_empty((m + 1, n))
        torch.div(r, beta, out=basis[0])
        r = None
        hess = torch.zeros((m + 1, m), dtype=torch.float64)
        cs, sn = torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
        gamma = torch.zeros(m + 1, dtype=torch.float64)
        gamma[0] = beta
        steps, breakdown, bad = 0, False, False
        for j in range(m):
            w = vjp(basis[j].view_as(g)).reshape(-1)
            if w.untyped_storage().data_ptr() == basis.untyped_storage().data_ptr():
                w = w.clone()  # a VJP that returned its input (J = I): never write into the basis
            w = torch.sub(basis[j], w, out=w)  # (I - J^T) v_j, in the VJP's own storage
            stats.vjps += 1
            coeffs = torch.zeros(j + 1, dtype=g.dtype, device=g.device)
            for _ in range(2):  # CGS2
                c = basis[:j + 1] @ w
                for s in range(0, n, PROJECTION_SEGMENT):  # the projection's temporary: a segment's, not a state's
                    w[s:s + PROJECTION_SEGMENT].sub_(basis[:j + 1, s:s + PROJECTION_SEGMENT].T @ c)
                coeffs = coeffs + c
            h_next = float(w.norm())
            column = torch.cat([coeffs.double().cpu(), torch.tensor([h_next], dtype=torch.float64)])
            if not torch.isfinite(column).all():
                bad = True
                break
            for i in range(j):  # apply the previous rotations to the new column
                a, b = column[i].clone(), column[i + 1].clone()
                column[i], column[i + 1] = cs[i] * a + sn[i] * b, -sn[i] * a + cs[i] * b
            denom = math.hypot(float(column[j]), float(column[j + 1]))
            cs[j], sn[j] = column[j] / denom, column[j + 1] / denom
            column[j], column[j + 1] = denom, 0.0
            gamma[j + 1] = -sn[j] * gamma[j]
            gamma[j] = cs[j] * gamma[j]
            hess[:j + 2, j] = column[:j + 2]
            steps = j + 1
            residual = abs(float(gamma[j + 1])) / g_norm
            if residual < tol or h_next <= 1e-14 * beta:
                breakdown = h_next <= 1e-14 * beta
                break
            if stats.vjps < config.max_vjps:
                torch.div(w, h_next, out=basis[j + 1])
            del w
        if steps == 0:  # the first step of this cycle was not finite
            stats.diverged = stats.diverged or bad
            break
        y = torch.linalg.solve_triangular(hess[:steps, :steps], gamma[:steps, None], upper=True)[:, 0]
        step = basis[:steps].T @ y.to(g.dtype).to(g.device)
        z_new = step if z is None else z + step
        del step
        z_norm = float(z_new.norm())
        if not math.isfinite(z_norm) or z_norm > config.growth_bound * g_norm:
            stats.diverged = True  # keep the previous iterate, whose residual is known
            break
        z = z_new
        stats.vjps_in_result, stats.residual = stats.vjps, residual
        if bad:
            stats.diverged = True
            break
        if residual < tol or breakdown or stats.vjps >= config.max_vjps:
            break
        # The next cycle restarts from the residual, from the Arnoldi relation (no extra VJP):
        # r = V_{m+1} Q^T (gamma_{m+1} e_{m+1}), Q the product of the Givens rotations.
        e = torch.zeros(steps + 1, dtype=torch.float64)
        e[steps] = gamma[steps]
        for i in reversed(range(steps)):
            a, b = e[i].clone(), e[i + 1].clone()
            e[i], e[i + 1] = cs[i] * a - sn[i] * b, sn[i] * a + cs[i] * b
        r = basis[:steps + 1].T @ e.to(g.dtype).to(g.device)
        beta = float(r.norm())
        if beta == 0.0:
            break
    stats.converged = stats.residual < tol
    return (torch.zeros_like(g) if z is None else z.view_as(g)), stats


@register_backward_solver("bicgstab")
def bicgstab(vjp: VJP, g: torch.Tensor, config: BackwardConfig) -> Tuple[torch.Tensor, BackwardStats]:
    """BiCGStab on (I - J^T) z = g from z = 0 (two VJPs per iteration; the recursively updated
    residual, whose drift from the true one is at rounding level for these few iterations)."""
    g_norm = float(g.norm())
    tol = _reachable_tol(config, g.dtype)
    stats = BackwardStats(solver="bicgstab")

    def apply(v):
        stats.vjps += 1
        return v - vjp(v)

    z = torch.zeros_like(g)
    r = g.clone()
    r_hat = g
    rho = alpha = omega = 1.0
    v = p = torch.zeros_like(g)
    best_z, best_vjps, best_residual = z, 0, 1.0
    while stats.vjps + 2 <= config.max_vjps and best_residual >= tol:
        rho_new = float(torch.vdot(r_hat.reshape(-1), r.reshape(-1)))
        if rho_new == 0.0 or omega == 0.0:  # breakdown: keep the best iterate
            break
        beta = (rho_new / rho) * (alpha / omega)
        rho = rho_new
        p = r + beta * (p - omega * v)
        v = apply(p)
        denom = float(torch.vdot(r_hat.reshape(-1), v.reshape(-1)))
        if denom == 0.0 or not math.isfinite(denom):
            stats.diverged = not math.isfinite(denom)
            break
        alpha = rho / denom
        s = r - alpha * v
        z_half = z + alpha * p
        s_norm, z_half_norm = float(s.norm()), float(z_half.norm())
        if not (math.isfinite(s_norm) and math.isfinite(z_half_norm)) or z_half_norm > config.growth_bound * g_norm:
            stats.diverged = True
            break
        if s_norm / g_norm < best_residual:
            best_z, best_vjps, best_residual = z_half, stats.vjps, s_norm / g_norm
            if best_residual < tol:
                break
        t = apply(s)
        tt = float(torch.vdot(t.reshape(-1), t.reshape(-1)))
        omega = float(torch.vdot(t.reshape(-1), s.reshape(-1))) / tt if tt > 0 else 0.0
        z = z_half + omega * s
        r = s - omega * t
        r_norm, z_norm = float(r.norm()), float(z.norm())
        if not (math.isfinite(r_norm) and math.isfinite(z_norm)):
            stats.diverged = True
            break
        if z_norm > config.growth_bound * g_norm:
            stats.diverged = True
            break
        if r_norm / g_norm < best_residual:
            best_z, best_vjps, best_residual = z, stats.vjps, r_norm / g_norm
    stats.vjps_in_result, stats.residual = best_vjps, best_residual
    stats.converged = best_residual < tol
    return best_z, stats

"""The exact implicit gradient of a cell at its equilibrium (dense Jacobian and solve, float64),
and how far a method's gradient is from it."""
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
from torch.autograd.functional import jacobian

from crbp_detectron.crbp.solver import relative_residual


@dataclass
class ExactGradient:
    grads: List[torch.Tensor]  # dL/d(params..., x) at the exact equilibrium
    h_star: torch.Tensor
    residual: float  # ||f(h*) - h*|| / ||f(h*)||
    spectral_radius: float  # rho(J) at h*
    max_column_sum: float  # max_j (1^T J)_j, what the LCP bounds
    n: int
    seconds: float


def exact_implicit_gradient(cell: torch.nn.Module, x: torch.Tensor, readout: torch.Tensor,
                            max_iter: int = 3000, tol: float = 1e-12, spectral_radius: bool = True) -> ExactGradient:
    """The implicit gradient of L = sum(readout * h*) at h* = cell(x, h*), computed densely:
    fixed-point iteration (then chord-Newton steps with the dense Jacobian if it is slow),
    J by torch.autograd.functional.jacobian, z = (I - J^T)^-1 dL/dh*, grads = z^T d cell / d(params, x). Use float64.
    spectral_radius=False: rho(J) by the power estimate instead of the dense eigenvalues (those
    take minutes for n of several thousand on one core)."""
    t0 = time.perf_counter()
    x = x.detach()
    h = torch.zeros_like(x)
    residual = float("nan")
    with torch.no_grad():
        for _ in range(max_iter):
            h_next = cell(x, h)
            residual = float(relative_residual(h_next, h))
            h = h_next
            if residual < tol:
                break
    f = lambda v: cell(x, v.view_as(x)).reshape(-1)  # noqa: E731
    n = h.numel()
    eye = torch.eye(n, dtype=h.dtype, device=h.device)
    if not residual < tol:  # chord-Newton: h <- h + (I - J0)^-1 (f(h) - h)
        lu = torch.linalg.lu_factor(eye - jacobian(f, h.reshape(-1), vectorize=True))
        with torch.no_grad():
            for _ in range(100):
                step = torch.linalg.lu_solve(*lu, (f(h.reshape(-1)) - h.reshape(-1)).unsqueeze(1)).squeeze(1)
                h = h + step.view_as(h)
                residual = float(relative_residual(cell(x, h), h))
                if residual < tol:
                    break
    jac = jacobian(f, h.reshape(-1), vectorize=True)
    z = torch.linalg.solve((eye - jac).T, readout.reshape(-1))
    x_leaf = x.clone().requires_grad_()
    params = [p for p in cell.parameters() if p.requires_grad]
    with torch.enable_grad():
        out = cell(x_leaf, h)
        grads = torch.autograd.grad(out, params + [x_leaf], z.view_as(out), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, params + [x_leaf])]
    rho = float(torch.linalg.eigvals(jac).abs().max()) if spectral_radius else power_spectral_radius(jac)
    return ExactGradient(grads=grads, h_star=h, residual=residual, spectral_radius=rho,
                         max_column_sum=float(jac.sum(0).max()), n=n, seconds=time.perf_counter() - t0)


def power_spectral_radius(jac: torch.Tensor, iters: int = 2000) -> float:
    """rho(J) ~ exp(mean log ||J v_k|| over the last half of `iters` normalised power steps)
    (Gelfand's formula; the mean averages over the rotation of a complex dominant pair)."""
    v = torch.randn(jac.shape[0], dtype=jac.dtype, generator=torch.Generator().manual_seed(0))
    logs = []
    for _ in range(iters):
        v = jac @ v
        norm = v.norm()
        logs.append(float(norm.log()))
        v = v / norm
    return float(torch.tensor(logs[iters // 2:]).mean().exp())


def method_gradient(method, cell: torch.nn.Module, x: torch.Tensor, readout: torch.Tensor):
    """(grads of L = sum(readout * h) w.r.t. (params..., x) by `method` (its penalty left out),
    the forward's last relative residual ||f(h) - h|| / ||f(h)||)."""
    params = [p for p in cell.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    x_leaf = x.detach().clone().requires_grad_()
    h, _penalty = method(x_leaf)
    (h * readout).sum().backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
    grads.append(x_leaf.grad.detach().clone())
    for p in params:
        p.grad = None
    with torch.no_grad():
        residual = float(relative_residual(cell(x.detach(), h.detach()), h.detach()))
    return grads, residual


def agreement(grads: Sequence[torch.Tensor], exact: Sequence[torch.Tensor]) -> Dict[str, float]:
    """Cosine and relative error (all = params and input together; params; input alone)."""
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    a, b = flat(grads), flat(exact)
    ap, bp = flat(grads[:-1]), flat(exact[:-1])
    rel = lambda u, v: float((u - v).norm() / v.norm().clamp_min(1e-300))  # noqa: E731
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))
    return {"cosine": cos, "rel_err": rel(a, b), "rel_err_params": rel(ap, bp),
            "rel_err_input": rel(grads[-1], exact[-1])}



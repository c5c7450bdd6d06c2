"""Small contractive maps and exact implicit gradients for the core's tests."""
import torch
from torch import nn


class TanhMap(nn.Module):
    """f(x, h) = tanh(W h + U x + b) with ||W||_2 = `contraction` (< 1: a contraction)."""

    def __init__(self, dim=6, contraction=0.6, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, dim, generator=g, dtype=dtype)
        w = w / torch.linalg.matrix_norm(w, ord=2) * contraction
        self.weight = nn.Parameter(w)
        self.input_weight = nn.Parameter(torch.randn(dim, dim, generator=g, dtype=dtype) / dim ** 0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(dim, generator=g, dtype=dtype))

    def forward(self, x, h):
        return torch.tanh(h @ self.weight.T + x @ self.input_weight.T + self.bias)


class LinearMap(nn.Module):
    """f(x, h) = W h + x, W with spectral radius `radius`."""

    def __init__(self, dim=5, radius=1.5, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=dtype))
        self.weight = nn.Parameter(radius * q)  # orthogonal times radius: every |eigenvalue| = radius

    def forward(self, x, h):
        return h @ self.weight.T + x


def fixed_point(cell, x, iters=500):
    h = torch.zeros_like(x)
    with torch.no_grad():
        for _ in range(iters):
            h = cell(x, h)
    return h


def exact_implicit_grads(cell, x, readout, iters=500):
    """dL/d(params, x) at the fixed point from the explicit Jacobian and a dense solve.

    L = (readout * h*).sum(); z^T = g^T (I - J)^-1, grads = z^T df/d(theta, x).
    """
    h_star = fixed_point(cell, x, iters)
    n = h_star.numel()
    jac = torch.autograd.functional.jacobian(lambda h: cell(x, h.view_as(h_star)).reshape(-1),
                                             h_star.reshape(-1))
    g = readout.reshape(-1)
    eye = torch.eye(n, dtype=jac.dtype)
    z = torch.linalg.solve((eye - jac).T, g)
    x_leaf = x.detach().requires_grad_()
    out = cell(x_leaf, h_star)
    params = [p for p in cell.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, params + [x_leaf], z.view_as(out), allow_unused=True)
    return [torch.zeros_like(t) if gr is None else gr for gr, t in zip(grads, params + [x_leaf])], jac


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))

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


class NonNormalConvMap(nn.Module):
    """f(x, h) = a * h + conv(h, K) + x, a linear contraction of known spectrum with strong
    transient growth: the kernel K only reaches right and down, so in raster order J is
    triangular with the per-pixel gains `a` (distinct, in [-rho, rho]) on its diagonal:
    spectral radius rho, while ||J||_2 > 2 and ||g^T J^k|| grows for tens of terms before it decays."""

    def __init__(self, size=6, rho=0.99, right=1.4, down=0.0, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = size * size
        gains = rho * torch.cos(torch.linspace(0, torch.pi, n, dtype=dtype))
        self.gain = nn.Parameter(gains[torch.randperm(n, generator=g)].view(1, 1, size, size))
        kernel = torch.zeros(1, 1, 3, 3, dtype=dtype)
        kernel[0, 0, 1, 2], kernel[0, 0, 2, 1] = right, down
        self.kernel = nn.Parameter(kernel)

    def forward(self, x, h):
        return self.gain * h + torch.nn.functional.conv2d(h, self.kernel, padding=1) + x


def linear_map_jacobian(cell, x):
    """J of a map linear in h (at any h), as a dense matrix over the flattened state."""
    zero = torch.zeros_like(x)
    return torch.autograd.functional.jacobian(lambda h: cell(x, h.view_as(x)).reshape(-1), zero.reshape(-1))


def exact_linear_map_grads(cell, x, readout):
    """(h*, exact dL/d(params, x)) for a map linear in h: h* = (I - J)^-1 f(x, 0) by a dense solve."""
    jac = linear_map_jacobian(cell, x)
    eye = torch.eye(jac.shape[0], dtype=jac.dtype)
    with torch.no_grad():
        h_star = torch.linalg.solve(eye - jac, cell(x, torch.zeros_like(x)).reshape(-1)).view_as(x)
    z = torch.linalg.solve((eye - jac).T, readout.reshape(-1))
    x_leaf = x.detach().requires_grad_()
    params = [p for p in cell.parameters() if p.requires_grad]
    grads = torch.autograd.grad(cell(x_leaf, h_star), params + [x_leaf], z.view_as(x))
    return h_star, list(grads), jac

"""The core's two equilibrium measurements (used by Pathfinder's and the mask head's equilibrium
diagnostics): the power estimate of rho(dF/dh) finds the eigenvalue, not the norm, of a non-normal
Jacobian, and the relative distance is a per-sample mean."""
import torch
from torch import nn

from crbp_detectron.crbp import relative_distance, spectral_radius

from .helpers import LinearMap


class TriangularMap(nn.Module):
    """f(x, h) = W h + x with W upper triangular: eigenvalues its diagonal, norm set by the rest."""

    def __init__(self, diagonal, coupling):
        super().__init__()
        w = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
        w += torch.triu(torch.full_like(w, coupling), diagonal=1)
        self.weight = nn.Parameter(w)

    def forward(self, x, h):
        return h @ self.weight.T + x


def test_spectral_radius_is_the_largest_eigenvalue_of_a_non_normal_jacobian():
    cell = TriangularMap([0.9, 0.5, 0.3, -0.2], coupling=3.0)
    assert torch.linalg.matrix_norm(cell.weight.detach(), ord=2) > 5  # a norm bound would say "expanding"
    x = torch.randn(3, 4, dtype=torch.float64)
    assert abs(spectral_radius(cell, x, torch.zeros_like(x)) - 0.9) < 0.01
    expanding = LinearMap(dim=5, radius=1.5)
    x = torch.randn(2, 5, dtype=torch.float64)
    assert abs(spectral_radius(expanding, x, x) - 1.5) < 1e-6


def test_relative_distance_is_the_mean_over_samples():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert abs(relative_distance(a, b) - 0.75) < 1e-7  # (1 / 2 + 1 / 1) / 2
    assert relative_distance(b, b) == 0.0

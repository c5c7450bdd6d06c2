"""The cells' softplus: ATen's where a graph is recorded (so every gradient is ATen's), a faster
formula in graph-free steps that matches it to round-off over the whole range."""
import pytest
import torch
import torch.nn.functional as F

from crbp_detectron.crbp import HGRUCell
from crbp_detectron.crbp.cells import softplus


def inputs(dtype):
    wide = torch.linspace(-150, 150, 30001, dtype=dtype)
    near_threshold = torch.linspace(19.9, 20.1, 2001, dtype=dtype)
    return torch.cat([wide, near_threshold, torch.randn(5000, dtype=dtype) * 4,
                      torch.tensor([0.0, -0.0, float("inf"), -float("inf")], dtype=dtype)])


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
def test_graph_free_values_match_aten(dtype, atol):
    x = inputs(dtype)
    before = x.clone()
    with torch.no_grad():
        got = softplus(x)
    exact = F.softplus(x.double())
    assert got.dtype == dtype and torch.equal(x, before)  # the input is not written in place
    finite = torch.isfinite(exact)
    assert (got.double()[finite] - exact[finite]).abs().max() <= atol
    assert torch.equal(got[~finite], F.softplus(x)[~finite])  # inf -> inf
    assert torch.isnan(softplus(torch.tensor([float("nan")], dtype=dtype))).all()
    # a non-contiguous view gives the same as its contiguous copy
    grid = torch.randn(4, 6, 5, dtype=dtype).transpose(0, 2)
    assert torch.equal(softplus(grid), softplus(grid.contiguous()))


def test_recorded_graph_uses_aten_softplus_and_its_gradients():
    x = (torch.randn(200, dtype=torch.float64) * 5).requires_grad_()
    y = softplus(x)
    assert torch.equal(y, F.softplus(x)) and "Softplus" in type(y.grad_fn).__name__
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    assert torch.allclose(g, torch.sigmoid(x), rtol=0, atol=1e-15)
    (gg,) = torch.autograd.grad(g.sum(), x)  # double backward, as the LCP's gradient needs
    assert torch.allclose(gg, torch.sigmoid(x) * (1 - torch.sigmoid(x)), rtol=0, atol=1e-15)


@pytest.mark.parametrize("make", [lambda: HGRUCell.pathfinder(8, 5, timesteps=8),
                                  lambda: HGRUCell.coco(8, 3, timesteps=8, num_groups=4)])
def test_cell_step_graph_free_equals_recorded(make):
    torch.manual_seed(0)
    cell = make().eval()
    x, h = torch.randn(3, 8, 9, 9), torch.rand(3, 8, 9, 9)
    with torch.no_grad():
        free = cell(x, h)
    recorded = cell(x, h.clone().requires_grad_())
    assert recorded.grad_fn is not None
    assert torch.allclose(free, recorded.detach(), rtol=1e-6, atol=1e-6)

"""Per-sample early stop: each sample stops near ITS fixed point (also with slow gates), stopped
samples stop costing compute, cells that couple samples are detected, stats say what happened."""
import torch
from torch import nn

from crbp_detectron.crbp import HGRUCell, Recurrence, iterate, samples_independent

from .helpers import fixed_point


class SlowGate(nn.Module):
    """h <- (1 - g) h + g tanh(W h + x), g small: tiny steps while far from h*."""

    def __init__(self, gate=0.02, dim=6, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
        self.weight = nn.Parameter(0.5 * w / torch.linalg.matrix_norm(w, 2))
        self.gate = gate

    def forward(self, x, h):
        return (1 - self.gate) * h + self.gate * torch.tanh(h @ self.weight.T + x)


def relative_distance(h, h_star):
    return (h - h_star).flatten(1).norm(dim=1) / h_star.flatten(1).norm(dim=1)


def test_slow_gates_the_step_size_alone_stops_far_from_the_fixed_point():
    cell = SlowGate()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h_star = fixed_point(cell, x, iters=20000)
    tol = 1e-4
    run = iterate(cell, x, torch.zeros_like(x), 5000, tol)
    true = relative_distance(run.h, h_star)
    assert bool((run.distance < tol).all())
    assert float(true.max()) < 2 * tol  # the estimate bounds the true distance (up to its q estimate)
    # The old criterion (step size under tol) stops at a step whose true distance is ~50x larger.
    h = torch.zeros_like(x)
    for _ in range(5000):
        h_next = cell(x, h).detach()
        if float((h_next - h).norm() / h_next.norm()) < tol:
            break
        h = h_next
    assert float(relative_distance(h_next, h_star).max()) > 20 * tol


def test_each_sample_stops_at_its_own_fixed_point_and_stopped_samples_cost_nothing():
    """f(x, h) = a_i h + x: sample i contracts at its own rate a_i."""
    rates = torch.tensor([0.2, 0.97, 0.5], dtype=torch.float64)
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    h_star = x / (1 - rates.view(-1, 1, 1, 1))
    tol = 1e-6
    sliced_calls = []

    def sliced_cell(x_part, h_part):  # the rates of the samples still iterating (found by their x)
        sliced_calls.append(x_part.shape[0])
        active = [i for i in range(3) if bool((x_part == x[i]).flatten(1).all(1).any())]
        return rates[active].view(-1, 1, 1, 1) * h_part + x_part

    run = iterate(sliced_cell, x, torch.zeros_like(x), 2000, tol)
    assert samples_independent(sliced_cell) is False  # an arbitrary callable: nothing known ...
    sliced_calls.clear()
    sliced_cell.samples_independent = True  # ... unless it says so
    run = iterate(sliced_cell, x, torch.zeros_like(x), 2000, tol)
    steps = run.sample_steps.tolist()
    assert steps[0] < steps[2] < steps[1] == run.steps
    assert sorted(sliced_calls, reverse=True) == sliced_calls and sliced_calls[-1] == 1
    assert sum(sliced_calls) == sum(steps)  # a stopped sample is never evaluated again
    true = relative_distance(run.h, h_star)
    assert bool((true < tol).all()) and bool((run.distance < tol).all())
    # Exact per-sample stop: every sample equals its own solo run with the same number of steps.
    for i, n in enumerate(steps):
        solo = torch.zeros_like(x[i:i + 1])
        for _ in range(n):
            solo = float(rates[i]) * solo + x[i:i + 1]
        assert torch.allclose(run.h[i:i + 1], solo, rtol=0, atol=1e-15)


def test_batchnorm_with_batch_statistics_couples_samples_and_is_not_sliced():
    cell = HGRUCell(4, 3, norm="batch", timesteps=4).double()
    assert samples_independent(cell.train()) is False
    assert samples_independent(cell.eval()) is True  # running statistics: per-sample
    assert samples_independent(HGRUCell(4, 3, norm="group", num_groups=2)) is True
    calls = []
    cell.train().register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    x = torch.rand(3, 4, 5, 5, dtype=torch.float64)
    run = iterate(cell, x, torch.zeros_like(x), 30, 1e-3)
    assert not run.sliced and set(calls) == {3} and len(calls) == run.steps


def test_recurrence_stats_report_per_sample_convergence():
    cell = SlowGate()
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x[0] *= 0.01  # one sample starts next to its fixed point
    block = Recurrence(cell, steps=3000, tol=1e-5).eval()
    with torch.no_grad():
        _, record = block(x, return_record=True)
    s = record.stats
    assert s.converged and s.converged_fraction == 1.0 and s.distance < 1e-5
    assert s.mean_steps < s.steps <= 3000
    block.steps = block.test_steps = 50  # too few steps: honest flags
    with torch.no_grad():
        _, record = block(x, return_record=True)
    assert not record.stats.converged and record.stats.converged_fraction < 1.0
    assert record.stats.as_dict()["converged_fraction"] == record.stats.converged_fraction


def test_training_with_a_tolerance_stops_per_sample_then_records_one_step():
    cell = SlowGate()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    block = Recurrence(cell, steps=3000, tol=1e-6, penalty="lcp")
    h, record = block(x, return_record=True)
    (h.sum() + record.loss).backward()
    assert record.stats.converged and record.stats.steps < 3000 and x.grad is not None

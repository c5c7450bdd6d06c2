"""The forward solvers (solver.py): Anderson finds the plain forward's fixed point, so the implicit
gradient there is the plain forward's; it converges where plain iteration is slow (slow gates,
contraction near 1, non-normal Jacobians); each sample stops on its own; bad options are named."""
import pytest
import torch
from torch import nn

from crbp_detectron.crbp import (FORWARD_SOLVERS, FixedPointMap, ForwardConfig, HGRUCell, Recurrence, iterate,
                                 solve_forward)

from .helpers import NonNormalConvMap, TanhMap, exact_implicit_grads, exact_linear_map_grads, flat, rel_err
from .test_per_sample_stop import SlowGate, relative_distance

ANDERSON = ForwardConfig("anderson", window=5)


def _grads(block, x, readout):
    x = x.detach().requires_grad_()
    h, record = block(x, return_record=True)
    loss = (readout * h).sum() + (record.loss if record.loss is not None else 0)
    params = [p for p in block.cell.parameters() if p.requires_grad]
    return flat(torch.autograd.grad(loss, params + [x], allow_unused=False)), record.stats


def _converged_block(cell, solver, implicit_step, penalty="none"):
    # Converged forward and backward: the implicit gradient at h* itself.
    return Recurrence(cell, steps=3000, tol=1e-13, forward_solver=solver, forward_window=8,
                      backward_max_vjps=400, backward_tol=1e-13, implicit_step=implicit_step, penalty=penalty)


@pytest.mark.parametrize("implicit_step", ["recompute", "recorded"])
def test_implicit_gradient_at_anderson_fixed_point_equals_the_plain_forwards(implicit_step):
    """float64, a GroupNorm hGRU (per-sample: sliced) and a tanh map: Anderson's h* is the plain
    forward's, so the gradient (task and penalty terms) agrees to <= 1e-8 relative."""
    torch.manual_seed(0)
    cell = HGRUCell(4, 3, norm="group", num_groups=2, timesteps=6).double()
    x = torch.rand(3, 4, 6, 6, dtype=torch.float64)
    readout = torch.randn_like(x)
    plain, s_plain = _grads(_converged_block(cell, "plain", implicit_step, "lcp"), x, readout)
    anderson, s_anderson = _grads(_converged_block(cell, "anderson", implicit_step, "lcp"), x, readout)
    assert s_plain.converged and s_anderson.converged
    assert s_anderson.evaluations < s_plain.evaluations
    assert rel_err(anderson, plain) <= 1e-8

    tanh = TanhMap(dim=8, contraction=0.95)
    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    readout = torch.randn_like(x)
    exact, _ = exact_implicit_grads(tanh, x, readout, iters=3000)
    got, _ = _grads(_converged_block(tanh, "anderson", implicit_step), x, readout)
    plain, _ = _grads(_converged_block(tanh, "plain", implicit_step), x, readout)
    assert rel_err(got, plain) <= 1e-8 and rel_err(got, flat(exact)) <= 1e-8


def _converged_run(f, h0, tol, config):
    run = solve_forward(f, h0, 20000, tol, config)
    assert bool((run.distance < tol).all()), f"{config.solver} did not converge"
    return run


def test_anderson_converges_with_slow_gates_where_plain_iteration_crawls():
    """g = 0.02: plain iteration takes ~50x more steps than the contraction of the candidate suggests."""
    cell = SlowGate(gate=0.02)
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f = FixedPointMap(cell, x)
    plain = _converged_run(f, torch.zeros_like(x), 1e-9, ForwardConfig())
    anderson = _converged_run(f, torch.zeros_like(x), 1e-9, ANDERSON)
    assert anderson.steps * 10 <= plain.steps
    h_star = plain.h
    for _ in range(20000):  # far past both: the true fixed point
        h_star = cell(x, h_star).detach()
    # Anderson's test is the residual: the distance is at most residual / (1 - q), q ~ 0.99 here.
    assert float(relative_distance(anderson.h, h_star).max()) < 100 * 1e-9


def _linear_contraction(dim, rho, seed):
    """f(x, h) = W h + x with W symmetric, eigenvalues spread over [-rho, rho]: plain iteration
    contracts at rate rho per step."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    w = q @ torch.diag(torch.linspace(-rho, rho, dim, dtype=torch.float64)) @ q.T

    class Linear(nn.Module):
        def forward(self, x, h):
            return h @ w.T + x
    return Linear(), w


class DistanceRecorder(FixedPointMap):
    """The map, recording per evaluation each sample's relative distance of f(z) (the state a solver
    returns after that evaluation) to the exact fixed point."""

    def __init__(self, cell, x, h_star):
        super().__init__(cell, x, sliceable=False)
        self.h_star, self.distances = h_star, []

    def __call__(self, z):
        out = super().__call__(z)
        self.distances.append(relative_distance(out, self.h_star))
        return out

    def evaluations_to(self, target):
        """Evaluations until every sample is within `target` of h*, and stays there."""
        within = (torch.stack(self.distances) <= target).all(dim=1).tolist()
        assert within[-1], "not converged within the budget"
        return len(within) - within[::-1].index(False) + 1 if False in within else 1


@pytest.mark.parametrize("case", ["contraction 0.995", "non-normal, rho 0.95", "non-normal, rho 0.99"])
def test_anderson_reaches_the_fixed_point_in_a_third_of_the_evaluations_on_hard_maps(case):
    """Linear maps whose fixed point is known exactly: contraction close to 1 (symmetric J,
    eigenvalues spread over [-0.995, 0.995]) and non-normal J (||J||_2 > 2 while rho(J) < 1: plain
    iteration's error grows for tens of steps first). Both solvers measured alike: evaluations
    until every sample's state is within 1e-6 of h* (relative)."""
    if case.startswith("contraction"):
        cell, w = _linear_contraction(40, 0.995, seed=0)
        x = torch.randn(3, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        h_star = torch.linalg.solve(torch.eye(40, dtype=torch.float64) - w, x.T).T
    else:
        cell = NonNormalConvMap(size=6, rho=0.95 if "0.95" in case else 0.99, right=1.4)
        x = torch.randn(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        h_star = torch.cat([exact_linear_map_grads(cell, x[i:i + 1], torch.ones_like(x[i:i + 1]))[0]
                            for i in range(3)])
    needed = {}
    for config in (ForwardConfig(), ForwardConfig("anderson", window=10)):
        f = DistanceRecorder(cell, x, h_star)
        solve_forward(f, torch.zeros_like(x), 4000, 0.0, config)
        needed[config.solver] = f.evaluations_to(1e-6)
    assert 3 * needed["anderson"] <= needed["plain"], needed


def test_each_sample_stops_on_its_own_and_stopped_samples_cost_nothing():
    """f(x, h) = a_i tanh(h) + x: sample i contracts at its own rate; with a sliceable cell each
    sample's result is its solo run's, and a stopped sample is never evaluated again."""
    rates = torch.tensor([0.3, 0.99, 0.7], dtype=torch.float64)
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    calls = []

    class PerSampleRate(nn.Module):
        samples_independent = True

        def forward(self, x_part, h_part):
            calls.append(x_part.shape[0])
            index = [i for i in range(3) if bool((x_part == x[i]).flatten(1).all(1).any())]
            return rates[index].view(-1, 1, 1, 1) * torch.tanh(h_part) + x_part

    cell = PerSampleRate()
    tol = 1e-10
    run = solve_forward(FixedPointMap(cell, x), torch.zeros_like(x), 500, tol, ANDERSON)
    steps = run.sample_steps.tolist()
    assert run.sliced and steps[0] < steps[2] < steps[1] == run.steps
    assert sorted(calls, reverse=True) == calls and calls[-1] == 1
    assert sum(calls) == sum(steps)
    assert bool((run.distance < tol).all())
    for i in range(3):  # the same as the sample alone: no sample's problem mixes with another's
        solo = solve_forward(FixedPointMap(cell, x[i:i + 1]), torch.zeros_like(x[i:i + 1]), 500, tol, ANDERSON)
        assert solo.steps == steps[i]
        assert torch.allclose(run.h[i:i + 1], solo.h, rtol=0, atol=1e-13)


def test_cells_that_couple_samples_run_the_whole_batch_until_all_converged():
    cell = HGRUCell(4, 3, norm="batch", timesteps=4).double().train()
    calls = []
    cell.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    x = torch.rand(3, 4, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = solve_forward(FixedPointMap(cell, x), torch.zeros_like(x), 200, 1e-6, ANDERSON)
    assert not run.sliced and set(calls) == {3} and len(calls) == run.steps
    assert bool((run.distance < 1e-6).all())
    out = cell(x, run.h).detach()
    assert float(relative_distance(run.h, out).max()) < 1e-5  # one more step barely moves it


def test_a_fixed_budget_runs_exactly_that_many_evaluations_without_a_host_sync():
    """tol = 0: `budget` evaluations and a 0-dim tensor residual, as plain iteration."""
    cell = SlowGate(gate=0.1)
    x = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    calls = []
    f = FixedPointMap(lambda x_, h_: calls.append(1) or cell(x_, h_), x, sliceable=True)
    run = solve_forward(f, torch.zeros_like(x), 17, 0.0, ANDERSON)
    assert len(calls) == 17 and run.steps == 17 and torch.is_tensor(run.residual) and run.residual.dim() == 0
    plain = iterate(cell, x, torch.zeros_like(x), 17)
    assert float(run.residual) < 1e-3 * float(plain.residual)


def test_recurrence_reports_evaluations_and_uses_the_solver_in_eval_too():
    cell = SlowGate(gate=0.05)
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    stats = {}
    for solver in FORWARD_SOLVERS:
        block = Recurrence(cell, steps=3000, tol=1e-8, forward_solver=solver, penalty="none")
        _, record = block(x.requires_grad_(), return_record=True)
        stats[solver] = record.stats.as_dict()
        block.eval()
        with torch.no_grad():
            _, evaluated = block(x, return_record=True)
        assert evaluated.stats.evaluations == evaluated.stats.mean_steps < 3000
    assert stats["anderson"]["evaluations"] * 10 < stats["plain"]["evaluations"]
    assert stats["anderson"]["residual"] < 1e-7 and stats["anderson"]["converged"] == 1.0
    block = Recurrence(cell, steps=7, penalty="none")  # no tolerance: evaluations = steps
    _, record = block(x, return_record=True)
    assert record.stats.as_dict()["evaluations"] == 7


@pytest.mark.parametrize("kwargs,message", [
    (dict(solver="broyden2"), "forward solver must be one of"),
    (dict(solver="anderson", window=0), "forward window must be an integer >= 1, got 0"),
    (dict(solver="anderson", beta=1.5), "forward beta must be in (0, 1], got 1.5"),
    (dict(solver="anderson", beta=0.0), "forward beta must be in (0, 1], got 0.0"),
    (dict(solver="anderson", ridge=-1e-3), "forward ridge must be in [0, 1), got -0.001"),
])
def test_bad_solver_options_name_the_option_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError) as info:
        ForwardConfig(**kwargs)
    assert message in str(info.value)
    with pytest.raises(ValueError):
        Recurrence(nn.Identity(), **{f"forward_{k}": v for k, v in kwargs.items()})

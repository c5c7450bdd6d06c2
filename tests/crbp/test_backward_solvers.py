"""Backward solvers of (I - J^T) z = g: exact on a non-normal contraction with transient growth,
divergence only on evidence, stats that describe the returned z, dtype and loss-scale handling."""
import math

import pytest
import torch

from crbp_detectron.crbp import BACKWARD_SOLVERS, BackwardConfig, Recurrence, solve_backward

from .helpers import NonNormalConvMap, exact_linear_map_grads, flat, linear_map_jacobian, rel_err

SOLVERS = sorted(BACKWARD_SOLVERS)


def transient_case():
    cell = NonNormalConvMap()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    readout = torch.randn(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    return cell, x, readout


def test_the_transient_case_is_a_contraction_whose_terms_grow_for_long():
    """What the old guard (3 growing terms in a row) took for divergence."""
    cell, x, readout = transient_case()
    jac = linear_map_jacobian(cell, x)
    assert abs(float(torch.linalg.eigvals(jac).abs().max()) - 0.99) < 1e-9
    assert float(torch.linalg.matrix_norm(jac, 2)) > 2
    v, norms = readout.reshape(-1), []
    for _ in range(600):
        norms.append(float(v.norm()))
        v = v @ jac
    growing = max(sum(1 for _ in run) for run in _runs(norms))
    assert growing >= 50 and max(norms) > 10 * norms[0] and norms[-1] < norms[0]


def _runs(norms):
    run = []
    for a, b in zip(norms, norms[1:]):
        if b > a:
            run.append(b)
        else:
            yield run
            run = []
    yield run


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("implicit_step", ["recompute", "recorded"])
def test_exact_gradient_on_a_non_normal_contraction(solver, implicit_step):
    """Default settings of every solver, with a VJP budget that allows convergence."""
    cell, x, readout = transient_case()
    h_star, exact, _ = exact_linear_map_grads(cell, x, readout)
    block = Recurrence(cell, steps=1, backward_solver=solver, backward_max_vjps=5000, penalty="none",
                       implicit_step=implicit_step)
    x_leaf = x.clone().requires_grad_()
    (block(x_leaf, h0=h_star) * readout).sum().backward()
    block.clear_records()
    got = flat([p.grad for p in cell.parameters()] + [x_leaf.grad])
    assert rel_err(got, flat(exact)) <= 1e-6
    stats = block.last_backward
    assert not stats.diverged and stats.converged and stats.solver == solver


def test_krylov_solvers_need_far_fewer_vjps_than_neumann():
    cell, x, readout = transient_case()
    jac = linear_map_jacobian(cell, x)
    g = readout.reshape(-1)
    vjps = {s: solve_backward(lambda v: v @ jac, g, BackwardConfig(solver=s, max_vjps=5000))[1].vjps for s in SOLVERS}
    assert vjps["gmres"] * 10 < vjps["neumann"] and vjps["bicgstab"] * 10 < vjps["neumann"]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("budget", [5, 15, 60])
def test_stats_describe_the_returned_z(solver, budget):
    """Residual = ||g - (I - J^T) z|| / ||g|| of the z returned; VJPs in the result <= computed."""
    cell, x, readout = transient_case()
    jac = linear_map_jacobian(cell, x)
    g = readout.reshape(-1)
    z, stats = solve_backward(lambda v: v @ jac, g, BackwardConfig(solver=solver, max_vjps=budget))
    true_residual = float((g - (z - z @ jac)).norm() / g.norm())
    assert stats.residual == pytest.approx(true_residual, rel=1e-6, abs=1e-12)
    assert stats.vjps_in_result <= stats.vjps <= budget
    assert stats.converged == (stats.residual < 1e-10) and not stats.diverged


def test_gmres_residual_is_never_above_neumanns_with_the_same_vjps():
    """The Neumann sum lies in the Krylov space GMRES minimises the residual over."""
    cell, x, readout = transient_case()
    jac = linear_map_jacobian(cell, x)
    g = readout.reshape(-1)
    for budget in (3, 10, 20):
        config = dict(max_vjps=budget, restart=budget)
        neumann = solve_backward(lambda v: v @ jac, g, BackwardConfig(solver="neumann", **config))[1]
        gmres = solve_backward(lambda v: v @ jac, g, BackwardConfig(solver="gmres", **config))[1]
        assert gmres.residual <= neumann.residual * (1 + 1e-9)


def test_neumann_returns_its_least_residual_partial_sum_when_terms_grow():
    """A budget that ends inside the transient: the best partial sum, not a flag."""
    cell, x, readout = transient_case()
    jac = linear_map_jacobian(cell, x)
    g = readout.reshape(-1)
    z, stats = solve_backward(lambda v: v @ jac, g, BackwardConfig(solver="neumann", max_vjps=15))
    terms = [g]
    for _ in range(15):
        terms.append(terms[-1] @ jac)
    residuals = [float(t.norm() / g.norm()) for t in terms[1:]]  # residual of sum(terms[:k+1])
    k = min(range(15), key=residuals.__getitem__)
    assert stats.vjps_in_result == k and stats.residual == pytest.approx(residuals[k])
    assert torch.allclose(z, torch.stack(terms[:k + 1]).sum(0))
    assert not stats.diverged and not stats.converged


def test_neumann_known_linear_system_and_early_stop():
    torch.manual_seed(0)
    jac = 0.5 * torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    g = torch.randn(6, dtype=torch.float64)
    z, stats = solve_backward(lambda v: v @ jac, g, BackwardConfig(solver="neumann", max_vjps=200, tol=1e-12))
    exact = torch.linalg.solve((torch.eye(6, dtype=torch.float64) - jac).T, g)
    assert torch.allclose(z, exact, atol=1e-10)
    # ||v_k|| = 0.5^k ||g||: under 1e-12 at k = 40; z holds the 39 terms before.
    assert stats.vjps == 40 and stats.vjps_in_result == 39 and stats.converged and not stats.diverged


@pytest.mark.parametrize("solver", SOLVERS)
def test_growth_past_the_bound_is_divergence_and_the_result_stays_finite(solver):
    g = torch.randn(5, dtype=torch.float64)
    jac = 1.5 * torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    # For the Krylov solvers, a (near-)singular I - J^T: z = (I - J^T)^-1 g is huge.
    near_singular = torch.eye(5, dtype=torch.float64) * (1 - 1e-9)
    vjp = (lambda v: v @ jac) if solver == "neumann" else (lambda v: v @ near_singular)
    z, stats = solve_backward(vjp, g, BackwardConfig(solver=solver, max_vjps=200, growth_bound=1e4))
    assert stats.diverged and torch.isfinite(z).all()
    assert float(z.norm()) <= 1e4 * float(g.norm())
    if solver == "neumann":  # 1.5^k passes 1e4 at k = 23; the least-residual sum is g itself
        assert stats.vjps == 23 and stats.vjps_in_result == 0 and torch.equal(z, g)


def test_no_net_decrease_over_the_window_is_divergence_and_window_is_a_setting():
    g = torch.randn(4, dtype=torch.float64)
    rotation = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))[0]
    slow = 1.001 * rotation  # ||v_k|| = 1.001^k ||g||: far under the growth bound for 1000 terms
    z, stats = solve_backward(lambda v: v @ slow, g, BackwardConfig(solver="neumann", max_vjps=1000, window=30))
    # g and 59 terms make 2 windows of 30 norms; the second's peak is above the first's.
    assert stats.diverged and stats.vjps == 59 and stats.vjps_in_result == 0 and torch.equal(z, g)
    # The transient case rises for 63 terms: a window shorter than that takes it for divergence,
    # the default does not.
    cell, x, readout = transient_case()
    jac = linear_map_jacobian(cell, x)
    short = solve_backward(lambda v: v @ jac, readout.reshape(-1), BackwardConfig(solver="neumann", max_vjps=5000, window=10))[1]
    default = solve_backward(lambda v: v @ jac, readout.reshape(-1), BackwardConfig(solver="neumann", max_vjps=5000))[1]
    assert short.diverged and not default.diverged and default.converged


@pytest.mark.parametrize("solver", SOLVERS)
def test_non_finite_input_or_vjp(solver):
    z, stats = solve_backward(lambda v: v, torch.full((3,), float("nan")), BackwardConfig(solver=solver))
    assert stats.diverged and torch.equal(z, torch.zeros(3))
    g = torch.ones(6, dtype=torch.float64)
    jac = 0.5 * torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    calls = []

    def vjp(v):  # the 4th VJP overflows
        calls.append(1)
        return v @ jac if len(calls) < 4 else v * float("inf")

    z, stats = solve_backward(vjp, g, BackwardConfig(solver=solver, max_vjps=10))
    assert stats.diverged and torch.isfinite(z).all()


@pytest.mark.parametrize("solver", SOLVERS)
def test_loss_scale_changes_only_the_scale(solver):
    """An AMP loss scale (65536) must not trip the guard or change the VJPs used."""
    cell, x, readout = transient_case()
    jac = linear_map_jacobian(cell, x).float()
    g = readout.reshape(-1).float()
    config = BackwardConfig(solver=solver, max_vjps=40)
    z1, s1 = solve_backward(lambda v: v @ jac, g, config)
    z2, s2 = solve_backward(lambda v: v @ jac, 65536.0 * g, config)
    assert not s2.diverged and s1.vjps == s2.vjps and s1.vjps_in_result == s2.vjps_in_result
    assert torch.isfinite(z2).all() and rel_err(z2 / 65536.0, z1) < 1e-5


@pytest.mark.parametrize("solver", SOLVERS)
def test_low_precision_states_are_solved_in_float32(solver):
    jac = 0.5 * torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(2)))[0]
    g = torch.randn(8, generator=torch.Generator().manual_seed(3))
    seen = []

    def vjp(v):
        seen.append(v.dtype)
        return (v.float() @ jac).to(v.dtype)

    z, stats = solve_backward(vjp, g.bfloat16(), BackwardConfig(solver=solver, max_vjps=60))
    assert z.dtype == torch.bfloat16 and set(seen) == {torch.bfloat16}
    exact = torch.linalg.solve(torch.eye(8) - jac.T, g.bfloat16().float())
    assert rel_err(z.float().double(), exact.double()) < 0.05  # bfloat16 VJPs (8 bits); float32 sums
    # The tolerance a float32 solve can reach, not the float64 default of 1e-10.
    assert stats.converged and stats.residual < 1e-5 and not math.isnan(stats.residual)

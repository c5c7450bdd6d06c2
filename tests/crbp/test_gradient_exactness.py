"""The crbp gradient equals the exact implicit gradient and a converged BPTT unroll."""
import pytest
import torch

from crbp_detectron.crbp import HGRUCell, Recurrence

from .helpers import TanhMap, exact_implicit_grads, flat, rel_err


def small_hgru(seed=0):
    torch.manual_seed(seed)
    cell = HGRUCell(4, 3, gate="conv", norm="none", excitation="full", inhibition_eta=True,
                    output_eta=False, timesteps=10).double()
    with torch.no_grad():  # shrink the lateral kernels so the map is a contraction
        cell.w_inh.weight.mul_(0.3)
        cell.w_exc.weight.mul_(0.3)
    return cell


CASES = {
    "tanh": lambda: (TanhMap(dim=6, contraction=0.6), torch.randn(3, 6, dtype=torch.float64)),
    "hgru": lambda: (small_hgru(), torch.rand(2, 4, 5, 5, dtype=torch.float64)),
}


def grads_of(block, cell, x, readout, h0=None):
    x = x.detach().requires_grad_()
    for p in cell.parameters():
        p.grad = None
    h = block(x, h0)
    (readout * h).sum().backward()
    block.clear_records()
    params = [p for p in cell.parameters() if p.requires_grad]
    return flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params] + [x.grad])


@pytest.mark.parametrize("case", sorted(CASES))
def test_crbp_matches_exact_implicit_gradient(case):
    torch.manual_seed(1)
    cell, x = CASES[case]()
    readout = torch.randn_like(x)
    exact, jac = exact_implicit_grads(cell, x, readout)
    assert torch.linalg.eigvals(jac).abs().max() < 0.95, "test map must be contractive"
    block = Recurrence(cell, mode="crbp", steps=300, backward_max_vjps=400, penalty="none")
    got = grads_of(block, cell, x, readout)
    assert rel_err(got, flat(exact)) < 1e-6
    assert block.last_backward.vjps_in_result > 5 and not block.last_backward.diverged


@pytest.mark.parametrize("case", sorted(CASES))
def test_crbp_matches_converged_bptt(case):
    torch.manual_seed(2)
    cell, x = CASES[case]()
    readout = torch.randn_like(x)
    crbp = grads_of(Recurrence(cell, mode="crbp", steps=300, backward_max_vjps=400,
                               penalty="none"), cell, x, readout)
    bptt = grads_of(Recurrence(cell, mode="bptt", steps=300, penalty="none"), cell, x, readout)
    assert rel_err(crbp, bptt) < 1e-5


def test_rbp_and_crbp_share_the_task_gradient():
    """The penalty adds its own term; without it, rbp and crbp give the same task gradient."""
    cell, x = CASES["tanh"]()
    readout = torch.randn_like(x)
    a = grads_of(Recurrence(cell, mode="rbp", steps=100, penalty="lcp"), cell, x, readout)
    b = grads_of(Recurrence(cell, mode="crbp", steps=100, penalty="lcp"), cell, x, readout)
    assert torch.allclose(a, b)


def test_eval_mode_with_grad_uses_rbp_gradient_and_test_steps():
    cell, x = CASES["tanh"]()
    readout = torch.randn_like(x)
    block = Recurrence(cell, mode="bptt", steps=3, test_steps=300, backward_max_vjps=400, penalty="none").eval()
    exact, _ = exact_implicit_grads(cell, x, readout)
    got = grads_of(block, cell, x, readout)
    assert rel_err(got, flat(exact)) < 1e-6
    x2 = x.clone()
    h, record = block(x2, return_record=True)
    assert record.stats.steps == 300


def test_h0_gets_no_gradient_and_every_parameter_does():
    cell = small_hgru()
    x = torch.rand(2, 4, 5, 5, dtype=torch.float64)
    for mode in ("crbp", "rbp", "bptt", "cbptt"):
        h0 = torch.rand_like(x).requires_grad_()
        cell.zero_grad(set_to_none=True)
        block = Recurrence(cell, mode=mode, steps=4)
        h, record = block(x, h0, return_record=True)
        loss = h.sum() + (record.loss if record.loss is not None else 0)
        loss.backward()
        assert h0.grad is None, mode
        missing = [n for n, p in cell.named_parameters() if p.grad is None]
        assert not missing, (mode, missing)


def test_update_gate_gets_no_task_gradient_at_equilibrium():
    """g2 * (h~(h*) - h*) = 0 with g2 > 0: the mix gate sets the speed, not the fixed point."""
    cell = small_hgru()
    x = torch.rand(2, 4, 5, 5, dtype=torch.float64)
    block = Recurrence(cell, mode="crbp", steps=300, backward_max_vjps=400, penalty="none")
    (block(x) * torch.randn_like(x)).sum().backward()
    gate = flat([cell.mix_gate.weight.grad, cell.mix_gate.bias.grad])
    others = flat([p.grad for n, p in cell.named_parameters() if not n.startswith("mix_gate")])
    assert gate.norm() < 1e-8 * others.norm()

    # The Pathfinder cell wraps the update in one more softplus: then the gate matters.
    cell.output_eta = True
    cell.zero_grad()
    (block(x) * torch.randn_like(x)).sum().backward()
    block.clear_records()
    gate = flat([cell.mix_gate.weight.grad, cell.mix_gate.bias.grad])
    assert gate.norm() > 1e-4 * others.norm()

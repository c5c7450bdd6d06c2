"""The recompute implicit step (keeps x, h* and the parameters) against the recorded one: same
gradients to float64 round-off in every mode and penalty, the LCP's gradient reaching the weights,
BatchNorm statistics updated once, parameter hooks once, shared cells, misuse errors, memory."""
import pytest
import torch
from torch import nn

from crbp_detectron.crbp import ConvGRUCell, HGRUCell, Recurrence, lipschitz_penalty

from crbp_detectron.crbp.memory import saved_bytes

from .helpers import TanhMap, fixed_point, flat, rel_err


def hgru(norm, seed=0):
    torch.manual_seed(seed)
    cell = HGRUCell(4, 3, gate="conv", norm=norm, num_groups=2, excitation="full", output_eta=True,
                    timesteps=8).double()
    with torch.no_grad():  # a contraction at the fixed point
        cell.w_inh.weight.mul_(0.3)
        cell.w_exc.weight.mul_(0.3)
    return cell


def pathfinder_bn(seed=0):
    cell = hgru("batch", seed)
    cell.norm_inh = nn.BatchNorm2d(4, track_running_stats=False).double()
    cell.norm_exc = nn.BatchNorm2d(4, track_running_stats=False).double()
    return cell


def convgru(seed=0):
    torch.manual_seed(seed)
    return ConvGRUCell(4, 4, 3, timesteps=8).double()


CELLS = {"group": lambda: hgru("group"), "none": lambda: hgru("none"), "batch_running": lambda: hgru("batch"),
         "batch_stats": pathfinder_bn, "convgru": convgru}


def run(cell, x, readout, implicit_step, seed=0, train=True, **kwargs):
    """(flat grads of params and x, the record, the block) of task loss + weighted penalty."""
    kwargs = {"mode": "crbp", "steps": 12, "penalty": "lcp", "lcp_lambda": 0.1, **kwargs}
    block = Recurrence(cell, implicit_step=implicit_step, **kwargs).train(train)
    cell.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # the Hutchinson penalty draws its vectors here
    h, record = block(x, return_record=True)
    loss = (h * readout).sum() + (record.loss if record.loss is not None else 0)
    loss.backward()
    params = [p for p in cell.parameters() if p.requires_grad]
    return flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params] + [x.grad]), record, block


@pytest.mark.parametrize("cell_name", sorted(CELLS))
@pytest.mark.parametrize("mode,penalty", [("crbp", "lcp"), ("rbp", "lcp"), ("crbp", "jacobian_frobenius"),
                                          ("crbp", "none")])
def test_recompute_equals_recorded(cell_name, mode, penalty):
    x = torch.rand(3, 4, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    readout = torch.randn(3, 4, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = {}
    for step in ("recorded", "recompute"):
        cell = CELLS[cell_name]()
        grads, record, _ = run(cell, x, readout, step, mode=mode, penalty=penalty)
        buffers = [b.clone() for b in cell.buffers()]
        results[step] = grads, record, buffers
    (a, rec_a, buf_a), (b, rec_b, buf_b) = results["recorded"], results["recompute"]
    assert rel_err(b, a) <= 1e-10
    assert rec_a.stats.penalty == rec_b.stats.penalty
    # Without a penalty the recompute step's forward records no graph, so its softplus is the
    # graph-free formula (cells.softplus): the same residual to round-off, not bit for bit.
    assert rec_a.stats.residual == pytest.approx(rec_b.stats.residual, rel=1e-12)
    assert rec_a.stats.backward.residual == pytest.approx(rec_b.stats.backward.residual, rel=1e-6, abs=1e-14)
    # BatchNorm running statistics: updated by the forward's steps, not again by the recomputation
    # (to round-off: the step's softplus differs in the last bits where no graph is recorded).
    assert all(torch.allclose(p.double(), q.double(), rtol=1e-12, atol=0) for p, q in zip(buf_a, buf_b))


def test_eval_mode_with_grad_recompute_equals_recorded():
    x = torch.rand(2, 4, 5, 5, dtype=torch.float64)
    readout = torch.randn_like(x)
    a = run(hgru("batch"), x, readout, "recorded", train=False)[0]
    b = run(hgru("batch"), x, readout, "recompute", train=False)[0]
    assert rel_err(b, a) <= 1e-10


@pytest.mark.parametrize("implicit_step", ["recompute", "recorded"])
def test_the_lcp_gradient_reaches_the_weights(implicit_step):
    """crbp = rbp's task gradient + the penalty's gradient, which equals an independent autograd
    reference (column sums from the explicit Jacobian at h*). A non-differentiable penalty (the LCP
    computed without create_graph) makes crbp equal rbp and fails here."""
    cell = TanhMap(dim=6, contraction=0.9)
    x = torch.randn(3, 6, dtype=torch.float64)
    readout = torch.randn_like(x)
    kwargs = dict(steps=200, penalty_reduction="mean", penalty_weight=2.0, backward_max_vjps=200)
    crbp, record, _ = run(cell, x, readout, implicit_step, mode="crbp", **kwargs)
    rbp = run(cell, x, readout, implicit_step, mode="rbp", **kwargs)[0]
    assert record.stats.penalty > 1e-3
    assert rel_err(crbp, rbp) > 1e-3

    h_star = fixed_point(cell, x, iters=199)  # the state the block's last step starts from
    params = [p for p in cell.parameters()]
    x_leaf = x.clone().requires_grad_()
    jac = torch.autograd.functional.jacobian(lambda h: cell(x_leaf, h.view_as(h_star)).reshape(-1),
                                             h_star.reshape(-1), create_graph=True)
    column_sums = jac.sum(0)
    reference = (torch.relu(column_sums - 0.1) ** 2).mean()
    assert float(reference.detach()) == pytest.approx(record.stats.penalty, rel=1e-9)
    expected = flat(torch.autograd.grad(2.0 * reference, params + [x_leaf]))
    assert rel_err(crbp - rbp, expected) < 1e-8


@pytest.mark.parametrize("implicit_step", ["recompute", "recorded"])
def test_parameter_hooks_fire_once_per_backward(implicit_step):
    cell = hgru("group")
    calls = {name: 0 for name, _ in cell.named_parameters()}
    for name, p in cell.named_parameters():
        p.register_post_accumulate_grad_hook(lambda _p, name=name: calls.__setitem__(name, calls[name] + 1))
    x = torch.rand(2, 4, 5, 5, dtype=torch.float64)
    run(cell, x, torch.randn_like(x), implicit_step)
    assert set(calls.values()) == {1}, calls


@pytest.mark.parametrize("implicit_step", ["recompute", "recorded"])
def test_backward_twice_gives_a_clear_error(implicit_step):
    block = Recurrence(hgru("group"), steps=3, implicit_step=implicit_step)
    h, record = block(torch.rand(2, 4, 5, 5, dtype=torch.float64), return_record=True)
    loss = h.sum() + record.loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already used.*retain_graph"):
        loss.backward()


def test_a_cell_shared_by_two_blocks():
    """As in a recurrent FPN with one cell for every level: gradients from both calls add up."""
    x1 = torch.rand(2, 4, 6, 6, dtype=torch.float64)
    x2 = torch.rand(2, 4, 3, 3, dtype=torch.float64)
    results = []
    for step in ("recorded", "recompute"):
        cell = hgru("group")
        blocks = [Recurrence(cell, steps=8, implicit_step=step, lcp_lambda=0.1) for _ in range(2)]
        loss = 0
        for block, x in zip(blocks, (x1, x2)):
            h, record = block(x, return_record=True)
            loss = loss + h.pow(2).sum() + record.loss
        loss.backward()
        results.append(flat([p.grad for p in cell.parameters()]))
    assert rel_err(results[1], results[0]) <= 1e-10


def test_recompute_keeps_two_states():
    cell = hgru("group")
    x = torch.rand(4, 4, 8, 8, dtype=torch.float64)
    state_bytes = x.numel() * x.element_size()
    recompute, _ = saved_bytes(lambda: Recurrence(cell, steps=5)(x))
    recorded, _ = saved_bytes(lambda: Recurrence(cell, steps=5, implicit_step="recorded")(x))
    assert recompute == 2 * state_bytes  # x and h*
    assert recorded > 10 * state_bytes


def test_lipschitz_penalty_is_the_function_both_steps_use(monkeypatch):
    """An option added to penalties.py reaches both implicit steps (they share one call site)."""
    import crbp_detectron.crbp.recurrence as recurrence

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("create_graph"))
        return lipschitz_penalty(*args, **kwargs)

    monkeypatch.setattr(recurrence, "lipschitz_penalty", spy)
    x = torch.rand(2, 4, 5, 5, dtype=torch.float64)
    for step in ("recorded", "recompute"):
        run(hgru("group"), x, torch.randn_like(x), step)
    assert seen == [True, False, True]  # recorded: once with a graph; recompute: forward, backward

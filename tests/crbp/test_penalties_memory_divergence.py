"""LCP against explicit column sums, O(1) memory, divergence guard, the Neumann series, records."""
import gc
import weakref

import pytest
import torch

from crbp_detectron.crbp import (BACKWARD_SOLVERS, HGRUCell, Recurrence, collect_recurrence,
                                 jacobian_frobenius_penalty, lipschitz_penalty, penalty_losses, summary_scalars)
from crbp_detectron.crbp.cells import chrono_init_
from crbp_detectron.crbp.memory import saved_bytes

from .helpers import LinearMap, TanhMap


def test_lcp_equals_explicit_column_sums():
    cell = TanhMap(dim=5, contraction=0.9)
    x = torch.randn(2, 5, dtype=torch.float64)
    h = torch.randn(2, 5, dtype=torch.float64).requires_grad_()
    out = cell(x, h)
    jac = torch.autograd.functional.jacobian(lambda v: cell(x, v.view(2, 5)).reshape(-1), h.detach().reshape(-1))
    column_sums = jac.sum(dim=0).view(2, 5)
    lam = 0.2
    penalty, got = lipschitz_penalty(out, h, lam=lam, reduction="sum")
    assert torch.allclose(got, column_sums, atol=1e-12)
    assert torch.allclose(penalty, (torch.relu(column_sums - lam) ** 2).sum(), atol=1e-12)
    penalty_mean, _ = lipschitz_penalty(out, h, lam=lam, reduction="mean")
    assert torch.allclose(penalty_mean, penalty / 10)


def test_lcp_gradient_passes_gradcheck():
    cell = TanhMap(dim=4, contraction=0.9)
    x = torch.randn(2, 4, dtype=torch.float64)
    h = torch.randn(2, 4, dtype=torch.float64)

    def penalty_of(weight, input_weight):
        h_in = h.clone().requires_grad_()
        out = torch.tanh(h_in @ weight.T + x @ input_weight.T + cell.bias)
        return lipschitz_penalty(out, h_in, lam=0.05, reduction="mean")[0]

    w = cell.weight.detach().clone().requires_grad_()
    u = cell.input_weight.detach().clone().requires_grad_()
    assert penalty_of(w, u) > 0
    assert torch.autograd.gradcheck(penalty_of, (w, u))


def test_jacobian_frobenius_estimate_is_unbiased():
    cell = TanhMap(dim=6, contraction=0.8)
    x = torch.randn(1, 6, dtype=torch.float64)
    h = torch.randn(1, 6, dtype=torch.float64).requires_grad_()
    out = cell(x, h)
    jac = torch.autograd.functional.jacobian(lambda v: cell(x, v.view(1, 6)).reshape(-1), h.detach().reshape(-1))
    exact = (jac ** 2).sum() / 6
    est = jacobian_frobenius_penalty(out, h, samples=4000, create_graph=False,
                                     generator=torch.Generator().manual_seed(0))
    assert abs(float(est) - float(exact)) < 0.05 * float(exact)


def hgru_block(mode, steps):
    torch.manual_seed(0)
    return Recurrence(HGRUCell(8, 3, norm="group", num_groups=4, timesteps=steps), mode=mode, steps=steps)


@pytest.mark.parametrize("mode", ["crbp", "rbp"])
def test_saved_memory_is_constant_in_steps(mode):
    x = torch.rand(2, 8, 12, 12)
    sizes = [saved_bytes(lambda: hgru_block(mode, n)(x))[0] for n in (2, 8, 32)]
    assert sizes[0] > 0 and sizes[0] == sizes[1] == sizes[2]


@pytest.mark.parametrize("mode", ["bptt", "cbptt"])
def test_saved_memory_grows_linearly_for_bptt(mode):
    x = torch.rand(2, 8, 12, 12)
    s2, s8, s32 = [saved_bytes(lambda: hgru_block(mode, n)(x))[0] for n in (2, 8, 32)]
    per_step = (s8 - s2) / 6
    assert per_step > 0
    assert abs((s32 - s8) - 24 * per_step) <= 0.01 * (s32 - s8)


@pytest.mark.parametrize("implicit_step", ["recompute", "recorded"])
def test_repeated_training_steps_free_their_graphs(implicit_step):
    block = hgru_block("crbp", 10)
    block.implicit_step = implicit_step
    opt = torch.optim.SGD(block.parameters(), lr=1e-3)
    refs = []
    for _ in range(4):
        x = torch.rand(2, 8, 12, 12)
        h = block(x)
        if implicit_step == "recorded":
            refs.append(weakref.ref(h._base))  # the recorded step's output, kept by the RBP node
        else:
            refs.append(weakref.ref(x))  # saved by the recompute node
        del x
        summaries = collect_recurrence(block)
        loss = h.mean() + sum(penalty_losses(summaries).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        del h, loss, summaries
    gc.collect()
    assert all(r() is None for r in refs)
    assert block.pop_records() == []


def test_uncollected_penalties_raise_instead_of_leaking():
    block = Recurrence(TanhMap(dim=3), steps=2)
    x = torch.randn(1, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="uncollected penalty records"):
        for _ in range(100):
            block(x)


@pytest.mark.parametrize("implicit_step", ["recompute", "recorded"])
def test_divergent_map_gives_finite_gradients_and_flags(implicit_step):
    cell = LinearMap(dim=5, radius=1.5)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    block = Recurrence(cell, mode="crbp", steps=12, tol=1e-6, backward_solver="neumann", backward_max_vjps=60,
                       penalty="lcp", implicit_step=implicit_step)
    h = block(x)
    summary = collect_recurrence(block)["recurrence"]
    stats = summary.stats[0]
    assert not stats.converged and stats.residual > 0.1
    assert stats.max_column_sum is not None
    (h.sum() + summary.loss).backward()
    assert block.last_backward.diverged
    assert block.consecutive_divergences == 1
    assert torch.isfinite(x.grad).all() and torch.isfinite(cell.weight.grad).all()


def test_modes_penalties_and_collection():
    x = torch.rand(2, 8, 10, 10)
    for mode, penalised in (("crbp", True), ("cbptt", True), ("rbp", False), ("bptt", False)):
        block = hgru_block(mode, 3)
        block(x)
        summaries = collect_recurrence(torch.nn.Sequential(block))
        (name, summary), = summaries.items()
        assert name == "0"
        assert (summary.loss is not None) == penalised, mode
        assert summary.stats[0].penalty is not None and summary.stats[0].max_column_sum is not None
        assert set(penalty_losses(summaries)) == ({"loss_penalty/0"} if penalised else set())
        assert "crbp/0/residual" in summary_scalars(summaries)


def test_no_grad_and_eval_paths():
    block = hgru_block("crbp", 5)
    block.test_steps = 9
    block.tol = 1e-30
    x = torch.rand(1, 8, 10, 10)
    with torch.no_grad():
        _, rec = block(x, return_record=True)
    assert rec.stats.steps == 5 and rec.loss is None
    block.eval()
    _, rec = block(x, return_record=True)
    assert rec.stats.steps == 9 and rec.loss is None


# An argument outside its choices: (constructor, message). The message names the argument, the
# bad value and every allowed value.
BAD_CHOICES = [
    (lambda: Recurrence(TanhMap(), mode="bptt2"),
     "Recurrence mode must be one of ('crbp', 'rbp', 'bptt', 'cbptt'), got 'bptt2'"),
    (lambda: Recurrence(TanhMap(), penalty="l2"),
     "Recurrence penalty must be one of ('lcp', 'jacobian_frobenius', 'none'), got 'l2'"),
    (lambda: Recurrence(TanhMap(), penalty_reduction="max"),
     "penalty_reduction must be one of ('mean', 'sum'), got 'max'"),
    (lambda: Recurrence(TanhMap(), implicit_step="saved"),
     "implicit_step must be one of ('recompute', 'recorded'), got 'saved'"),
    (lambda: Recurrence(TanhMap(), backward_solver="cg"),
     f"backward solver must be one of {tuple(BACKWARD_SOLVERS)}, got 'cg'"),  # registered: more may come
    (lambda: HGRUCell(4, gate="attention"), "gate must be one of ('conv', 'gala'), got 'attention'"),
    (lambda: HGRUCell(4, nonlinearity="gelu"),
     "nonlinearity must be one of ('softplus', 'relu', 'tanh'), got 'gelu'"),
    (lambda: HGRUCell(4, excitation="none"), "excitation must be one of ('full', 'simple'), got 'none'"),
    (lambda: HGRUCell(4, norm="layer"), "norm must be one of ('batch', 'group', 'none'), got 'layer'"),
    (lambda: HGRUCell(4, update_gate_init="fast"),
     "update_gate_init must be one of ('chrono', 'neutral'), got 'fast'"),
    # An unhashable value is named too, not a TypeError from a dict lookup.
    (lambda: HGRUCell(4, nonlinearity=["relu"]),
     "nonlinearity must be one of ('softplus', 'relu', 'tanh'), got ['relu']"),
]


@pytest.mark.parametrize("build, message", BAD_CHOICES)
def test_bad_choice_names_argument_value_and_choices(build, message):
    with pytest.raises(ValueError) as error:
        build()
    assert str(error.value) == message


def test_bad_lcp_reduction_names_the_choices():
    h = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"^LCP reduction must be one of \('mean', 'sum'\), got 'max'$"):
        lipschitz_penalty(torch.tanh(h), h, reduction="max")


def test_bad_arguments_name_the_problem():
    cell = TanhMap()
    with pytest.raises(ValueError, match="steps"):
        Recurrence(cell, steps=0)
    with pytest.raises(ValueError, match="max_vjps"):
        Recurrence(cell, backward_max_vjps=-1)
    with pytest.raises(ValueError, match="divisible"):
        HGRUCell(10, norm="group", num_groups=4)


def test_chrono_init_takes_effect():
    bias = torch.zeros(1000)
    chrono_init_(bias, timesteps=20)
    assert bias.min() >= 0 and bias.max() <= torch.log(torch.tensor(19.0)) and bias.std() > 0.3
    cell = HGRUCell(8, norm="none", timesteps=20)
    assert (cell.mix_gate.bias <= 0).all() and cell.mix_gate.bias.min() < -1.0


def test_crbp_gradient_under_distributed_data_parallel(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    block = hgru_block("crbp", 6)
    x = torch.rand(2, 8, 10, 10)
    h = block(x)
    (h.mean() + sum(penalty_losses(collect_recurrence(block)).values())).backward()
    reference = [p.grad.clone() for p in block.parameters()]

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        block.zero_grad(set_to_none=True)
        ddp = DistributedDataParallel(block)
        h = ddp(x)
        (h.mean() + sum(penalty_losses(collect_recurrence(ddp)).values())).backward()
        for p, ref in zip(block.parameters(), reference):
            assert torch.allclose(p.grad, ref, atol=1e-6)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["crbp", "rbp", "bptt", "cbptt"])
@pytest.mark.parametrize("penalty", ["lcp", "jacobian_frobenius"])
def test_empty_batch_gives_zero_penalty_and_finite_gradients(mode, penalty):
    """A mask head sees zero RoIs when no image of the batch has a thing."""
    block = Recurrence(HGRUCell.coco(16, num_groups=4), mode=mode, steps=3, penalty=penalty)
    x = torch.rand(0, 16, 14, 14, requires_grad=True)
    h, record = block(x, return_record=True)
    loss = h.sum() + (record.loss if record.loss is not None else 0)
    loss.backward()
    assert h.shape == x.shape and float(loss.detach()) == 0.0
    assert record.stats.penalty == 0.0

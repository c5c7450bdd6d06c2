"""The penalty's options: absolute column sums, the schedule's scale, the update gate's start."""
import pytest
import torch

from crbp_detectron.crbp import HGRUCell, Recurrence, lipschitz_penalty, penalty_schedule_scale, set_penalty_scale
from crbp_detectron.crbp.memory import saved_bytes

from .helpers import TanhMap


def test_absolute_lcp_penalises_large_negative_column_sums():
    h_in = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    jac = torch.tensor([[0.5, -1.0, 0.2], [0.1, -0.5, 0.2], [0.0, 0.3, 0.2]], dtype=torch.float64)
    h_next = jac @ h_in  # column sums: 0.6, -1.2, 0.6
    signed, sums = lipschitz_penalty(h_next, h_in, lam=0.9, reduction="sum", create_graph=False)
    absolute, _ = lipschitz_penalty(h_next, h_in, lam=0.9, reduction="sum", create_graph=False, absolute=True)
    assert torch.allclose(sums, torch.tensor([0.6, -1.2, 0.6], dtype=torch.float64))
    assert float(signed) == 0.0
    assert float(absolute) == pytest.approx((1.2 - 0.9) ** 2)


def test_schedule_scale():
    assert [penalty_schedule_scale(i, warmup_iters=4, delay_iters=2) for i in range(8)] == \
        [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert penalty_schedule_scale(0, 0, 0) == 1.0 and penalty_schedule_scale(5, 0, 10) == 0.0


def test_penalty_scale_scales_the_loss_and_at_zero_keeps_no_double_backward_graph():
    """Scale 0 (a schedule's start): the penalty is logged, not in the loss, and not differentiated."""
    torch.manual_seed(0)
    # The recorded implicit step keeps the penalty's double-backward graph in the forward (the
    # recompute step keeps x and h* only, whatever the scale), so there the saving shows.
    block = Recurrence(TanhMap(dim=6, contraction=0.95), mode="crbp", steps=10, lcp_lambda=0.1, penalty_weight=2.0,
                       implicit_step="recorded")
    x = torch.randn(4, 6, dtype=torch.float64)
    _, full = block(x, return_record=True)
    set_penalty_scale(block, 0.5)
    _, half = block(x, return_record=True)
    assert float(half.loss.detach()) == pytest.approx(0.5 * float(full.loss.detach())) and float(full.loss.detach()) > 0
    on, _ = saved_bytes(lambda: block(x, return_record=True))
    set_penalty_scale(block, 0.0)
    off, (_, record) = saved_bytes(lambda: block(x, return_record=True))
    assert record.loss is None and record.stats.penalty == pytest.approx(full.stats.penalty)
    assert off < on


def test_update_gate_initialisation():
    slow = HGRUCell.pathfinder(channels=4, kernel_size=3, timesteps=20)
    neutral = HGRUCell.pathfinder(channels=4, kernel_size=3, timesteps=20, update_gate_init="neutral")
    gate = torch.sigmoid(slow.mix_gate.bias)
    assert float(gate.detach().max()) <= 0.5 and float(gate.detach().min()) >= 1 / 20 - 1e-6
    assert torch.equal(neutral.mix_gate.bias, torch.zeros(4))
    with pytest.raises(ValueError, match="update_gate_init"):
        HGRUCell(4, update_gate_init="fast")

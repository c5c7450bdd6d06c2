"""The core under CPU autocast (bfloat16): the backward solve runs in float32, a GradScaler-sized
loss scale neither trips the divergence guard nor overflows, both implicit steps agree."""
import pytest
import torch

from crbp_detectron.crbp import HGRUCell, Recurrence

from .helpers import flat, rel_err

SCALE = 65536.0


def cell_and_input():
    torch.manual_seed(0)
    cell = HGRUCell(8, 3, gate="gala", norm="group", num_groups=4, inhibition_eta=False, excitation="simple",
                    timesteps=6)
    x = torch.rand(3, 8, 10, 10, generator=torch.Generator().manual_seed(1))
    return cell, x


class ConvTanh(torch.nn.Module):
    """f(x, h) = tanh(conv(h) + x): with a bfloat16 x under autocast, a bfloat16 state."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(0.5)

    def forward(self, x, h):
        return torch.tanh(self.conv(h) + x)


def scaled_step(cell, x, scale, implicit_step, solver="gmres"):
    block = Recurrence(cell, steps=6, implicit_step=implicit_step, backward_solver=solver, penalty_weight=0.1,
                       lcp_lambda=0.5)
    cell.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    conv_dtypes = []
    hook = next(m for m in cell.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_hook(
        lambda _m, _i, out: conv_dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, record = block(x, return_record=True)
        loss = h.float().pow(2).mean() + record.loss
    (scale * loss).backward()
    hook.remove()
    assert set(conv_dtypes) == {torch.bfloat16}  # the cell really ran in low precision
    return flat([p.grad for p in cell.parameters()] + [x.grad]), h, block


@pytest.mark.parametrize("solver", ["gmres", "neumann", "bicgstab"])
@pytest.mark.parametrize("implicit_step", ["recompute", "recorded"])
@pytest.mark.parametrize("state", ["float32", "bfloat16"])
def test_autocast_bfloat16_with_a_loss_scale(solver, implicit_step, state):
    cell, x = cell_and_input()
    if state == "bfloat16":
        cell, x = ConvTanh(), x.bfloat16()
    unscaled, h, block = scaled_step(cell, x, 1.0, implicit_step, solver)
    assert h.dtype == getattr(torch, state)
    stats = block.last_backward
    assert not stats.diverged and stats.vjps <= 15 and stats.residual < 0.5
    scaled, _, block = scaled_step(cell, x, SCALE, implicit_step, solver)
    assert torch.isfinite(scaled).all() and not block.last_backward.diverged
    assert block.last_backward.vjps_in_result == stats.vjps_in_result
    # The solve is in float32, relative to ||g||: the scale only scales (bfloat16 VJPs round).
    assert rel_err(scaled / SCALE, unscaled) < 1e-2


def test_both_implicit_steps_agree_under_autocast():
    cell, x = cell_and_input()
    recorded = scaled_step(cell, x, 1.0, "recorded")[0]
    recompute = scaled_step(cell, x, 1.0, "recompute")[0]
    assert rel_err(recompute, recorded) < 1e-5  # the recomputation replays the forward's autocast

"""The core under autocast (CPU: bfloat16; CUDA, where there is one: float16): the backward solve
runs in float32, a GradScaler-sized loss scale neither trips the divergence guard nor overflows,
both implicit steps agree, so does the recompute step in chunks of samples. (The GPU suite runs
this file on CUDA.)"""
import pytest
import torch

from crbp_detectron.crbp import HGRUCell, Recurrence

from .helpers import flat, rel_err

SCALE = 65536.0
LOW = {"cpu": torch.bfloat16, "cuda": torch.float16}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


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


def scaled_step(cell, x, scale, implicit_step, solver="gmres", device="cpu", **kwargs):
    block = Recurrence(cell, steps=6, implicit_step=implicit_step, backward_solver=solver, penalty_weight=0.1,
                       lcp_lambda=0.5, **kwargs)
    cell.to(device).zero_grad(set_to_none=True)
    x = x.to(device).clone().requires_grad_()
    conv_dtypes = []
    hook = next(m for m in cell.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_hook(
        lambda _m, _i, out: conv_dtypes.append(out.dtype))
    with torch.autocast(device, dtype=LOW[device]):
        h, record = block(x, return_record=True)
        loss = h.float().pow(2).mean() + record.loss
    (scale * loss).backward()
    hook.remove()
    assert set(conv_dtypes) == {LOW[device]}  # the cell really ran in low precision
    return flat([p.grad for p in cell.parameters()] + [x.grad]), h, block


@pytest.mark.parametrize("solver", ["gmres", "neumann", "bicgstab"])
@pytest.mark.parametrize("implicit_step", ["recompute", "recorded"])
@pytest.mark.parametrize("state", ["float32", "low"])
@pytest.mark.parametrize("device", DEVICES)
def test_autocast_with_a_loss_scale(solver, implicit_step, state, device):
    cell, x = cell_and_input()
    if state == "low":
        cell, x = ConvTanh(), x.to(LOW[device])
    unscaled, h, block = scaled_step(cell, x, 1.0, implicit_step, solver, device)
    assert h.dtype == (LOW[device] if state == "low" else torch.float32)
    stats = block.last_backward
    assert not stats.diverged and stats.vjps <= 15 and stats.residual < 0.5
    scaled, _, block = scaled_step(cell, x, SCALE, implicit_step, solver, device)
    assert torch.isfinite(scaled).all() and not block.last_backward.diverged
    assert block.last_backward.vjps_in_result == stats.vjps_in_result
    # The solve is in float32, relative to ||g||: the scale only scales (bfloat16 VJPs round).
    assert rel_err(scaled / SCALE, unscaled) < 1e-2


@pytest.mark.parametrize("device", DEVICES)
def test_both_implicit_steps_agree_under_autocast(device):
    cell, x = cell_and_input()
    recorded = scaled_step(cell, x, 1.0, "recorded", device=device)[0]
    recompute = scaled_step(cell, x, 1.0, "recompute", device=device)[0]
    assert rel_err(recompute, recorded) < 1e-5  # the recomputation replays the forward's autocast


@pytest.mark.parametrize("device", DEVICES)
def test_the_step_in_chunks_agrees_under_autocast(device):
    cell, x = cell_and_input()
    whole = scaled_step(cell, x, SCALE, "recompute", device=device)[0]
    chunked = scaled_step(cell, x, SCALE, "recompute", device=device, implicit_chunk=1)[0]
    assert torch.isfinite(chunked).all()
    # A low-precision convolution of one sample may round differently from one of three (bfloat16's
    # relative precision is 4e-3); in float64 the chunks agree to 1e-10 (test_implicit_chunks.py).
    assert rel_err(chunked, whole) < 1e-2


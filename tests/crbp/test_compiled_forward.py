"""MODEL.CRBP.FORWARD.COMPILE: the graph-free evaluations through torch.compile compute the same
function (float64: to round-off), give the same implicit gradient, update BatchNorm statistics as
the eager cell does, and leave the block's state dict, copies and export path unchanged."""
import copy

import pytest
import torch

from crbp_detectron.crbp import ForwardConfig, HGRUCell, Recurrence
from crbp_detectron.crbp.solver import compiled_cell

from .helpers import flat, rel_err


def pathfinder_cell():
    torch.manual_seed(0)
    cell = HGRUCell.pathfinder(4, 3, timesteps=12).double()  # BatchNorm with batch statistics
    with torch.no_grad():  # a contraction at the fixed point
        cell.w_inh.weight.mul_(0.3)
        cell.w_exc.weight.mul_(0.3)
    return cell


def test_compiled_forward_same_state_gradients_and_statistics():
    x = torch.rand(3, 4, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    readout = torch.randn(3, 4, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = {}
    for compile_forward in (False, True):
        cell = pathfinder_cell()
        block = Recurrence(cell, steps=12, penalty="lcp", lcp_lambda=0.5, forward_compile=compile_forward).train()
        x_in = x.clone().requires_grad_()
        h, record = block(x_in, return_record=True)
        ((h * readout).sum() + record.loss).backward()
        grads = flat([p.grad for p in cell.parameters()] + [x_in.grad])
        with torch.no_grad():
            h_eval = block.eval()(x[:2])  # another batch size, eval mode: graph-free only
        got[compile_forward] = (h.detach(), grads, [b.clone() for b in cell.buffers()], h_eval, block)
    (h0, g0, b0, e0, eager), (h1, g1, b1, e1, compiled) = got[False], got[True]
    assert rel_err(h1, h0) <= 1e-12 and rel_err(e1, e0) <= 1e-12
    assert rel_err(g1, g0) <= 1e-10
    assert all(torch.allclose(p, q, rtol=1e-12, atol=0) for p, q in zip(b1, b0))  # running statistics
    assert list(compiled.state_dict()) == list(eager.state_dict())  # nothing compiled is a submodule
    assert compiled_cell(compiled.cell) is compiled_cell(compiled.cell)  # compiled once per cell
    copy.deepcopy(compiled)
    assert "compiled" in repr(compiled)


def test_compile_must_be_a_bool():
    with pytest.raises(ValueError, match="forward compile must be True or False, got 'yes'"):
        ForwardConfig(compile="yes")

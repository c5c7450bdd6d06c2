"""The implicit step in chunks of samples (Recurrence(implicit_chunk=...)): the same forward
output, penalty and statistics, and the same gradients (<= 1e-10 relative, float64) as the whole
batch at once, with the default backward budget (15 VJPs: not converged, so any change of the
solve would show); misuse is named."""
import weakref

import pytest
import torch
from torch import nn

from crbp_detectron.crbp import HGRUCell, Recurrence

from .helpers import rel_err
from .test_implicit_step import hgru, pathfinder_bn, run


def coco_cell(seed=0):
    """The COCO cell's structure (GALA gate, GroupNorm, simple excitation) at test size."""
    torch.manual_seed(seed)
    return HGRUCell(8, 3, gate="gala", norm="group", num_groups=4, inhibition_eta=False, excitation="simple",
                    timesteps=6).double()


@pytest.mark.parametrize("make_cell", [coco_cell, lambda: hgru("group"), lambda: hgru("none")],
                         ids=["coco", "pathfinder-like, GroupNorm", "pathfinder-like, no norm"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("chunk", [1, 3])
def test_chunks_give_the_whole_batchs_gradients(make_cell, reduction, chunk):
    cell = make_cell()
    channels = cell.channels
    x = torch.rand(7, channels, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    readout = torch.randn_like(x)
    kwargs = dict(penalty_reduction=reduction, lcp_lambda=0.1)
    whole, record, _ = run(cell, x, readout, "recompute", **kwargs)
    chunked, chunk_record, block = run(cell, x, readout, "recompute", implicit_chunk=chunk, **kwargs)
    assert block.implicit_chunk == chunk
    if make_cell is coco_cell:  # the default budget used up, not converged: the solve is the same, not just its limit
        assert record.stats.backward.vjps == 15 and record.stats.backward.residual > 1e-6
    assert rel_err(chunked, whole) <= 1e-10
    assert abs(chunk_record.stats.penalty - record.stats.penalty) <= 1e-12 * abs(record.stats.penalty)
    assert chunk_record.stats.max_column_sum == pytest.approx(record.stats.max_column_sum, rel=1e-12)
    assert float(abs(chunk_record.loss - record.loss).detach()) <= 1e-12 * float(abs(record.loss).detach())
    assert chunk_record.stats.backward.residual == pytest.approx(record.stats.backward.residual, rel=1e-8)


def test_chunks_without_a_differentiable_penalty_and_with_other_backward_solvers():
    cell = coco_cell()
    x = torch.rand(5, 8, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    readout = torch.randn_like(x)
    for kwargs in (dict(mode="rbp"), dict(penalty="none"), dict(backward_solver="neumann"),
                   dict(backward_solver="bicgstab", backward_max_vjps=8), dict(backward_restart=4, backward_max_vjps=12)):
        whole, _, _ = run(cell, x, readout, "recompute", **kwargs)
        chunked, _, _ = run(cell, x, readout, "recompute", implicit_chunk=2, **kwargs)
        assert rel_err(chunked, whole) <= 1e-10, kwargs


def test_chunks_need_independent_samples_and_the_recompute_step():
    x = torch.rand(4, 4, 5, 5, dtype=torch.float64)
    block = Recurrence(pathfinder_bn(), implicit_chunk=2)  # BatchNorm with batch statistics
    with pytest.raises(ValueError, match="implicit_chunk = 2: this cell couples the samples"):
        block(x.requires_grad_())
    with pytest.raises(ValueError, match="implicit_chunk = 2 needs implicit_step 'recompute'"):
        Recurrence(nn.Identity(), implicit_chunk=2, implicit_step="recorded")
    with pytest.raises(ValueError, match="implicit_chunk must be an integer >= 0"):
        Recurrence(nn.Identity(), implicit_chunk=-1)


class LiveSavedBytes:
    """Saved-tensor hooks that follow the bytes autograd keeps alive: each storage counts from its
    first saver until its last saver is freed; `peak` is the most at once."""

    def __init__(self):
        self.savers, self.live, self.peak = {}, {}, 0

    def _release(self, key):
        self.savers[key] -= 1
        if not self.savers[key]:
            del self.savers[key], self.live[key]

    def pack(self, t):
        key = t.untyped_storage().data_ptr()
        self.savers[key] = self.savers.get(key, 0) + 1
        self.live[key] = t.untyped_storage().nbytes()
        self.peak = max(self.peak, sum(self.live.values()))
        weakref.finalize(t, self._release, key)
        return t


def test_chunks_keep_one_chunks_graph_in_the_backward():
    """What autograd keeps alive at once during the backward: with chunks of 1 sample of 8, a
    fraction of the whole batch's (the recomputed graphs are saved inside the backward)."""
    cell = coco_cell()
    x = torch.rand(8, 8, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    peaks = {}
    for chunk in (0, 1):
        block = Recurrence(cell, steps=5, implicit_chunk=chunk)
        h, record = block(x.clone().requires_grad_(), return_record=True)
        loss = h.square().sum() + record.loss
        tracker = LiveSavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(tracker.pack, lambda t: t):
            loss.backward()
        peaks[chunk] = tracker.peak
        del h, record, loss
    assert peaks[1] < 0.3 * peaks[0], peaks

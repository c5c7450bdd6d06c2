"""The saved-for-backward measure (crbp/memory.py): what it counts, and that measuring changes
neither the graph's lifetime nor the gradients."""
import gc
import weakref

import torch

from crbp_detectron.crbp import HGRUCell, Recurrence
from crbp_detectron.crbp.memory import saved_bytes


def test_saved_bytes_excludes_inputs_and_counts_storages_once():
    w = torch.randn(50, 50, requires_grad=True)
    x = torch.randn(50, 50)
    nbytes, _ = saved_bytes(lambda: (x @ w).tanh(), exclude=[w, x])
    assert nbytes == 50 * 50 * 4  # tanh's output only; the matmul's saved w and x are excluded
    nbytes_all, _ = saved_bytes(lambda: (x @ w).tanh())
    assert nbytes_all == 2 * 50 * 50 * 4  # + x, saved for the gradient of w
    view_bytes, _ = saved_bytes(lambda: (x[:10] @ w).tanh(), exclude=[w])
    assert view_bytes == 50 * 50 * 4 + 10 * 50 * 4  # a saved view keeps its whole storage


def test_measured_graph_dies_with_its_output():
    """tanh saves its own output: stored as itself, it would keep its graph alive forever."""
    w = torch.randn(20, 20, requires_grad=True)
    _, out = saved_bytes(lambda: (torch.randn(5, 20) @ w).tanh())
    ref = weakref.ref(out)
    del out
    gc.collect()
    assert ref() is None


def test_measuring_leaves_gradients_unchanged():
    """Including the LCP's double backward (create_graph through the saved tensors)."""
    torch.manual_seed(0)
    block = Recurrence(HGRUCell(8, 3, norm="group", num_groups=4), mode="crbp", steps=5, penalty="lcp")
    x = torch.rand(2, 8, 10, 10, requires_grad=True)

    def grads(measure):
        block.zero_grad(set_to_none=True)
        x.grad = None
        forward = lambda: block(x, return_record=True)  # noqa: E731
        h, record = saved_bytes(forward)[1] if measure else forward()
        ((h * h).sum() + record.loss).backward()
        return [p.grad.clone() for p in block.parameters()] + [x.grad.clone()]

    plain, measured = grads(False), grads(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, measured))


def _live_tensors():
    gc.collect()
    # type(), not isinstance(): isinstance reads __class__, which warns on deprecated torch objects
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


def test_recompute_implicit_step_keeps_no_graph_alive():
    """The recompute step's forward builds the step's graph for the penalty's value; stored as
    themselves, tensors saved by their own grad_fn (sigmoid outputs) kept that graph alive after
    the backward: the demo's training grew ~13 MiB per iteration until it was killed."""
    block = Recurrence(HGRUCell(8, 3, norm="group", num_groups=4), mode="crbp", steps=3, penalty="lcp",
                       implicit_step="recompute")

    def train_step():
        x = torch.rand(2, 8, 10, 10, requires_grad=True)
        h, record = block(x, return_record=True)
        ((h * h).sum() + record.loss).backward()

    train_step()  # parameters' .grad now exist
    before = _live_tensors()
    for _ in range(3):
        train_step()
    assert _live_tensors() == before

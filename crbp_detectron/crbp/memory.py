"""What autograd keeps for the backward pass: the measure behind C-RBP's constant-memory claim,
shared by the tests, the benchmarks and the Pathfinder experiment."""
from typing import Callable, Dict, Sequence, Tuple, TypeVar

import torch

T = TypeVar("T")


def _storage(t: torch.Tensor):
    """(key, bytes) of the storage behind `t` (tensors without one: by identity and own size)."""
    try:
        s = t.untyped_storage()
        return (t.device.type, s.data_ptr()), s.nbytes()
    except (RuntimeError, NotImplementedError):
        return (t.device.type, id(t)), t.numel() * t.element_size()


def saved_bytes(fn: Callable[[], T], exclude: Sequence[torch.Tensor] = ()) -> Tuple[int, T]:
    """Bytes of the storages autograd saves for backward while `fn` runs, and fn's result.

    Each storage counts once, in full (a saved view keeps its whole storage alive); storages of
    `exclude` (parameters, inputs: they exist whatever the method) are not counted. Graph-free
    work (C-RBP's N-1 steps) saves nothing; a penalty computed with create_graph saves its
    double-backward graph. What a backward allocates later is not seen."""
    total, _, out = saved_bytes_by(fn, exclude)
    return total, out


def saved_bytes_by(fn: Callable[[], T], exclude: Sequence[torch.Tensor] = (),
                   owner: Callable[[], str] = lambda: "") -> Tuple[int, Dict[str, int], T]:
    """saved_bytes, also split by `owner()` when each storage is first saved (e.g. the module
    running then): (bytes, {owner: bytes}, fn's result)."""
    skip = {_storage(t)[0] for t in exclude}
    seen, total, by = set(), 0, {}

    def pack(t):
        nonlocal total
        key, nbytes = _storage(t)
        if key not in seen and key not in skip:
            seen.add(key)
            total += nbytes
            name = owner()
            by[name] = by.get(name, 0) + nbytes
        # Detached: an output saved by its own grad_fn, stored as itself, would make a reference
        # cycle that keeps the whole graph alive after its last use. Autograd re-attaches the
        # unpacked tensor to the graph, so gradients are unchanged.
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, by, out

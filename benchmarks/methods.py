"""The training methods the benchmarks compare, configured to compute the same quantity: ours
(`Recurrence` in bptt | crbp | rbp | cbptt) and torchdeq's implicit backward (optional `bench`
extra), each as a callable x -> (h, penalty); and `Case`, one configuration's training step."""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

OUR_METHODS = ("bptt", "crbp", "rbp", "cbptt", "crbp_recorded")
TORCHDEQ_METHODS = ("torchdeq_ift", "torchdeq_hook_ift", "torchdeq_phantom")
ALL_METHODS = OUR_METHODS + TORCHDEQ_METHODS
PENALIZED = ("crbp", "cbptt", "crbp_recorded")  # trained with the LCP; bptt and rbp run without a penalty


@dataclass(frozen=True)
class MethodSettings:
    """What every method shares, so that they compute the same quantity.

    neumann_steps K: our Neumann solver computes K + 1 VJPs and returns the sum of K + 1 terms
    (g included; the last VJP gives that sum's residual), with no early stop (backward_tol = 0).
    torchdeq's backward runs fixed-point iteration y <- y J + g from
    y = 0 for K + 1 iterations (b_max_iter = K + 1, b_tol = 0): after K + 1 iterations
    y = sum_{k=0..K} g J^k, the same sum (its first VJP multiplies zeros).
    """

    neumann_steps: int = 15
    lcp_lambda: float = 0.9
    phantom_steps: int = 1  # torchdeq PhantomGrad steps; 1 = the one-step (Jacobian-free) gradient


def torchdeq_status() -> Tuple[bool, str]:
    """(available, message): torchdeq is an optional `bench` extra, never a runtime dependency."""
    try:
        import torchdeq  # noqa: F401
    except ImportError as e:
        return False, (f"torchdeq is not installed ({e}): skipping its methods. "
                       "Install the bench extra: pip install 'crbp-detectron[bench]' (torchdeq==0.1.0).")
    return True, f"torchdeq {getattr(torchdeq, '__version__', '0.1.0')}"


NEUMANN_NOTE = (
    "Neumann terms: VJP terms our RBP backward added in the last timed step (K at most; fewer "
    "when its divergence guard stopped a growing series, marked 'diverged'). At N = 1 the recorded "
    "step runs at h0 = 0, where the cell's normalization (GroupNorm / BatchNorm of an all-zero "
    "tensor) has a huge Jacobian: the series grows at once and the guard keeps only its first terms, "
    "so N = 1 is cheap and not representative of the backward's cost.")


def method_description(settings: MethodSettings) -> List[str]:
    """How each method is configured (printed with every table)."""
    k = settings.neumann_steps
    return [
        "`bptt`: `Recurrence(mode='bptt', penalty='none')`: N steps recorded, back-propagation through time.",
        "`cbptt`: `Recurrence(mode='cbptt', penalty='lcp')`: BPTT plus the differentiable LCP on the last step.",
        f"`crbp`: `Recurrence(mode='crbp', penalty='lcp', lcp_lambda={settings.lcp_lambda}, "
        f"backward_solver='neumann', backward_max_vjps={k + 1}, backward_tol=0)`: N-1 graph-free steps, one step at h* "
        "(recomputed in the backward: the default implicit_step), the RBP gradient (K VJPs) and the "
        "differentiable LCP (one more VJP with create_graph, and its double backward). Time and memory "
        "include the LCP; its gradient-agreement row is the task gradient (penalty left out), which is rbp's.",
        f"`rbp`: `Recurrence(mode='rbp', penalty='none', backward_solver='neumann', backward_max_vjps={k + 1}, "
        "backward_tol=0)`: the same "
        "gradient without any penalty: the quantity torchdeq's IFT computes.",
        f"`torchdeq_ift`: `torchdeq.get_deq(core='indexing', ift=True, f_solver='fixed_point_iter', "
        f"f_max_iter=N-1, f_tol=0, b_solver='fixed_point_iter', b_max_iter={k + 1}, b_tol=0)`, called "
        "with `solver_kwargs={'return_final': True}`: N-1 graph-free iterations + torchdeq's one step with "
        f"a graph = N cell evaluations, the same output h_N as ours; backward: {k + 1} fixed-point "
        f"iterations y <- yJ + g from 0 = the same {k + 1}-term Neumann sum. Its autograd.Function "
        "recomputes the step in backward at h_N = f(h_{N-1}) and takes J there (ours: at h_{N-1}).",
        "`crbp_recorded`: crbp with `implicit_step='recorded'`: the step at h* and the LCP's double-backward "
        "graph are kept from the forward to the backward instead of being recomputed there (same gradient).",
        "`torchdeq_hook_ift`: the same with `hook_ift=True` (a tensor hook instead of the Function; "
        "J at h_{N-1}, as ours: identical gradient up to rounding).",
        f"`torchdeq_phantom`: `get_deq(core='indexing', grad={settings.phantom_steps}, tau=1.0, "
        f"f_max_iter=N-{settings.phantom_steps})`: PhantomGrad with {settings.phantom_steps} step(s) "
        "(1 = the one-step / Jacobian-free gradient): N cell evaluations, the last with a graph, no "
        "Neumann series. An approximation of the implicit gradient, not the same quantity.",
    ]


class _OurMethod:
    def __init__(self, name, cell, steps, settings):
        from crbp_detectron.crbp import Recurrence

        mode, _, implicit_step = name.partition("_")  # "crbp_recorded": crbp, the recorded step
        self.block = Recurrence(
            cell, mode=mode, steps=steps, backward_solver="neumann", implicit_step=implicit_step or "recompute",
            backward_max_vjps=settings.neumann_steps + 1, backward_tol=0.0,
            penalty="lcp" if name in PENALIZED else "none", lcp_lambda=settings.lcp_lambda,
            penalty_reduction="mean", penalty_weight=1.0)

    def __call__(self, x):
        h, record = self.block(x, return_record=True)
        return h, record.loss

    def backward_info(self) -> Optional[str]:
        """Neumann terms the last backward used, and whether its divergence guard fired."""
        b = self.block.last_backward
        if b is None or self.block.mode in ("bptt", "cbptt"):
            return None
        return f"{b.vjps_in_result}" + (" (diverged)" if b.diverged else "")


class _TorchDEQMethod:
    def __init__(self, name, cell, steps, settings):
        from torchdeq import get_deq

        self.cell = cell
        kw = dict(core="indexing", f_solver="fixed_point_iter", f_tol=0.0, f_stop_mode="abs",
                  b_solver="fixed_point_iter", b_max_iter=settings.neumann_steps + 1, b_tol=0.0,
                  b_stop_mode="abs")
        if name == "torchdeq_ift":
            kw.update(ift=True, f_max_iter=steps - 1)
        elif name == "torchdeq_hook_ift":
            kw.update(hook_ift=True, f_max_iter=steps - 1)
        elif name == "torchdeq_phantom":
            grad_steps = max(1, min(settings.phantom_steps, steps))
            kw.update(grad=grad_steps, tau=1.0, f_max_iter=steps - grad_steps)
        else:
            raise ValueError(name)
        self.deq = get_deq(**kw)

    def __call__(self, x):
        cell = self.cell
        z_out, _ = self.deq(lambda z: cell(x, z), torch.zeros_like(x), solver_kwargs={"return_final": True})
        return z_out[-1], None


def build_method(name: str, cell: torch.nn.Module, steps: int, settings: MethodSettings = MethodSettings()):
    """A callable x -> (h, penalty loss or None) that runs `cell` for `steps` evaluations."""
    if name in OUR_METHODS:
        return _OurMethod(name, cell, steps, settings)
    if name in TORCHDEQ_METHODS:
        return _TorchDEQMethod(name, cell, steps, settings)
    raise ValueError(f"unknown method {name!r}; choose from {ALL_METHODS}")


def split_methods(methods: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(methods to run, messages): drops torchdeq's methods, with a message, when it is absent."""
    for m in methods:
        if m not in ALL_METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {ALL_METHODS}")
    ok, message = torchdeq_status()
    if ok or not any(m in TORCHDEQ_METHODS for m in methods):
        return list(methods), []
    return [m for m in methods if m not in TORCHDEQ_METHODS], [message]


@dataclass
class Case:
    """One (workload, method, steps) configuration, ready to run."""

    step: Callable[[], None]  # one training step: forward, loss, backward
    forward: Callable[[], object]  # the forward alone (penalty included), for saved bytes
    inputs: List[torch.Tensor] = field(default_factory=list)  # pre-existing tensors (params, x)
    info: Optional[Callable[[], Optional[str]]] = None  # what the last backward did (Neumann terms)
    report: Optional[Callable[[], Dict[str, object]]] = None  # more results of the last step (JSON-able)


def training_case(method, params: Sequence[torch.Tensor], x: torch.Tensor, readout: torch.Tensor) -> Case:
    """The training step shared by every benchmark: L = sum(readout * h) (+ the method's penalty),
    backward into the parameters and the input x (a leaf standing for the upstream features)."""
    params = list(params)

    def forward():
        return method(x)

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        h, penalty = method(x)
        loss = (h * readout).sum()
        if penalty is not None:
            loss = loss + penalty
        loss.backward()

    return Case(step=step, forward=forward, inputs=params + [x, readout],
                info=getattr(method, "backward_info", None))

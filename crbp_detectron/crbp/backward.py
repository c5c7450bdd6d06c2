"""The RBP gradient through ONE step at the equilibrium, in two ways of keeping that step.

At an equilibrium h* = f(x, h*), the implicit function theorem gives dL/dtheta = z^T df/dtheta
with z^T (I - J) = g^T, J = df/dh at h*, g = dL/dh*. A backward solver (backward_solvers.py)
finds z from VJPs v -> v^T J through one step; autograd then carries z through that same step
into the weights and x.

    recorded   (attach_rbp_gradient) the step's graph is recorded in the forward and kept until the
               backward; an identity node on its output swaps g for z. The penalty's own graph
               (the LCP's double backward) is kept beside it.
    recompute  (implicit_step) the forward keeps only x, h* and the parameters (a custom
               autograd.Function; the step and the penalty are evaluated without keeping a graph).
               The backward recomputes the step at h* (with the forward's RNG and autocast state),
               re-derives the penalty from it, solves for z, and sends z and the penalty's
               incoming gradient into the weights and x with ONE autograd.grad through the
               recomputed graph. Same gradients; memory of two states instead of a step's graph.
               In chunks of samples (`ImplicitStep.chunk`, for cells whose samples are independent:
               dim 0, RoIs or images), the backward's peak is one chunk's graph instead of the
               batch's: each VJP of the solve recomputes the step chunk by chunk (one more step's
               forward per VJP), and the gradients are gathered chunk by chunk, the penalty's
               double backward included. The same gradients, summed in another order.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .backward_solvers import BackwardConfig, solve_backward
from .stats import BackwardStats

OnBackward = Optional[Callable[[BackwardStats], None]]
USED_TWICE = ("The C-RBP gradient of this recurrent block was already used: backward through "
              "the same forward twice (retain_graph=True) is not supported.")


def _vjp_through(h_next: torch.Tensor, h_in: torch.Tensor):
    def vjp(v):
        return torch.autograd.grad(h_next, h_in, v.to(h_next.dtype), retain_graph=True)[0]
    return vjp


class _RBPGradient(torch.autograd.Function):
    """Identity on the recorded step's output; its backward swaps g for the solver's z.

    The recorded output and its input are kept on ctx (not saved tensors: they are the graph we
    take VJPs through) and released as soon as the backward has used them. The VJPs run through
    the recorded step's own graph, which does not contain this node, so they cannot re-enter it,
    and they ask for gradients w.r.t. the state only, so parameter hooks (DDP's all-reduce among
    them) fire once, in the ordinary backward that follows.
    """

    @staticmethod
    def forward(ctx, h_next, h_star, config, on_backward):
        ctx.h_next, ctx.h_star = h_next, h_star
        ctx.config, ctx.on_backward = config, on_backward
        return h_next.view_as(h_next)

    @staticmethod
    def backward(ctx, grad):
        h_next, h_star = ctx.h_next, ctx.h_star
        if h_next is None:
            raise RuntimeError(USED_TWICE)
        ctx.h_next = ctx.h_star = None
        z, stats = solve_backward(_vjp_through(h_next, h_star), grad, ctx.config)
        if ctx.on_backward is not None:
            ctx.on_backward(stats)
        return z.to(grad.dtype), None, None, None


def attach_rbp_gradient(h_next: torch.Tensor, h_star: torch.Tensor, config: BackwardConfig,
                        on_backward: OnBackward = None) -> torch.Tensor:
    """Returns h_next with the RBP gradient attached.

    `h_star` is the detached state (a leaf with requires_grad) that `h_next = f(x, h_star)` was
    recorded from. `on_backward` receives the BackwardStats when the backward runs.
    """
    if not h_star.requires_grad:
        raise ValueError("attach_rbp_gradient: h_star must require grad (the recorded step's input)")
    return _RBPGradient.apply(h_next, h_star, config, on_backward)


# ------------------------------------------------------------------------------ recompute
PenaltyFn = Callable[[torch.Tensor, torch.Tensor, bool], Optional[torch.Tensor]]


@dataclass
class ImplicitStep:
    """What the recompute Function needs besides tensors (a plain object: not saved by autograd).

    penalty(h_next, h_in, create_graph, of=None, record=True) -> penalty tensor (None: no penalty);
    it must compute the penalty from the step exactly as the recorded path does (penalties.py), so
    options flow to both. With `of` (the batch's number of state elements) h_next is a chunk of the
    batch and the result the chunk's share of the batch's penalty (the shares sum to it); `record`
    False: not to be counted in the statistics (a chunk's recomputation, which would count twice).
    chunk: samples per chunk (0: the whole batch at once; see the module's docstring).
    """

    cell: nn.Module
    config: BackwardConfig
    penalty: Optional[PenaltyFn]
    differentiable_penalty: bool
    on_backward: OnBackward
    params: List[torch.Tensor]
    chunk: int = 0


class _CellState:
    """The forward's RNG and autocast state, replayed in the backward's recomputation, and
    the cell's buffers (BatchNorm running statistics) restored after it, so that recomputing a
    training-mode step does not update them a second time."""

    def __init__(self, cell: nn.Module, x: torch.Tensor):
        self.device_type, self.device = x.device.type, x.device
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
        self.autocast_state = (torch.is_autocast_enabled(self.device_type), torch.get_autocast_dtype(self.device_type))
        self.cell = cell

    def autocast(self):
        """The forward's autocast state, for what the forward computed (the step, the penalty);
        the VJPs and the gradients run outside it, as a backward does."""
        enabled, dtype = self.autocast_state
        return torch.autocast(self.device_type, dtype=dtype, enabled=enabled)

    @contextmanager
    def replay(self):
        """A context with the forward's RNG state and grad enabled; on exit the RNG is as before
        and any buffer changed inside is put back. Exit only once the recomputed graph is used:
        BatchNorm keeps its running statistics for its backward, so writing them earlier would
        invalidate the graph."""
        buffers = [(b, b.detach().clone()) for b in self.cell.buffers()]
        devices = [self.device] if self.cuda_rng is not None else []
        try:
            with torch.random.fork_rng(devices=devices, enabled=True):
                torch.set_rng_state(self.cpu_rng)
                if self.cuda_rng is not None:
                    torch.cuda.set_rng_state(self.cuda_rng, self.device)
                with torch.enable_grad():
                    yield
        finally:
            with torch.no_grad():
                for buf, value in buffers:
                    if not torch.equal(buf, value):
                        buf.copy_(value)


def _identity(t):
    return t


def _detached(t):
    # Stored as itself, a tensor that its own grad_fn saves (an activation's output) would make a
    # reference cycle through the C++ graph that no garbage collection breaks: the whole step's
    # graph leaked on every call. Autograd re-attaches the unpacked tensor, so gradients are unchanged.
    return t.detach()


def sample_chunks(batch: int, chunk: int) -> List[slice]:
    """Slices of dim 0 with `chunk` samples each; one slice of everything when chunk is 0 or
    covers the batch."""
    if chunk <= 0 or chunk >= batch:
        return [slice(None)]
    return [slice(i, min(i + chunk, batch)) for i in range(0, batch, chunk)]


class _ImplicitStepFunction(torch.autograd.Function):
    """(x, h*, *params) -> (f(x, h*), penalty); keeps x, h* and the parameters only."""

    @staticmethod
    def forward(ctx, spec: ImplicitStep, x, h_star, *params):
        state = _CellState(spec.cell, x)
        chunks = sample_chunks(h_star.shape[0], spec.chunk)
        share_of = h_star.numel() if len(chunks) > 1 else None
        # The penalty's value needs one VJP, so the step runs with a graph here; that graph lives
        # only inside this forward (one chunk's at a time). Identity saved-tensor hooks keep an
        # outer hook (e.g. one that measures what autograd keeps for the backward) from counting
        # it as kept.
        outs, penalty = [], None
        whole = None if len(chunks) == 1 else torch.empty_like(h_star)  # the chunks' outputs, in place
        for rows in chunks:
            with torch.set_grad_enabled(spec.penalty is not None), \
                    torch.autograd.graph.saved_tensors_hooks(_detached, _identity):
                h_in = h_star[rows].detach().requires_grad_(spec.penalty is not None)
                h_next = spec.cell(x[rows].detach(), h_in)
                if spec.penalty is not None:
                    value = spec.penalty(h_next, h_in, False, of=share_of)
                    penalty = value if penalty is None else penalty + value
            if whole is None:
                outs.append(h_next.detach())
            else:
                whole[rows] = h_next.detach()
        h_next = outs[0] if whole is None else whole
        ctx.spec, ctx.state, ctx.used, ctx.chunks = spec, state, False, chunks
        ctx.save_for_backward(x, h_star)
        ctx.has_penalty = penalty is not None
        if penalty is None:
            penalty = h_next.new_zeros(())
        if not spec.differentiable_penalty:
            ctx.mark_non_differentiable(penalty)
        return h_next.detach(), penalty.detach()

    @staticmethod
    def backward(ctx, grad_h, grad_penalty):
        if ctx.used:
            raise RuntimeError(USED_TWICE)
        ctx.used = True
        spec = ctx.spec
        x, h_star = ctx.saved_tensors
        want_penalty = (ctx.has_penalty and spec.differentiable_penalty and grad_penalty is not None
                        and bool(grad_penalty.ne(0).any()))
        if len(ctx.chunks) > 1:
            return _ImplicitStepFunction._backward_in_chunks(ctx, grad_h, grad_penalty, want_penalty)
        x_in = x.detach().requires_grad_(ctx.needs_input_grad[1])
        params = spec.params
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[3:]) if need]
        inputs = ([x_in] if ctx.needs_input_grad[1] else []) + [params[i] for i in wanted]
        result = [None] * (3 + len(params))
        with ctx.state.replay():
            h_in = h_star.detach().requires_grad_()
            with ctx.state.autocast():
                h_next = spec.cell(x_in, h_in)
            if grad_h is None:
                grad_h = torch.zeros_like(h_next)
            # Solve before the penalty's double-backward graph exists: the peak holds the step's
            # graph and the solver's vectors, or the step's and the penalty's graphs, not all three.
            z, stats = solve_backward(_vjp_through(h_next, h_in), grad_h, spec.config)
            if spec.on_backward is not None:
                spec.on_backward(stats)
            outputs, grads = [h_next], [z.to(h_next.dtype)]
            if want_penalty:
                with ctx.state.autocast():
                    penalty = spec.penalty(h_next, h_in, True)
                outputs.append(penalty)
                grads.append(grad_penalty.to(penalty.dtype))
            if inputs:
                got = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
                if ctx.needs_input_grad[1]:
                    result[1], got = got[0], got[1:]
                for i, g in zip(wanted, got):
                    result[3 + i] = g
        return tuple(result)

    @staticmethod
    def _backward_in_chunks(ctx, grad_h, grad_penalty, want_penalty):
        """The backward chunk by chunk: no graph of the whole batch ever exists."""
        spec, state, chunks = ctx.spec, ctx.state, ctx.chunks
        x, h_star = ctx.saved_tensors
        params, need_x = spec.params, ctx.needs_input_grad[1]
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[3:]) if need]
        result = [None] * (3 + len(params))

        def step(rows, x_grad: bool, h_grad: bool):
            x_in = x[rows].detach().requires_grad_(x_grad)
            h_in = h_star[rows].detach().requires_grad_(h_grad)
            with state.autocast():
                return x_in, h_in, spec.cell(x_in, h_in)

        def vjp(v):  # the batch's VJP, one chunk's graph at a time
            out = torch.empty_like(v)
            for rows in chunks:
                _, h_in, h_next = step(rows, False, True)
                out[rows] = torch.autograd.grad(h_next, h_in, v[rows].to(h_next.dtype))[0]
            return out

        with state.replay():
            if grad_h is None:
                grad_h = torch.zeros_like(h_star)
            z, stats = solve_backward(vjp, grad_h, spec.config)
            if spec.on_backward is not None:
                spec.on_backward(stats)
            x_grad = torch.empty_like(x) if need_x else None
            for rows in chunks:
                x_in, h_in, h_next = step(rows, need_x, want_penalty)
                outputs, grads = [h_next], [z[rows].to(h_next.dtype)]
                if want_penalty:
                    with state.autocast():
                        penalty = spec.penalty(h_next, h_in, True, of=h_star.numel(), record=False)
                    outputs.append(penalty)
                    grads.append(grad_penalty.to(penalty.dtype))
                inputs = ([x_in] if need_x else []) + [params[i] for i in wanted]
                if not inputs:
                    continue
                got = list(torch.autograd.grad(outputs, inputs, grads, allow_unused=True))
                if need_x:
                    x_grad[rows] = 0 if got[0] is None else got[0]
                    got = got[1:]
                for i, g in zip(wanted, got):
                    if g is not None:
                        result[3 + i] = g if result[3 + i] is None else result[3 + i] + g
            result[1] = x_grad
        return tuple(result)


def implicit_step(spec: ImplicitStep, x: torch.Tensor, h_star: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(f(x, h*) with the RBP gradient, the penalty (a zero tensor when there is none)), keeping
    only x, h* and the parameters between forward and backward. Parameters of the cell that
    require grad are inputs of the node, so their gradient hooks fire once per backward."""
    return _ImplicitStepFunction.apply(spec, x, h_star.detach(), *spec.params)


def trainable_parameters(module: nn.Module) -> List[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


__all__: Sequence[str] = ("attach_rbp_gradient", "implicit_step", "ImplicitStep", "sample_chunks", "trainable_parameters")

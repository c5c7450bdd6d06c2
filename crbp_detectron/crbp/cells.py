"""Recurrent cells f(x, h) -> h_next for the Recurrence wrapper (pure PyTorch).

HGRUCell follows the horizontal gated recurrent unit (Linsley et al., NeurIPS 2018; the C-RBP
paper's equations), with eta = nonlinearity (softplus by default), sigma = sigmoid:

    g1 = sigma(U1 * h)                 or the GALA attention gate
    c1 = Norm(W_inh * (h . g1))
    h1 = eta(x - eta(c1 . (alpha h + mu)))       (inner eta optional: `inhibition_eta`)
    g2 = sigma(U2 * h1)
    c2 = Norm(W_exc * h1)
    h~ = eta(kappa h1 + gamma c2 + omega h1 . c2)  (excitation="full")  or  eta(c2) ("simple")
    h  = (1 - g2) . h + g2 . h~                   (wrapped in eta when `output_eta`)

`HGRUCell.pathfinder(...)` and `HGRUCell.coco(...)` give the two published configurations.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .arguments import check_choice

NORMS = ("batch", "group", "none")


def softplus(x: torch.Tensor) -> torch.Tensor:
    """F.softplus (threshold 20), with a faster formula where no graph is recorded.

    The graph-free solver steps are most of a recurrent block's cell evaluations, and there
    ATen's float32 softplus (log1p) is not vectorised on this x86 build: 2.6 ms for 0.26 M
    elements, against 0.8 ms for log(1 + exp(x)) in place (x beyond ATen's threshold 20), which
    is as accurate (float32: both within 6e-7 of the exact value; inf, -inf, NaN alike). Where a
    graph is recorded (the implicit step, BPTT, the penalty's double backward) ATen's softplus
    runs, so every gradient is computed as before (benchmarks/results/train_speed_softplus.md)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.softplus(x)
    return x.clamp(max=20).exp_().add_(1).log_().where(x <= 20, x)  # NaN stays NaN (the else branch)


NONLINEARITIES = {"softplus": softplus, "relu": F.relu, "tanh": torch.tanh}
EXCITATIONS = ("full", "simple")
GATES = ("conv", "gala")
# Initial bias of the update (mix) gate g2: "chrono" = -log U(1, T-1), slow gates g2 in [1/T, 1/2]
# (Tallec & Ollivier); "neutral" = 0, g2 = 1/2. A slow gate puts the Jacobian's column sums near
# 1 - g2 ~ 1 before anything is learned, where the LCP (lambda < 1) is already active.
UPDATE_GATE_INITS = ("chrono", "neutral")


def chrono_init_(bias: torch.Tensor, timesteps: int, sign: float = 1.0) -> torch.Tensor:
    """Chrono initialisation (Tallec & Ollivier, 2018) in place: bias = sign * log(U(1, T - 1)).

    In place on purpose: the published hGRU code called a non-in-place `log`, so its chrono
    initialisation never took effect.
    """
    with torch.no_grad():
        bias.uniform_(1.0, max(float(timesteps) - 1.0, 1.0 + 1e-3)).log_().mul_(sign)
    return bias


def make_norm(kind: str, channels: int, num_groups: int = 32) -> nn.Module:
    check_choice("norm", kind, NORMS)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = min(num_groups, channels)
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels are not divisible into {groups} groups")
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class GALAGate(nn.Module):
    """Global-and-local attention (Linsley et al., ICLR 2019) as a gate: a global path (average
    pool, 1x1 C -> C/4 -> C) times a local path (kxk C -> C/2 -> 1 map), plus a per-channel bias,
    through a sigmoid."""

    def __init__(self, channels: int, kernel_size: int = 3, global_reduction: int = 4, local_reduction: int = 2):
        super().__init__()
        pad = kernel_size // 2
        self.global_down = nn.Conv2d(channels, channels // global_reduction, 1)
        self.global_up = nn.Conv2d(channels // global_reduction, channels, 1, bias=False)
        self.local_down = nn.Conv2d(channels, channels // local_reduction, kernel_size, padding=pad)
        self.local_up = nn.Conv2d(channels // local_reduction, 1, kernel_size, padding=pad, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, h):
        global_att = self.global_up(F.relu(self.global_down(h.mean(dim=(2, 3), keepdim=True))))
        local_att = self.local_up(F.relu(self.local_down(h)))
        return torch.sigmoid(global_att * local_att + self.bias.view(1, -1, 1, 1))


class HGRUCell(nn.Module):
    """One hGRU step; x (the feed-forward drive) and h have the same shape [B, C, H, W]."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        *,
        gate: str = "conv",
        norm: str = "group",
        num_groups: int = 32,
        nonlinearity: str = "softplus",
        inhibition_eta: bool = True,
        excitation: str = "full",
        output_eta: bool = False,
        timesteps: int = 8,
        update_gate_init: str = "chrono",
    ):
        super().__init__()
        check_choice("update_gate_init", update_gate_init, UPDATE_GATE_INITS)
        check_choice("gate", gate, GATES)
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        check_choice("excitation", excitation, EXCITATIONS)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        self.channels = channels
        self.eta = NONLINEARITIES[nonlinearity]
        self.inhibition_eta = inhibition_eta
        self.excitation = excitation
        self.output_eta = output_eta
        pad = kernel_size // 2

        self.inhibition_gate = GALAGate(channels, kernel_size) if gate == "gala" else nn.Conv2d(channels, channels, 1)
        self.w_inh = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.w_exc = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.mix_gate = nn.Conv2d(channels, channels, 1)
        self.norm_inh = make_norm(norm, channels, num_groups)
        self.norm_exc = make_norm(norm, channels, num_groups)
        self.alpha = nn.Parameter(torch.full((channels,), 0.1))
        self.mu = nn.Parameter(torch.ones(channels))
        if excitation == "full":
            self.kappa = nn.Parameter(torch.full((channels,), 0.5))
            self.gamma = nn.Parameter(torch.ones(channels))
            self.omega = nn.Parameter(torch.full((channels,), 0.5))
        self.update_gate_init = update_gate_init
        self.reset_parameters(timesteps)

    @classmethod
    def pathfinder(cls, channels: int = 25, kernel_size: int = 7, timesteps: int = 20, norm: str = "batch",
                   update_gate_init: str = "chrono"):
        """The Pathfinder cell: 1x1 gate, full excitation, inner and output softplus."""
        return cls(channels, kernel_size, gate="conv", norm=norm, inhibition_eta=True,
                   excitation="full", output_eta=True, timesteps=timesteps, update_gate_init=update_gate_init)

    @classmethod
    def coco(cls, channels: int = 256, kernel_size: int = 3, timesteps: int = 20, norm: str = "group",
             num_groups: int = 32):
        """The COCO mask-head cell: GALA gate, GroupNorm, h1 = eta(x - c1 (alpha h + mu)), h~ = eta(c2)."""
        return cls(channels, kernel_size, gate="gala", norm=norm, num_groups=num_groups,
                   inhibition_eta=False, excitation="simple", output_eta=False, timesteps=timesteps)

    def reset_parameters(self, timesteps: int):
        for conv in (self.w_inh, self.w_exc):
            nn.init.orthogonal_(conv.weight)
        for conv in (self.mix_gate,) + ((self.inhibition_gate,) if isinstance(self.inhibition_gate, nn.Conv2d) else ()):
            nn.init.xavier_uniform_(conv.weight)
        # The inhibition gate starts open (g1 large), as chrono init intends; the update gate slow
        # (g2 ~ 1/T, chrono) or half open (neutral).
        chrono_init_(self.inhibition_gate.bias, timesteps, sign=1.0)
        if self.update_gate_init == "chrono":
            chrono_init_(self.mix_gate.bias, timesteps, sign=-1.0)
        else:
            nn.init.zeros_(self.mix_gate.bias)

    @staticmethod
    def _per_channel(p):
        return p.view(1, -1, 1, 1)

    def forward(self, x, h):
        pc = self._per_channel
        g1 = self.inhibition_gate(h)
        if isinstance(self.inhibition_gate, nn.Conv2d):
            g1 = torch.sigmoid(g1)
        c1 = self.norm_inh(self.w_inh(h * g1))
        inhibition = c1 * (pc(self.alpha) * h + pc(self.mu))
        if self.inhibition_eta:
            inhibition = self.eta(inhibition)
        h1 = self.eta(x - inhibition)
        g2 = torch.sigmoid(self.mix_gate(h1))
        c2 = self.norm_exc(self.w_exc(h1))
        if self.excitation == "full":
            h_tilde = self.eta(pc(self.kappa) * h1 + pc(self.gamma) * c2 + pc(self.omega) * h1 * c2)
        else:
            h_tilde = self.eta(c2)
        h_next = (1 - g2) * h + g2 * h_tilde
        return self.eta(h_next) if self.output_eta else h_next


class ConvGRUCell(nn.Module):
    """Convolutional GRU (Ballas et al., 2016): x has `input_channels`, h has `hidden_channels`."""

    def __init__(self, input_channels: int, hidden_channels: int, kernel_size: int = 3, timesteps: int = 8):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        pad = kernel_size // 2
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(input_channels + hidden_channels, 2 * hidden_channels, kernel_size, padding=pad)
        self.candidate = nn.Conv2d(input_channels + hidden_channels, hidden_channels, kernel_size, padding=pad)
        nn.init.orthogonal_(self.candidate.weight, gain=1 / math.sqrt(2))
        with torch.no_grad():
            self.gates.bias.zero_()
            chrono_init_(self.gates.bias[:hidden_channels], timesteps, sign=-1.0)  # update gate ~ 1/T

    def initial_state(self, x):
        return x.new_zeros((x.shape[0], self.hidden_channels) + tuple(x.shape[2:]))

    def forward(self, x, h):
        update, reset = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        h_tilde = torch.tanh(self.candidate(torch.cat([x, reset * h], dim=1)))
        return (1 - update) * h + update * h_tilde

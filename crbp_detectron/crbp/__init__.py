"""C-RBP core: recurrence to equilibrium, the RBP gradient, contraction penalties. Pure PyTorch:
nothing here imports Detectron2."""
from .backward import NeumannConfig, attach_rbp_gradient, neumann_series
from .cells import ConvGRUCell, GALAGate, HGRUCell
from .collect import (BlockSummary, block_name, collect_recurrence, penalty_losses,
                      recurrent_blocks, summary_scalars)
from .penalties import PENALTIES, jacobian_frobenius_penalty, lipschitz_penalty
from .recurrence import MODES, PENALIZED_MODES, Recurrence, RecurrenceRecord
from .solver import iterate, relative_residual
from .stats import BackwardStats, RecurrenceStats

__all__ = [k for k in dir() if not k.startswith("_")]

"""C-RBP core: recurrence to equilibrium, the RBP gradient, contraction penalties. Pure PyTorch:
nothing here imports Detectron2."""
from .backward import ImplicitStep, attach_rbp_gradient, implicit_step
from .backward_solvers import BACKWARD_SOLVERS, BackwardConfig, register_backward_solver, solve_backward
from .cells import UPDATE_GATE_INITS, ConvGRUCell, GALAGate, HGRUCell
from .collect import (BlockSummary, block_name, collect_recurrence, penalty_losses, penalty_schedule_scale,
                      recurrent_blocks, set_penalty_scale, summary_scalars)
from .penalties import PENALTIES, jacobian_frobenius_penalty, lipschitz_penalty
from .recurrence import IMPLICIT_STEPS, MODES, PENALIZED_MODES, Recurrence, RecurrenceRecord
from .solver import (FORWARD_SOLVERS, FixedPointMap, ForwardConfig, IterationResult, iterate, register_forward_solver,
                     relative_residual, samples_independent, solve_forward)
from .stats import BackwardStats, RecurrenceStats, relative_distance, spectral_radius

__all__ = [k for k in dir() if not k.startswith("_")]

"""Statistics of one recurrent call: what the forward did, and what its backward did."""
from dataclasses import asdict, dataclass, field
from typing import List, Optional


@dataclass
class BackwardStats:
    """Filled in by the RBP gradient when the backward pass reaches the recurrent block."""

    neumann_terms: int = 0  # number of VJP terms added to the Neumann sum
    neumann_residual: float = float("nan")  # ||v_K|| / ||g|| of the last term computed
    diverged: bool = False  # the series grew or turned non-finite; a partial sum was used

    def as_dict(self):
        return asdict(self)


@dataclass
class RecurrenceStats:
    """What one forward of a recurrent block did. Floats, so loggers can take them as they are."""

    mode: str
    steps: int  # iterations run (the recorded step included)
    residual: float  # final relative residual ||h_t+1 - h_t|| / ||h_t+1||
    converged: bool  # residual under the tolerance (always False when no tolerance is set)
    penalty: Optional[float] = None  # value of the contraction penalty, if computed
    max_column_sum: Optional[float] = None  # max_j (1^T J)_j, from the LCP's VJP
    residual_trace: Optional[List[float]] = None  # residual after each step, if asked for
    backward: Optional[BackwardStats] = field(default=None)  # set when the backward runs

    def as_dict(self):
        """Flat dict of the scalar statistics (the trace left out)."""
        out = {
            "steps": self.steps,
            "residual": self.residual,
            "converged": float(self.converged),
        }
        if self.penalty is not None:
            out["penalty"] = self.penalty
        if self.max_column_sum is not None:
            out["max_column_sum"] = self.max_column_sum
        if self.backward is not None:
            out["neumann_terms"] = self.backward.neumann_terms
            out["neumann_residual"] = self.backward.neumann_residual
            out["diverged"] = float(self.backward.diverged)
        return out

"""The guarded training step: one SimpleTrainer subclass for full and mixed precision (CUDA float16
with a GradScaler, CPU bfloat16 without one) that never lets a bad step reach the weights.

Before the optimizer moves: a non-finite loss on any rank stops training (FloatingPointError);
a gradient whose norm is non-finite or absurd (above FACTOR x the median of the recent accepted
steps) is refused: the step is skipped, the largest offender is named, and too many refusals in a
row stop training. Gradients are checked unscaled, before SOLVER.CLIP_GRADIENTS clips them (that
happens inside optimizer.step), so clipping bounds ordinary spikes and the guard catches explosions.
"""
import logging
import math
import statistics
import time
from collections import deque
from typing import Dict, Optional

import detectron2.utils.comm as comm
import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage

from ..checkpoint import CheckpointedParts

logger = logging.getLogger("detectron2.crbp")
# Defaults of SOLVER.GRADIENT_GUARD (config.py) and of GradientGuard. FACTOR 20: on the demo, a
# healthy step's norm was at most 7.9x the running median (10 seeds x 40 iterations, unclipped) and
# 2.5x (900 iterations, clipped); the first step of a blow-up was 52x, the next ones 100-1e13x.
GUARD_DEFAULTS = dict(factor=20.0, window=50, min_history=10, max_consecutive_refusals=3)


def gradient_norms(model: torch.nn.Module) -> Dict[str, float]:
    """L2 norm of every parameter's gradient, by parameter name (DDP's "module." prefix dropped)."""
    named = [(n[len("module."):] if n.startswith("module.") else n, p.grad) for n, p in model.named_parameters()
             if p.grad is not None]
    if not named:
        return {}
    norms = torch._foreach_norm([g.detach() for _, g in named])
    values = torch.stack([n.float() for n in norms]).cpu().tolist()
    return {name: value for (name, _), value in zip(named, values)}


def total_norm(norms: Dict[str, float]) -> float:
    return math.sqrt(sum(v * v for v in norms.values())) if norms else 0.0


class GradientGuard:
    """Decides whether a step's gradient may be applied.

    factor: refuse when the total norm exceeds factor x the median of the last `window` accepted
    norms (0: only non-finite norms are refused); the ratio is judged once `min_history` norms have
    been accepted. max_consecutive_refusals: raise after this many refused steps in a row (0: never)."""

    def __init__(self, factor: float = GUARD_DEFAULTS["factor"], window: int = GUARD_DEFAULTS["window"],
                 min_history: int = GUARD_DEFAULTS["min_history"],
                 max_consecutive_refusals: int = GUARD_DEFAULTS["max_consecutive_refusals"]):
        self.factor, self.min_history = factor, min_history
        self.max_consecutive_refusals = max_consecutive_refusals
        self.history = deque(maxlen=window)
        self.consecutive_refusals = 0
        self.refused_steps = 0

    @classmethod
    def from_config(cls, cfg) -> "GradientGuard":
        g = cfg.SOLVER.GRADIENT_GUARD
        return cls(factor=g.FACTOR, window=g.WINDOW, min_history=g.MIN_HISTORY,
                   max_consecutive_refusals=g.MAX_CONSECUTIVE_REFUSALS)

    def limit(self) -> float:
        if not self.factor or len(self.history) < self.min_history:
            return math.inf
        return self.factor * statistics.median(self.history)

    def refusal(self, norms: Dict[str, float]) -> Optional[str]:
        """None if the step may go ahead, else why not (naming the largest offender)."""
        total, limit = total_norm(norms), self.limit()
        if math.isfinite(total) and total <= limit:
            return None
        bad = [n for n, v in norms.items() if not math.isfinite(v)]
        worst = bad[0] if bad else max(norms, key=norms.get)
        if not math.isfinite(total):
            return (f"gradient norm is non-finite ({total}); {len(bad)} parameters have non-finite gradients, "
                    f"first {worst!r} (norm {norms[worst]})")
        return (f"gradient norm {total:.4g} exceeds {self.factor:g} x the median {limit / self.factor:.4g} of the "
                f"last {len(self.history)} accepted steps (SOLVER.GRADIENT_GUARD.FACTOR); largest: {worst!r} "
                f"with norm {norms[worst]:.4g}")

    def accept(self, norms: Dict[str, float]):
        self.history.append(total_norm(norms))
        self.consecutive_refusals = 0

    def refuse(self):
        self.consecutive_refusals += 1
        self.refused_steps += 1

    def state_dict(self):
        return {"history": list(self.history), "consecutive_refusals": self.consecutive_refusals,
                "refused_steps": self.refused_steps}

    def load_state_dict(self, state):
        self.history.clear()
        self.history.extend(float(v) for v in state["history"])
        self.consecutive_refusals = int(state["consecutive_refusals"])
        self.refused_steps = int(state["refused_steps"])


def _all_ranks_true(flag: bool) -> bool:
    value = torch.tensor(1.0 if flag else 0.0)
    if comm.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


class GuardedTrainer(CheckpointedParts, SimpleTrainer):
    """SimpleTrainer whose step runs under autocast when `amp` (float16 + GradScaler on CUDA,
    bfloat16 on CPU) and refuses bad steps before the optimizer moves (see the module docstring)."""

    def __init__(self, model, data_loader, optimizer, amp: bool = False, gradient_guard: Optional[GradientGuard] = None):
        super().__init__(model, data_loader, optimizer)
        self.device_type = next(model.parameters()).device.type
        self.amp = amp
        self.amp_dtype = torch.float16 if self.device_type == "cuda" else torch.bfloat16
        self.grad_scaler = torch.amp.GradScaler(self.device_type) if amp and self.device_type == "cuda" else None
        self.gradient_guard = gradient_guard or GradientGuard(factor=0.0)
        # Our own iterator over the data loader, made at the first step: Detectron2 0.6 keeps its
        # in an attribute that is a read-only property on Detectron2's main branch.
        self._batches = None

    def reset_data_loader(self, data_loader_builder):
        """Replaces the data loader with `data_loader_builder()` (Detectron2 main's SimpleTrainer
        API, here for every version); its iterator is made at the next step."""
        self.close_data_loader()
        self.data_loader = data_loader_builder()

    def close_data_loader(self):
        """Ends the current data iterator (its worker processes) now."""
        close = getattr(self._batches, "close", None)  # a generator: ResumableBatches'
        if close is not None:
            close()
        self._batches = None

    def next_batch(self):
        if self._batches is None:
            self._batches = iter(self.data_loader)
        return next(self._batches)

    def run_step(self):
        assert self.model.training, "[GuardedTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = self.next_batch()
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())
        self._refuse_non_finite_loss(loss_dict, losses)
        self.optimizer.zero_grad()
        (self.grad_scaler.scale(losses) if self.grad_scaler else losses).backward()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler:
            self.grad_scaler.unscale_(self.optimizer)
        if self._gradient_accepted():
            if self.grad_scaler:
                self.grad_scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        if self.grad_scaler:
            self.grad_scaler.update()

    def _refuse_non_finite_loss(self, loss_dict, losses):
        if _all_ranks_true(bool(torch.isfinite(losses.detach()))):
            return
        bad = {k: float(v.detach()) for k, v in loss_dict.items() if not torch.isfinite(v)}
        raise FloatingPointError(
            f"Loss became infinite or NaN at iteration {self.iter} (on some rank; here: {bad or 'none'}); "
            "training stopped before the optimizer step, so the weights and the checkpoints are intact.")

    def _gradient_accepted(self) -> bool:
        norms = gradient_norms(self.model)
        total = total_norm(norms)
        guard = self.gradient_guard
        reason = guard.refusal(norms)
        # Under a GradScaler a non-finite gradient is a float16 overflow: scaler.step skips the
        # step and lowers the scale, as it should; the guard judges finite gradients only.
        scaler_overflow = self.grad_scaler is not None and not math.isfinite(total)
        accepted = _all_ranks_true(reason is None or scaler_overflow)
        if accepted and not scaler_overflow:
            guard.accept(norms)
        elif not accepted:
            guard.refuse()
        get_event_storage().put_scalars(grad_norm=total, **{"grad_guard/refused_steps": float(guard.refused_steps)},
                                        smoothing_hint=False)
        if accepted:
            return True
        logger.warning("Iteration %d: step refused, weights unchanged: %s", self.iter, reason or "on another rank")
        if guard.max_consecutive_refusals and guard.consecutive_refusals >= guard.max_consecutive_refusals:
            raise FloatingPointError(
                f"{guard.consecutive_refusals} steps in a row refused at iteration {self.iter} "
                f"(SOLVER.GRADIENT_GUARD.MAX_CONSECUTIVE_REFUSALS); last: {reason or 'on another rank'}. "
                "Training stopped; the weights and the checkpoints hold no refused step. Lower "
                "SOLVER.BASE_LR, enable SOLVER.CLIP_GRADIENTS, or raise SOLVER.GRADIENT_GUARD.FACTOR.")
        return False

    def checkpointed_parts(self):
        parts = {"gradient_guard": self.gradient_guard}
        if self.grad_scaler is not None:  # the key Detectron2's AMPTrainer uses
            parts["grad_scaler"] = self.grad_scaler
        return parts

"""What an exact resume needs beyond model, optimizer and scheduler: every process's RNG states
(RoI sampling on CPU and CUDA) and data-stream state, gathered from all ranks when a checkpoint is
written, and handed back to each rank on resume. Saved as tensors, numbers and lists, which
torch.load(weights_only=True) accepts."""
import logging
import random
from typing import List, Optional

import detectron2.utils.comm as comm
import numpy as np
import torch
from detectron2.engine import HookBase

logger = logging.getLogger("detectron2.crbp")


def rng_state() -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
             "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_cached": float(cached),
             "python_version": int(version), "python_state": list(py_state), "python_gauss": gauss_next}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached"]))
    random.setstate((state["python_version"], tuple(state["python_state"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingStateHook(HookBase):
    """Checkpoints {"sampler_seed", "ranks": [per-rank {"rng", "stream"}]}. The per-rank states are
    gathered (a collective on every rank) after each step whose end a checkpoint may be taken at:
    the periodic ones (SOLVER.CHECKPOINT_PERIOD, the last iteration), and, through `gather`, the
    preemption checkpoint."""

    def __init__(self, sampler_seed: int, checkpoint_period: int):
        self.sampler_seed, self.checkpoint_period = sampler_seed, checkpoint_period
        self._gathered: Optional[List[dict]] = None
        self._gathered_at = None
        self.resume_stream: Optional[dict] = None  # this rank's stream state from a loaded checkpoint

    def _local(self) -> dict:
        loader = self.trainer._trainer.data_loader
        return {"rng": rng_state(), "stream": loader.state() if hasattr(loader, "state") else None}

    def gather(self):
        """Collects every rank's state at the current iteration (call on every rank)."""
        self._gathered = comm.all_gather(self._local())
        self._gathered_at = self.trainer.iter

    def after_step(self):
        it, period = self.trainer.iter, self.checkpoint_period
        if (period > 0 and (it + 1) % period == 0) or it >= self.trainer.max_iter - 1:
            self.gather()

    def state_dict(self):
        ranks = self._gathered
        if ranks is None or self._gathered_at != getattr(self.trainer, "iter", None):
            if comm.get_world_size() > 1:
                logger.warning("Checkpoint outside the gathered iterations: it holds rank 0's RNG and data-stream "
                               "state only, so a resume of the other ranks will not be exact")
            ranks = [self._local()]
        return {"sampler_seed": int(self.sampler_seed), "ranks": ranks}

    def load_state_dict(self, state):
        self.sampler_seed = state["sampler_seed"]
        ranks = state["ranks"]
        rank, world = comm.get_rank(), comm.get_world_size()
        if len(ranks) != world:
            logger.warning("The checkpoint holds the RNG and data-stream state of %d processes, this run has %d: "
                           "the resumed run continues, but not exactly as an uninterrupted one", len(ranks), world)
        mine = ranks[min(rank, len(ranks) - 1)]
        set_rng_state(mine["rng"])
        self.resume_stream = mine["stream"] if len(ranks) == world else None

"""Building recurrent blocks (a cell in a Recurrence) from MODEL.CRBP, for every component. A
component built without a config gets the config's defaults (`default_block_kwargs`), and a cell's
gate initialisation follows the block's steps unless `timesteps` is given, so that a model is the
same whether its steps were set in a YAML file, a LazyConfig or a constructor."""
import functools
from typing import Optional, Tuple

from torch import nn

from ..crbp import ConvGRUCell, HGRUCell, Recurrence

_NORMS = {"GN": "group", "BN": "batch", "": "none"}


def recurrence_kwargs_from_cfg(cfg) -> dict:
    """Recurrence(...) keyword arguments from MODEL.CRBP."""
    c, b, fw = cfg.MODEL.CRBP, cfg.MODEL.CRBP.BACKWARD, cfg.MODEL.CRBP.FORWARD
    return dict(
        mode=c.MODE, steps=c.STEPS, test_steps=c.TEST_STEPS or None, tol=c.TOL,
        forward_solver=fw.SOLVER, forward_window=fw.WINDOW, forward_beta=fw.BETA, forward_ridge=fw.RIDGE,
        forward_compile=fw.COMPILE,
        implicit_step=c.IMPLICIT_STEP, implicit_chunk=c.IMPLICIT_CHUNK, backward_solver=b.SOLVER, backward_max_vjps=b.MAX_VJPS,
        backward_tol=b.TOL, backward_restart=b.RESTART, divergence_window=b.DIVERGENCE_WINDOW,
        divergence_growth_bound=b.GROWTH_BOUND, penalty=c.PENALTY, lcp_lambda=c.LCP_LAMBDA,
        lcp_absolute=c.LCP_ABSOLUTE,
        penalty_reduction=c.PENALTY_REDUCTION, penalty_weight=c.PENALTY_WEIGHT,
        hutchinson_samples=c.HUTCHINSON_SAMPLES,
    )


def cell_kwargs_from_cfg(cfg) -> dict:
    """build_cell(...) keyword arguments from MODEL.CRBP.CELL."""
    c = cfg.MODEL.CRBP.CELL
    return dict(
        cell_type=c.TYPE, kernel_size=c.KERNEL_SIZE, norm=c.NORM, num_groups=c.NUM_GROUPS,
        gate=c.GATE, nonlinearity=c.NONLINEARITY, inhibition_eta=c.INHIBITION_ETA,
        excitation=c.EXCITATION, output_eta=c.OUTPUT_ETA, update_gate_init=c.UPDATE_GATE_INIT,
    )


@functools.lru_cache(maxsize=None)
def _default_cfg():
    from ..config import get_cfg

    return get_cfg()


def default_block_kwargs() -> Tuple[dict, dict]:
    """(cell_kwargs, recurrence_kwargs) of the config's defaults (add_crbp_config: the paper's COCO
    block), for components built without a config."""
    cfg = _default_cfg()
    return cell_kwargs_from_cfg(cfg), recurrence_kwargs_from_cfg(cfg)


def cell_kwargs_for(cell_kwargs: Optional[dict], steps: int) -> dict:
    """build_cell keyword arguments whose `timesteps` (the gate-bias initialisation) default to the
    block's `steps`."""
    return {"timesteps": steps, **(cell_kwargs or {})}


def build_cell(channels: int, *, cell_type: str = "hgru", kernel_size: int = 3, norm: str = "GN",
               num_groups: int = 32, gate: str = "gala", nonlinearity: str = "softplus",
               inhibition_eta: bool = False, excitation: str = "simple", output_eta: bool = False,
               timesteps: int = 20, update_gate_init: str = "chrono") -> nn.Module:
    """A cell whose state and drive both have `channels` channels (defaults: the COCO hGRU)."""
    if norm not in _NORMS:
        raise ValueError(f"cell norm must be one of {tuple(_NORMS)}, got {norm!r}")
    if cell_type == "hgru":
        return HGRUCell(channels, kernel_size, gate=gate, norm=_NORMS[norm], num_groups=num_groups,
                        nonlinearity=nonlinearity, inhibition_eta=inhibition_eta,
                        excitation=excitation, output_eta=output_eta, timesteps=timesteps,
                        update_gate_init=update_gate_init)
    if cell_type == "convgru":
        return ConvGRUCell(channels, channels, kernel_size, timesteps=timesteps)
    raise ValueError(f"cell type must be 'hgru' or 'convgru', got {cell_type!r}")


def build_recurrence(channels: int, cell: Optional[nn.Module] = None, cell_kwargs: Optional[dict] = None,
                     **recurrence_kwargs) -> Recurrence:
    """A Recurrence around `cell`, or around a new cell built from `cell_kwargs` (its `timesteps`
    default to the recurrence's steps)."""
    if cell is None:
        if "steps" in recurrence_kwargs:
            cell_kwargs = cell_kwargs_for(cell_kwargs, recurrence_kwargs["steps"])
        cell = build_cell(channels, **(cell_kwargs or {}))
    return Recurrence(cell, **recurrence_kwargs)

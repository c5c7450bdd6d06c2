"""The test-time steps sweep: one trained model evaluated at several numbers of recurrent steps
(the paper's PQ-against-steps curve), written as CSV and PNG."""
import csv
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Sequence

import torch

from ..crbp import recurrent_blocks

logger = logging.getLogger("detectron2.crbp")


def set_test_steps(model: torch.nn.Module, steps: int) -> List[str]:
    """Sets the test-time iterations of every recurrent block; returns their names."""
    blocks = recurrent_blocks(model)
    for block in blocks.values():
        block.test_steps = steps
    return list(blocks)


def sweep_test_steps(cfg, model, steps_list: Sequence[int], out_dir: str) -> List[Dict[str, float]]:
    """Evaluates one model at several test-time step counts: the paper's PQ-vs-steps curve.
    Writes test_steps.csv and test_steps.png under out_dir; returns the rows."""
    from ..engine import Trainer  # the evaluators by dataset type

    if not recurrent_blocks(model):
        raise ValueError("sweep_test_steps: the model has no recurrent block")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for steps in steps_list:
        set_test_steps(model, steps)
        results = Trainer.test(cfg, model)
        row = {"test_steps": steps}
        for task, metrics in flatten_results(results).items():
            row[task] = metrics
        rows.append(row)
        logger.info("test steps %d: %s", steps, {k: v for k, v in row.items() if k.startswith("panoptic_seg/")})
    keys = sorted({k for r in rows for k in r if k != "test_steps"})
    with open(os.path.join(out_dir, "test_steps.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["test_steps"] + keys)
        for r in rows:
            writer.writerow([r["test_steps"]] + [r.get(k, "") for k in keys])
    plot_test_steps(rows, os.path.join(out_dir, "test_steps.png"), train_steps=cfg.MODEL.CRBP.STEPS)
    return rows


def flatten_results(results) -> Dict[str, float]:
    """{"panoptic_seg": {"PQ": ..}, ...} (possibly per dataset) -> {"panoptic_seg/PQ": ..}."""
    flat = OrderedDict()

    def visit(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{prefix}/{k}" if prefix else k, v)
        elif isinstance(value, (int, float)):
            flat[prefix] = float(value)

    visit("", results)
    return flat


def plot_test_steps(rows, path, train_steps=None):
    from ..utils.plotting import saved_figure

    with saved_figure(path, "PQ against test-time steps", "recurrent steps at test time", "panoptic quality") as ax:
        steps = [r["test_steps"] for r in rows]
        for key, label in (("panoptic_seg/PQ", "PQ"), ("panoptic_seg/PQ_th", "PQ things"),
                           ("panoptic_seg/PQ_st", "PQ stuff")):
            if any(key in r for r in rows):
                ax.plot(steps, [r.get(key, float("nan")) for r in rows], marker="o", label=label)
        if train_steps:
            ax.axvline(train_steps, color="gray", linestyle="--", linewidth=1, label=f"training steps ({train_steps})")

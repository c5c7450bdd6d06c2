"""Training and evaluation on Detectron2's engine: the Trainer (evaluators by dataset type),
config set-up for the command-line tools, and the test-time steps sweep."""
import csv
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Sequence

import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import (COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators,
                                   SemSegEvaluator)

from .config import load_config
from .crbp import recurrent_blocks

logger = logging.getLogger("crbp_detectron")


def has_compiled_ops() -> bool:
    """True when detectron2's compiled extension is installed (not the pure-Python stand-in)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "IS_STANDIN", False)


def build_evaluator(cfg, dataset_name: str, output_folder: str = None):
    """Evaluators by the dataset's evaluator_type, as Detectron2's own train_net does; COCO's
    fast evaluation needs compiled ops, so it is used only when they are there."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
    evaluators = []
    if evaluator_type in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=has_compiled_ops()))
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if not evaluators:
        raise NotImplementedError(f"no evaluator for dataset {dataset_name!r} with evaluator_type {evaluator_type!r}")
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


class Trainer(DefaultTrainer):
    """Detectron2's DefaultTrainer with the evaluators of `build_evaluator`."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)


def check_device(cfg):
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA device is available: "
                           "add `MODEL.DEVICE cpu` to the command line to train on the CPU.")


def setup(args):
    """Config from --config-file (a path, a packaged config name or a model-zoo name) and opts,
    validated, then Detectron2's default_setup (logging, output dir, config dump, seed)."""
    cfg = load_config(args.config_file, args.opts)
    check_device(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def set_test_steps(model: torch.nn.Module, steps: int) -> List[str]:
    """Sets the test-time iterations of every recurrent block; returns their names."""
    blocks = recurrent_blocks(model)
    for block in blocks.values():
        block.test_steps = steps
    return list(blocks)


def sweep_test_steps(cfg, model, steps_list: Sequence[int], out_dir: str) -> List[Dict[str, float]]:
    """Evaluates one model at several test-time step counts: the paper's PQ-vs-steps curve.
    Writes test_steps.csv and test_steps.png under out_dir; returns the rows."""
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    steps = [r["test_steps"] for r in rows]
    for key, label in (("panoptic_seg/PQ", "PQ"), ("panoptic_seg/PQ_th", "PQ things"), ("panoptic_seg/PQ_st", "PQ stuff")):
        if any(key in r for r in rows):
            ax.plot(steps, [r.get(key, float("nan")) for r in rows], marker="o", label=label)
    if train_steps:
        ax.axvline(train_steps, color="gray", linestyle="--", linewidth=1, label=f"training steps ({train_steps})")
    ax.set_xlabel("recurrent steps at test time")
    ax.set_ylabel("panoptic quality")
    ax.set_title("PQ against test-time steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

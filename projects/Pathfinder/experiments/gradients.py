"""How hard the contraction penalty pulls against the task at the start of training: the norms of
the task loss's and the penalty's gradients (and their cosine), over all parameters and over the
recurrent cell's, for a config at initialisation, on one training batch. Used by the study's
report; also a command line:

    python -m experiments.gradients --config-file study/Base-Pathfinder-32px.yaml
"""
import argparse
import math
from typing import Dict

import torch
from detectron2.data import DatasetCatalog

from pathfinder.config import load_pathfinder_config
from pathfinder.data import load_sample
from pathfinder.engine import PathfinderTrainer, prepare_datasets


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def gradient_balance(cfg, seed: int = 0, batch: int = 32) -> Dict[str, float]:
    """{"task", "penalty", "task_cell", "penalty_cell", "cosine", "cosine_cell"} at initialisation."""
    torch.manual_seed(seed)
    model = PathfinderTrainer.build_model(cfg)
    model.train()
    inputs = [load_sample(r) for r in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[::97][:batch]]
    params = [p for p in model.parameters() if p.requires_grad]
    cell = {id(p) for p in model.body.parameters()}

    def penalty_of(losses):
        return sum(v for k, v in losses.items() if k.startswith("loss_penalty"))

    # One forward per gradient: the C-RBP backward runs once per forward (no retain_graph)
    losses = model(inputs)
    if not torch.is_tensor(penalty_of(losses)):  # no penalty in the loss (rbp, or scale 0)
        return {}
    task = torch.autograd.grad(losses["loss_pixel"], params, allow_unused=True)
    pen = torch.autograd.grad(penalty_of(model(inputs)), params, allow_unused=True)
    task = [torch.zeros_like(p) if g is None else g for g, p in zip(task, params)]
    pen = [torch.zeros_like(p) if g is None else g for g, p in zip(pen, params)]
    in_cell = [id(p) in cell for p in params]
    t, q = _flat(task), _flat(pen)
    tc = _flat([g for g, c in zip(task, in_cell) if c])
    qc = _flat([g for g, c in zip(pen, in_cell) if c])

    def cos(a, b):
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if a.norm() > 0 and b.norm() > 0 else math.nan

    return {"task": float(t.norm()), "penalty": float(q.norm()), "task_cell": float(tc.norm()),
            "penalty_cell": float(qc.norm()), "cosine": cos(t, q), "cosine_cell": cos(tc, qc)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cfg = load_pathfinder_config(args.config_file, args.opts)
    prepare_datasets(cfg)
    for k, v in gradient_balance(cfg, args.seed).items():
        print(f"{k:14s} {v:.4g}")


if __name__ == "__main__":
    main()

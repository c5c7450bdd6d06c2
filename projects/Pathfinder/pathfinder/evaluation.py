"""Pathfinder metrics on pooled pixel counts: a Detectron2 DatasetEvaluator, and the sweep of IoU
against test-time steps (one pass over the data for every step count)."""
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List

import detectron2.utils.comm as comm
import torch
from detectron2.evaluation import DatasetEvaluator

from .data import load_sample


@dataclass
class PixelCounts:
    """Confusion counts over a data set (the pixels of all images summed)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> "PixelCounts":
        pred, target = pred.bool(), target.bool()
        self.tp += int((pred & target).sum())
        self.fp += int((pred & ~target).sum())
        self.fn += int((~pred & target).sum())
        self.tn += int((~pred & ~target).sum())
        return self

    def __add__(self, other: "PixelCounts") -> "PixelCounts":
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def metrics(self) -> Dict[str, float]:
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        nan = float("nan")
        tpr = tp / (tp + fn) if tp + fn else nan
        tnr = tn / (tn + fp) if tn + fp else nan
        return {"iou": tp / (tp + fp + fn) if tp + fp + fn else nan,
                "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
                "precision": tp / (tp + fp) if tp + fp else nan,
                "recall": tpr,
                "balanced_accuracy": 0.5 * (tpr + tnr)}


def _gathered(counts: PixelCounts) -> PixelCounts:
    total = PixelCounts()
    for c in comm.all_gather(counts):
        total = total + c
    return total


class PathfinderEvaluator(DatasetEvaluator):
    """IoU, F1, precision, recall and balanced accuracy of `logits > 0` against the marked path,
    on pixel counts pooled over the set (and over processes)."""

    def __init__(self, dataset_name: str):
        self.dataset_name = dataset_name
        self.counts = PixelCounts()

    def reset(self):
        self.counts = PixelCounts()

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            self.counts.add(out["logits"].cpu() > 0, inp["mask"])

    def evaluate(self):
        return OrderedDict(pathfinder=_gathered(self.counts).metrics())


@torch.no_grad()
def steps_sweep(model, records: List[Dict], max_steps: int, batch_size: int) -> List[Dict[str, float]]:
    """Metrics after each test-time step 1..max_steps (the model in eval mode, no graph)."""
    was_training = model.training
    model.eval()
    counts = [PixelCounts() for _ in range(max_steps)]
    try:
        for start in range(0, len(records), batch_size):
            samples = [load_sample(r) for r in records[start:start + batch_size]]
            images = torch.stack([s["image"] for s in samples]).to(model.device, torch.float32) / 255.0
            target = torch.stack([s["mask"] for s in samples])
            for c, logits in zip(counts, model.step_outputs(images, max_steps)):
                c.add(logits.cpu() > 0, target)
    finally:
        model.train(was_training)
    return [dict(_gathered(c).metrics(), steps=t + 1) for t, c in enumerate(counts)]

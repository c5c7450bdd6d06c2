"""Training and evaluation of the Pathfinder models: losses, pooled metrics, a resumable training
loop with C-RBP statistics in the log, test-time step sweeps and a memory probe.

Used by `tools/train_pathfinder.py` (one run from a YAML config) and
`benchmarks/pathfinder_experiment.py` (the whole BPTT-versus-C-RBP experiment).
"""
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crbp_detectron.crbp import collect_recurrence, penalty_losses, summary_scalars

LOSSES = ("focal", "balanced_bce", "bce")


# ------------------------------------------------------------------------------------ losses
def pixel_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "focal", alpha: float = 0.75,
               gamma: float = 2.0) -> torch.Tensor:
    """Class-balanced pixel loss for one-logit segmentation.

    focal: sigmoid focal loss (Lin et al. 2017), alpha weighting the positives, averaged over
        pixels; balanced_bce: the mean BCE over positive pixels and the mean over negative pixels,
        averaged (each class weighs one half whatever its pixel count); bce: plain mean BCE.
    """
    if kind == "focal":
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        a_t = alpha * target + (1 - alpha) * (1 - target)
        return (a_t * (1 - p_t) ** gamma * bce).mean()
    if kind == "balanced_bce":
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        pos = target.sum()
        neg = target.numel() - pos
        pos_term = (bce * target).sum() / pos.clamp_min(1)
        neg_term = (bce * (1 - target)).sum() / neg.clamp_min(1)
        return 0.5 * (pos_term + neg_term)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


# ----------------------------------------------------------------------------------- metrics
@dataclass
class PixelCounts:
    """Pooled confusion counts over a data set (pixels of all images summed)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, pred: torch.Tensor, target: torch.Tensor):
        pred, target = pred.bool(), target.bool()
        self.tp += int((pred & target).sum())
        self.fp += int((pred & ~target).sum())
        self.fn += int((~pred & target).sum())
        self.tn += int((~pred & ~target).sum())
        return self

    def metrics(self) -> Dict[str, float]:
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        iou = tp / (tp + fp + fn) if tp + fp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        tpr = tp / (tp + fn) if tp + fn else float("nan")
        tnr = tn / (tn + fp) if tn + fp else float("nan")
        return {"iou": iou, "f1": f1, "balanced_accuracy": 0.5 * (tpr + tnr), "recall": tpr,
                "precision": tp / (tp + fp) if tp + fp else float("nan")}


def _batches(n: int, batch: int):
    for start in range(0, n, batch):
        yield slice(start, min(start + batch, n))


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, batch: int = 64,
             threshold: float = 0.0) -> Dict[str, float]:
    """IoU, F1, balanced accuracy on pooled pixel counts (logit > threshold is positive)."""
    was_training = model.training
    model.eval()
    counts = PixelCounts()
    for sl in _batches(len(images), batch):
        counts.add(model(images[sl]) > threshold, masks[sl] > 0.5)
    collect_recurrence(model)  # drop the eval records
    model.train(was_training)
    return counts.metrics()


@torch.no_grad()
def steps_sweep(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, max_steps: int,
                batch: int = 64, threshold: float = 0.0) -> List[Dict[str, float]]:
    """Metrics after each test-time step 1..max_steps (one pass: `model.step_outputs`)."""
    was_training = model.training
    model.eval()
    counts = [PixelCounts() for _ in range(max_steps)]
    for sl in _batches(len(images), batch):
        target = masks[sl] > 0.5
        for c, out in zip(counts, model.step_outputs(images[sl], max_steps)):
            c.add(out > threshold, target)
    model.train(was_training)
    return [dict(c.metrics(), steps=t + 1) for t, c in enumerate(counts)]


# ---------------------------------------------------------------------------- memory probe
def saved_tensor_bytes(fn: Callable[[], torch.Tensor]) -> Dict[str, int]:
    """Runs `fn` (a forward pass returning the loss) under saved_tensors_hooks and reports what
    autograd kept for the backward: the bytes of distinct storages saved (parameters included),
    then runs the backward so nothing is left over. Graph-free work (C-RBP's N-1 steps) saves
    nothing; C-RBP's LCP, computed with create_graph, saves its double-backward graph."""
    seen = {}

    def pack(t):
        # Distinct storages, each counted once; a view counts its own extent, not the whole
        # storage it lives in (a batch sliced from the data set is not the data set).
        size = t.numel() * t.element_size()
        try:
            storage = t.untyped_storage()
            key = (storage.data_ptr(), t.device.type)
            size = min(size, storage.nbytes())
        except (RuntimeError, NotImplementedError):
            key = (id(t), "other")
        seen[key] = max(seen.get(key, 0), size)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    total = sum(seen.values())
    loss.backward()
    return {"saved_bytes": int(total), "saved_tensors": len(seen)}


# ------------------------------------------------------------------------------ training
def augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator):
    """One random symmetry of the square (flips and a transpose) per batch."""
    k = int(torch.randint(0, 8, (1,), generator=generator))
    if k & 1:
        images, masks = images.flip(-1), masks.flip(-1)
    if k & 2:
        images, masks = images.flip(-2), masks.flip(-2)
    if k & 4:
        images, masks = images.transpose(-1, -2), masks.transpose(-1, -2)
    return images.contiguous(), masks.contiguous()


@dataclass
class TrainConfig:
    iterations: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "focal"
    focal_alpha: float = 0.75
    focal_gamma: float = 2.0
    grad_clip: float = 0.0  # max gradient norm (0: none)
    warmup: int = 0  # linear learning-rate warm-up iterations
    cosine: bool = False  # cosine decay to 0 after the warm-up
    augment: bool = True
    log_every: int = 20
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 100
    seed: int = 0
    threads: int = 1
    time_limit: float = 0.0  # seconds of training before stopping (0: none); resumable
    max_nonfinite: int = 50  # consecutive non-finite losses (updates skipped) before giving up


def _lr_at(cfg: TrainConfig, it: int) -> float:
    if cfg.warmup and it < cfg.warmup:
        return cfg.lr * (it + 1) / cfg.warmup
    if cfg.cosine:
        span = max(cfg.iterations - cfg.warmup, 1)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(it - cfg.warmup, span) / span))
    return cfg.lr


def _atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path, model, optimizer, iteration, generator, extra=None):
    _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
                  "iteration": iteration, "generator": generator.get_state() if generator else None,
                  "extra": extra or {}}, path)


def load_checkpoint(path, model, optimizer=None, generator=None) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])
    return state


class JsonlLogger:
    """Appends one JSON object per line; also echoes a short line to stdout."""

    def __init__(self, path: Optional[str], echo: bool = True):
        self.path, self.echo = path, echo
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def log(self, entry: Dict):
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        if self.echo:
            keys = [k for k in ("iter", "loss", "task_loss", "penalty_loss", "val_iou", "sec") if k in entry]
            extra = {k: v for k, v in entry.items() if k.endswith("max_column_sum") or k.endswith("backward_vjps")}
            short = " ".join(f"{k}={entry[k]:.4g}" if isinstance(entry[k], float) else f"{k}={entry[k]}" for k in keys)
            short += "".join(f" {k.split('/')[-1]}={v:.3g}" for k, v in extra.items())
            print(short, flush=True)


def train(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, cfg: TrainConfig, out_dir: str,
          val: Optional[Sequence[torch.Tensor]] = None, echo: bool = True) -> Dict:
    """Trains in place; resumes from `out_dir/checkpoint.pth` when it exists. Returns a summary
    (iterations done, seconds, final validation metrics, whether finished)."""
    torch.set_num_threads(cfg.threads)
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "checkpoint.pth")
    logger = JsonlLogger(os.path.join(out_dir, "log.jsonl"), echo)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, elapsed, state = 0, 0.0, {"extra": {}}
    if os.path.exists(ckpt_path):
        state = load_checkpoint(ckpt_path, model, optimizer, gen)
        start, elapsed = state["iteration"], state["extra"].get("seconds", 0.0)
    model.train()
    t_begin = time.time()
    window = {"loss": [], "task_loss": [], "penalty_loss": []}
    scalars_acc: Dict[str, List[float]] = {}
    finished = start >= cfg.iterations
    done = start
    nonfinite = skipped = 0
    diverged = bool(state["extra"].get("diverged")) if start else False
    if diverged:
        finished = True
    for it in range(start, cfg.iterations if not diverged else start):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, it)
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
        x, y = images[idx], masks[idx]
        if cfg.augment:
            x, y = augment(x, y, gen)
        logits = model(x)
        task = pixel_loss(logits, y, cfg.loss, cfg.focal_alpha, cfg.focal_gamma)
        summaries = collect_recurrence(model)
        penalties = penalty_losses(summaries)
        penalty = sum(penalties.values()) if penalties else torch.zeros(())
        loss = task + penalty
        optimizer.zero_grad(set_to_none=True)
        if math.isfinite(float(loss)):
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            nonfinite = 0
        else:  # a diverged forward (e.g. RBP without the penalty): skip the update, count it
            nonfinite += 1
            skipped += 1
        # After the backward, so that the Neumann statistics of this step are in.
        for k, v in summary_scalars(summaries).items():
            scalars_acc.setdefault(k, []).append(v)
        window["loss"].append(float(loss))
        window["task_loss"].append(float(task))
        window["penalty_loss"].append(float(penalty))
        done = it + 1
        seconds = elapsed + time.time() - t_begin
        if done % cfg.log_every == 0 or done == cfg.iterations:
            entry = {"iter": done, "lr": _lr_at(cfg, it), "sec": round(seconds, 2)}
            entry.update({k: float(np.mean(v)) for k, v in window.items()})
            entry["skipped_nonfinite"] = skipped
            entry.update({k: float(np.nanmean(v)) if len(v) else float("nan") for k, v in scalars_acc.items()})
            if val is not None and cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.iterations:
                entry.update({f"val_{k}": v for k, v in evaluate(model, *val).items()})
            logger.log(entry)
            window = {k: [] for k in window}
            scalars_acc = {}
        if nonfinite >= cfg.max_nonfinite:
            diverged = True
            save_checkpoint(ckpt_path, model, optimizer, done, gen, {"seconds": seconds, "diverged": True})
            break
        stop_for_time = cfg.time_limit and seconds >= cfg.time_limit
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations or stop_for_time:
            save_checkpoint(ckpt_path, model, optimizer, done, gen, {"seconds": seconds})
        if stop_for_time:
            break
    else:
        finished = True
    seconds = elapsed + time.time() - t_begin
    summary = {"iterations": done, "seconds": seconds, "finished": finished or diverged or done >= cfg.iterations,
               "diverged": diverged, "skipped_nonfinite": skipped}
    if val is not None and summary["finished"]:
        summary["val"] = evaluate(model, *val)
        logger.log({"iter": done, "sec": round(seconds, 2), **{f"val_{k}": v for k, v in summary["val"].items()}})
    return summary

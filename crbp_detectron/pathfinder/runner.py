"""One Pathfinder run from a plain config dict (read from YAML by `tools/train_pathfinder.py`):
data (generated once, cached by parameters), model, training (resumable), evaluation per
contour length (including lengths not trained on), a test-time steps sweep, a memory probe.

Config layout (every key optional; DEFAULTS below):

    name: crbp
    output_dir: output/pathfinder/crbp
    data:   {root, generator: {PathfinderConfig fields}, train_lengths, train_per_length,
             test_lengths, test_per_length, seed, workers}
    model:  {type: hgru|cnn, ...PathfinderHGRU / PathfinderCNN arguments}
    train:  {TrainConfig fields}
    eval:   {batch_size, test_steps, sweep_max_steps, sweep_lengths, val_length, val_count,
             memory_batch}
"""
import copy
import hashlib
import json
import os
import time
from dataclasses import fields
from typing import Dict, Optional

import torch

from crbp_detectron.data.pathfinder import PathfinderConfig, PathfinderDataset, ensure_dataset

from .engine import TrainConfig, evaluate, pixel_loss, saved_tensor_bytes, steps_sweep, train
from .model import PathfinderHGRU, build_model, count_parameters

DEFAULTS = {
    "name": "pathfinder",
    "output_dir": "output/pathfinder/run",
    "data": {
        "root": "output/pathfinder_data",
        "generator": {"size": 32, "paddle_length": 2.5, "gap": 2.0, "paddle_width": 1.0, "distractors": 3,
                      "distractor_length": 3, "long_distractors": 1, "marker_radius": 1.25,
                      "continuity": 40.0, "clearance": 1.5},
        "train_lengths": [3, 5, 7],
        "train_per_length": 2000,
        "test_lengths": [3, 5, 7],
        "test_per_length": 300,
        "seed": 0,
        "workers": 0,
    },
    "model": {"type": "hgru", "channels": 8, "kernel_size": 5, "mode": "crbp", "steps": 20},
    "train": {},
    "eval": {"batch_size": 100, "test_steps": None, "sweep_max_steps": None, "sweep_lengths": None,
             "val_length": None, "val_count": 100, "memory_batch": None},
}


def merge(base: Dict, override: Optional[Dict]) -> Dict:
    """Recursive dict merge (override wins); returns a new dict."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve(cfg: Dict) -> Dict:
    out = merge(DEFAULTS, cfg)
    if "model" in cfg and cfg["model"].get("type", "hgru") != DEFAULTS["model"]["type"]:
        out["model"] = copy.deepcopy(cfg["model"])  # another model type: no hGRU defaults
    return out


def load_config(path: str, overrides=()) -> Dict:
    """Reads a YAML config; `_base_: other.yaml` (relative to the file) is loaded first and
    merged under it. `overrides` are "key.sub=value" strings, values parsed as YAML."""
    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    base = cfg.pop("_base_", None)
    if base:
        base_cfg = load_config(os.path.join(os.path.dirname(os.path.abspath(path)), base))
        # A model of another type replaces the base's model section instead of merging into it.
        if "model" in cfg and cfg["model"].get("type", "hgru") != base_cfg.get("model", {}).get("type", "hgru"):
            base_cfg.pop("model", None)
        cfg = merge(base_cfg, cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return cfg


def _dataset_dir(root: str, split: str, gen: PathfinderConfig, n: int, seed: int) -> str:
    key = hashlib.sha1(json.dumps([gen.to_dict(), n, seed], sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(root, f"{split}_L{gen.length}_s{gen.size}_{key}")


def dataset_for(data_cfg: Dict, split: str, length: int) -> PathfinderDataset:
    """The generated set for one split and contour length (made on first use)."""
    gen = PathfinderConfig(length=length, **data_cfg["generator"])
    n = data_cfg["train_per_length"] if split == "train" else data_cfg["test_per_length"]
    seed = int(data_cfg["seed"]) * 1000 + (0 if split == "train" else 500) + length
    folder = _dataset_dir(data_cfg["root"], split, gen, n, seed)
    ensure_dataset(folder, gen, n, seed, workers=data_cfg.get("workers", 0), progress=True)
    return PathfinderDataset(folder)


def train_tensors(data_cfg: Dict):
    images, masks = [], []
    for length in data_cfg["train_lengths"]:
        x, y = dataset_for(data_cfg, "train", length).tensors()
        images.append(x)
        masks.append(y)
    return torch.cat(images), torch.cat(masks)


def test_tensors(data_cfg: Dict, length: int, count: Optional[int] = None):
    return dataset_for(data_cfg, "test", length).tensors(count)


def horizon(model) -> Optional[int]:
    return model.recurrence.steps if isinstance(model, PathfinderHGRU) else None


def measure_memory(model, images, masks, train_cfg: TrainConfig) -> Dict[str, int]:
    """Bytes autograd saves for one training iteration's backward (see saved_tensor_bytes)."""
    from crbp_detectron.crbp import collect_recurrence, penalty_losses

    was = model.training
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN buffers move: restore

    def step():
        logits = model(images)
        loss = pixel_loss(logits, masks, train_cfg.loss, train_cfg.focal_alpha, train_cfg.focal_gamma)
        for v in penalty_losses(collect_recurrence(model)).values():
            loss = loss + v
        return loss

    out = saved_tensor_bytes(step)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    model.train(was)
    return out


def run(cfg: Dict, evaluate_only: bool = False, echo: bool = True) -> Dict:
    """Trains (or resumes) and evaluates one configuration; writes `results.json` to the output
    folder and returns it."""
    cfg = resolve(cfg)
    out_dir = cfg["output_dir"]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    data_cfg, ev = cfg["data"], cfg["eval"]
    train_cfg = TrainConfig(**{k: v for k, v in cfg["train"].items() if k in {f.name for f in fields(TrainConfig)}})
    torch.manual_seed(train_cfg.seed)
    torch.set_num_threads(train_cfg.threads)
    model = build_model(cfg["model"])
    results = {"name": cfg["name"], "model": cfg["model"], "parameters": count_parameters(model)}

    images, masks = train_tensors(data_cfg)
    val_length = ev["val_length"] or max(data_cfg["train_lengths"])
    val = test_tensors(data_cfg, val_length, ev["val_count"]) if train_cfg.eval_every else None
    if ev.get("memory_batch"):
        mb = int(ev["memory_batch"])
        results["memory"] = measure_memory(model, images[:mb], masks[:mb], train_cfg)
        results["memory"]["batch"] = mb

    if evaluate_only:
        ckpt = os.path.join(out_dir, "checkpoint.pth")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        results["train"] = {"iterations": state["iteration"], "seconds": state["extra"].get("seconds")}
    else:
        summary = train(model, images, masks, train_cfg, out_dir, val=val, echo=echo)
        results["train"] = {k: v for k, v in summary.items() if k != "val"}
        if not summary["finished"]:
            results["status"] = "interrupted (time limit); rerun to resume"
            _write(out_dir, results)
            return results
    results["train"]["seconds_per_iteration"] = (
        results["train"]["seconds"] / results["train"]["iterations"] if results["train"]["iterations"] else None)

    # Evaluation at the horizon (or at eval.test_steps), per contour length.
    t0 = time.time()
    steps = horizon(model)
    if steps is not None and ev["test_steps"]:
        model.configure(test_steps=int(ev["test_steps"]))
    results["test_steps"] = model.recurrence._eval_steps if steps is not None else None
    results["test"] = {}
    for length in data_cfg["test_lengths"]:
        x, y = test_tensors(data_cfg, length)
        results["test"][str(length)] = evaluate(model, x, y, ev["batch_size"])
    # IoU against test-time steps, up to twice the horizon by default.
    if steps is not None:
        max_steps = int(ev["sweep_max_steps"] or 2 * steps)
        results["sweep"] = {}
        for length in ev["sweep_lengths"] or data_cfg["test_lengths"]:
            x, y = test_tensors(data_cfg, length)
            results["sweep"][str(length)] = steps_sweep(model, x, y, max_steps, ev["batch_size"])
    results["eval_seconds"] = time.time() - t0
    results["status"] = "done"
    _write(out_dir, results)
    return results


def _write(out_dir, results):
    tmp = os.path.join(out_dir, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "results.json"))

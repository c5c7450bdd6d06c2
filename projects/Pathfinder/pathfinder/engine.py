"""Training and evaluating Pathfinder models on the project's Detectron2 engine.

`PathfinderTrainer` is the C-RBP `Trainer` (Detectron2's DefaultTrainer: checkpointer, LR
scheduler, EvalHook, JSON/TensorBoard writers; plus the finite-loss guard, preemption checkpoints
and exact resume) with Pathfinder's data, evaluator and optimiser. `final_report` evaluates a
trained model the way the experiment needs it and writes OUTPUT_DIR/results.json: a small file
that holds everything a table or a plot of the experiment is built from.
"""
import json
import logging
import os
import statistics
import time
from typing import Dict, List, Optional

import detectron2.utils.comm as comm
import torch
from detectron2.data import DatasetCatalog
from detectron2.solver.build import maybe_add_gradient_clipping

from crbp_detectron.crbp.memory import saved_bytes
from crbp_detectron.data.stream import build_resumable_train_loader
from crbp_detectron.engine import Trainer
from crbp_detectron.engine import setup as engine_setup
from .config import load_pathfinder_config, resolve_pathfinder_config
from .data import VAL, PathfinderMapper, PathfinderTestBatches, load_sample, register_pathfinder_datasets, test_name
from .evaluation import PathfinderEvaluator, steps_sweep
from .model import count_parameters

logger = logging.getLogger("detectron2.crbp.pathfinder")
RESULTS_FILE = "results.json"
# metrics.json keys kept in results.json's learning curve (with every crbp/<block>/... statistic)
CURVE_KEYS = ("total_loss", "loss_pixel", "lr", "pathfinder/iou")


class PathfinderTrainer(Trainer):
    @classmethod
    def build_optimizer(cls, cfg, model):
        if cfg.PATHFINDER.OPTIMIZER == "adam":
            kind, kwargs = torch.optim.Adam, {}
        else:
            kind, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM}
        params = [p for p in model.parameters() if p.requires_grad]
        return maybe_add_gradient_clipping(cfg, kind)(params, lr=cfg.SOLVER.BASE_LR,
                                                      weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs)

    @classmethod
    def build_train_loader(cls, cfg, sampler_seed=None, stream=None):
        stream = stream or {}
        return build_resumable_train_loader(
            cfg, DatasetCatalog.get(cfg.DATASETS.TRAIN[0]), PathfinderMapper(cfg.PATHFINDER.AUGMENT),
            seed=cfg.SEED if sampler_seed is None else sampler_seed, start=stream.get("start", 0),
            pending=stream.get("pending", ()))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        records = DatasetCatalog.get(dataset_name)[comm.get_rank()::comm.get_world_size()]
        return PathfinderTestBatches(records, cfg.PATHFINDER.EVAL.BATCH_SIZE)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return PathfinderEvaluator(dataset_name)


def prepare_datasets(cfg):
    """Generates and registers the config's data; DATASETS.TRAIN is the training set and
    DATASETS.TEST the validation set evaluated during training (the final report evaluates every
    test length). `cfg` must not be frozen."""
    names = register_pathfinder_datasets(cfg)
    cfg.DATASETS.TRAIN = tuple(names["train"])
    cfg.DATASETS.TEST = (VAL,)
    return cfg


def setup(args):
    """Config (file + opts, validated), data, Detectron2's default_setup (logging, output folder,
    config dump, seed): the C-RBP tools' setup with Pathfinder's config and data."""
    return engine_setup(args, load=load_pathfinder_config, register=prepare_datasets, resolve=resolve_pathfinder_config)


def training_memory(cfg, model) -> Dict[str, int]:
    """Bytes autograd saves for the backward of one training iteration (batch
    PATHFINDER.EVAL.MEMORY_BATCH), parameters not counted; model state (BatchNorm buffers) and
    gradients are restored."""
    batch = cfg.PATHFINDER.EVAL.MEMORY_BATCH or cfg.SOLVER.IMS_PER_BATCH
    inputs = [load_sample(r) for r in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:batch]]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    try:
        nbytes, loss = saved_bytes(lambda: sum(model(inputs).values()), exclude=list(model.parameters()))
        loss.backward()  # runs (and frees) the graph, the recurrent blocks' backward included
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(state)
        model.train(was_training)
    return {"saved_bytes": nbytes, "batch": batch}


def cycle_dirs(cfg) -> List[str]:
    """Where each training cycle runs (PATHFINDER.CYCLES): OUTPUT_DIR itself for one cycle,
    OUTPUT_DIR/cycle1 ... cycle<k> for several."""
    cycles = cfg.PATHFINDER.CYCLES
    if cycles == 1:
        return [cfg.OUTPUT_DIR]
    return [os.path.join(cfg.OUTPUT_DIR, f"cycle{c}") for c in range(1, cycles + 1)]


def train_in_cycles(cfg, resume: bool = False, on_trainer=None):
    """Trains PATHFINDER.CYCLES cycles of SOLVER.MAX_ITER iterations; returns the last cycle's
    trainer. Each cycle is the run a fresh `train_net.py` would make with MODEL.WEIGHTS set to the
    previous cycle's model_final.pth: the RNGs re-seeded as default_setup seeds them, a fresh
    optimiser and LR schedule, the data stream from its start. `resume`: finished cycles are kept,
    the interrupted one resumes from its last checkpoint. `on_trainer(trainer)` sees each trainer
    before it trains (the caller's handle for a failure report)."""
    from detectron2.utils.env import seed_all_rng

    weights = cfg.MODEL.WEIGHTS
    dirs = cycle_dirs(cfg)
    trainer = None
    for index, folder in enumerate(dirs):
        final = os.path.join(folder, "model_final.pth")
        if resume and index < len(dirs) - 1 and os.path.exists(final):
            weights = final  # a finished cycle (the last one's resume below loads its final checkpoint)
            continue
        cycle_cfg = cfg.clone()
        cycle_cfg.defrost()
        cycle_cfg.OUTPUT_DIR, cycle_cfg.MODEL.WEIGHTS = folder, weights
        cycle_cfg.freeze()
        os.makedirs(folder, exist_ok=True)
        if index > 0:
            seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + comm.get_rank())
            logger.info("Cycle %d of %d: from %s, fresh optimiser and schedule", index + 1, len(dirs), weights)
        trainer = PathfinderTrainer(cycle_cfg)
        trainer.resume_or_load(resume=resume)
        if on_trainer is not None:
            on_trainer(trainer)
        trainer.train()
        weights = final
    return trainer


def _learning_curve(cfg):
    """The logged scalars that matter for the experiment, per logged iteration (metrics.json of
    every cycle, iterations counted from the first cycle's start)."""
    curve = []
    for index, folder in enumerate(cycle_dirs(cfg)):
        path = os.path.join(folder, "metrics.json")
        if not os.path.exists(path):
            continue
        offset = index * cfg.SOLVER.MAX_ITER
        with open(path) as f:
            for line in f:
                entry = json.loads(line)
                kept = {k: v for k, v in entry.items()
                        if k in CURVE_KEYS or k.startswith(("crbp/", "loss_penalty")) or k == "time"}
                if kept:
                    curve.append(dict(iteration=entry.get("iteration", 0) + offset, **kept))
    return curve


def final_report(cfg, model, stopped: Optional[Dict] = None) -> Dict:
    """Evaluates `model` on every test length at its test steps, sweeps IoU against test-time
    steps, measures training memory; writes OUTPUT_DIR/results.json (on the main process).
    `stopped`: {"iteration", "reason"} of a run the guarded step stopped (non-finite loss,
    exploding gradients), recorded with the results of its last good weights."""
    core = getattr(model, "module", model)  # DDP
    block = core.recurrence
    curve = _learning_curve(cfg)
    times = [e["time"] for e in curve if "time" in e]
    trained = [e["iteration"] + 1 for e in curve if "total_loss" in e]  # logged every 20 iterations and at the end
    scheduled = cfg.SOLVER.MAX_ITER * cfg.PATHFINDER.CYCLES
    iterations = stopped["iteration"] if stopped else (max(trained) if trained else scheduled)
    results = {"config": cfg.dump(), "parameters": count_parameters(core), "memory": training_memory(cfg, core),
               "train": {"iterations": iterations,
                         "seconds_per_iteration": statistics.median(times) if times else None,
                         "stopped": stopped},
               "test": {}, "sweep": {}}
    if block is not None:
        results.update(mode=block.mode, steps=block.steps, test_steps=block._eval_steps)
    t0 = time.time()
    test_cfg = cfg.clone()
    test_cfg.defrost()
    test_cfg.DATASETS.TEST = tuple(test_name(L) for L in cfg.PATHFINDER.DATA.TEST_LENGTHS)
    evaluated = PathfinderTrainer.test(test_cfg, core)
    for length in cfg.PATHFINDER.DATA.TEST_LENGTHS:
        entry = evaluated[test_name(length)] if len(test_cfg.DATASETS.TEST) > 1 else evaluated
        results["test"][str(length)] = entry["pathfinder"]
    if block is not None:
        max_steps = cfg.PATHFINDER.EVAL.SWEEP_MAX_STEPS or 2 * cfg.MODEL.CRBP.STEPS
        for length in cfg.PATHFINDER.EVAL.SWEEP_LENGTHS or cfg.PATHFINDER.DATA.TEST_LENGTHS:
            records = DatasetCatalog.get(test_name(length))[comm.get_rank()::comm.get_world_size()]
            results["sweep"][str(length)] = steps_sweep(core, records, max_steps, cfg.PATHFINDER.EVAL.BATCH_SIZE)
    results["eval_seconds"] = time.time() - t0
    results["curve"] = curve
    if comm.is_main_process():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        path = os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(path + ".tmp", path)
        logger.info("Pathfinder results written to %s: IoU %s", path,
                    {k: round(v["iou"], 4) for k, v in results["test"].items()})
    return results

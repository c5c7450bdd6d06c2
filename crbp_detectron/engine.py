"""Training and evaluation on Detectron2's engine: the Trainer (evaluators by dataset type),
config set-up for the command-line tools. (The test-time steps sweep: test_steps.py.)"""
import itertools
import logging
import os
import random
import signal
import time

import detectron2.utils.comm as comm
import numpy as np
import torch
import torch.distributed as dist
from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import DefaultTrainer, HookBase, SimpleTrainer, default_setup, launch
from detectron2.evaluation import (COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators,
                                   SemSegEvaluator)

from .config import load_config, resolve_config_file

logger = logging.getLogger("detectron2.crbp")  # under detectron2's logger: same handlers


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


class Preempted(KeyboardInterrupt):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint. A KeyboardInterrupt, so that
    Detectron2's after-train hooks do not treat it as the end of training."""

    def __init__(self, signum: int, iteration: int, checkpoint: str):
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        super().__init__(f"{signal.Signals(signum).name} at iteration {iteration}: checkpoint saved to "
                         f"{checkpoint}; continue with --resume")


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's infinite TrainingSampler that can start `skip` indices into its stream, so a
    resumed run sees the data an uninterrupted one would have seen."""

    def __init__(self, size: int, shuffle: bool = True, seed: int = None, skip: int = 0):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)


class FiniteLossTrainer(SimpleTrainer):
    """SimpleTrainer whose step refuses a non-finite loss on ANY rank before the optimizer moves:
    the weights (and the checkpoints written later) are never poisoned by a NaN/Inf step."""

    def run_step(self):
        assert self.model.training, "[FiniteLossTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        finite = torch.isfinite(losses.detach()).to(torch.float32)
        if comm.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            bad = {k: float(v) for k, v in loss_dict.items() if not torch.isfinite(v)}
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration {self.iter} (on some rank; here: {bad or 'none'}); "
                "training stopped before the optimizer step, so the weights and the checkpoints are intact.")
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


class TrainingStateHook(HookBase):
    """Checkpoints what an exact resume needs beyond model/optimizer/scheduler: the RNG states
    (RoI sampling, augmentation) and the data sampler's seed. Saved as tensors and numbers, which
    torch.load(weights_only=True) accepts."""

    def __init__(self, sampler_seed: int):
        self.sampler_seed = sampler_seed

    def state_dict(self):
        _, keys, pos, has_gauss, cached = np.random.get_state()
        version, py_state, gauss_next = random.getstate()
        return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
                "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_cached": float(cached),
                "python_version": int(version), "python_state": list(py_state),
                "python_gauss": gauss_next, "sampler_seed": int(self.sampler_seed)}

    def load_state_dict(self, state):
        torch.set_rng_state(state["torch"])
        np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                             state["numpy_has_gauss"], state["numpy_cached"]))
        random.setstate((state["python_version"], tuple(state["python_state"]), state["python_gauss"]))
        self.sampler_seed = state["sampler_seed"]


class PreemptionHook(HookBase):
    """On SIGTERM/SIGINT: finish the current iteration, save a checkpoint at it (all ranks agree
    on the iteration), then stop with `Preempted`."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self._received = 0
        self._previous = {}
        self._owner_pid = None

    def _handler(self, signum, frame):
        if os.getpid() != self._owner_pid:
            # A process forked while training runs (a multiprocessing pool, e.g. panopticapi's
            # in the final evaluation) inherits this handler; there the signal must kill as
            # usual, or pool.terminate() waits forever for a child that ignores SIGTERM.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._received = signum

    def before_train(self):
        self._owner_pid = os.getpid()
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def after_train(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def after_step(self):
        received = torch.tensor(float(self._received))
        if comm.get_world_size() > 1:
            dist.all_reduce(received, op=dist.ReduceOp.MAX)
        if received.item() == 0:
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        self.trainer.checkpointer.save(name, iteration=iteration)
        comm.synchronize()
        raise Preempted(int(received.item()), iteration, os.path.join(self.trainer.cfg.OUTPUT_DIR, name + ".pth"))


class ReplicaConsistencyHook(HookBase):
    """At the end of multi-process training, checks that every rank holds the same parameters
    (DDP's all-reduce keeps them equal; a rank that drifted means a broken gradient path)."""

    def after_train(self):
        if comm.get_world_size() == 1:
            return
        with torch.no_grad():
            params = torch.cat([p.detach().reshape(-1).double().cpu() for p in self.trainer.model.parameters()])
        digests = comm.all_gather((float(params.sum()), float(params.abs().sum()), float(params.norm())))
        max_gap = max(abs(a - b) for d in digests for a, b in zip(d, digests[0]))
        logger.info("Parameters on %d ranks: max checksum difference %.3g", len(digests), max_gap)
        if max_gap > 1e-6 * max(1.0, abs(digests[0][2])):
            raise RuntimeError(f"Parameters differ across ranks after training: checksums {digests}")


def _ignore_termination_then(worker_init_fn):
    def init(worker_id):
        for sig in PreemptionHook.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if worker_init_fn is not None:
            worker_init_fn(worker_id)
    return init


def _workers_leave_termination_to_main(loader):
    """A preemption's SIGTERM reaches the whole process group. PyTorch's data workers die on it,
    which crashes the main process before it can checkpoint; ours ignore it instead, and end when
    the main process shuts the loader down."""
    inner = loader if isinstance(loader, torch.utils.data.DataLoader) else getattr(loader, "dataset", None)
    if isinstance(inner, torch.utils.data.DataLoader) and inner.num_workers > 0:
        inner.worker_init_fn = _ignore_termination_then(inner.worker_init_fn)


class _TorchRNGNeutralStart:
    """A data iterator whose first fetch leaves torch's global RNG as it found it. Starting a
    DataLoader draws its base seed from that RNG: an uninterrupted run did so at iteration 0,
    a resumed run would do it again at its first iteration and shift RoI sampling."""

    def __init__(self, iterator):
        self._iterator, self._first = iterator, True

    def __iter__(self):
        return self

    def __next__(self):
        if not self._first:
            return next(self._iterator)
        self._first = False
        state = torch.get_rng_state()
        batch = next(self._iterator)
        torch.set_rng_state(state)
        return batch


class Trainer(DefaultTrainer):
    """Detectron2's DefaultTrainer with: the evaluators of `build_evaluator`; a step that never
    applies a non-finite loss; a checkpoint on SIGTERM/SIGINT; and an exact resume (RNG states,
    data stream position)."""

    def __init__(self, cfg):
        if cfg.SEED < 0:  # draw the data-order seed once, so a resume can replay it
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SEED = comm.shared_random_seed()
            cfg.freeze()
        super().__init__(cfg)
        self._trainer.__class__ = FiniteLossTrainer  # same state, guarded step

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg, sampler_seed=None, skip=0):
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning("DATALOADER.SAMPLER_TRAIN=%s: a resumed run restarts that sampler's stream "
                           "(exact resume needs TrainingSampler)", cfg.DATALOADER.SAMPLER_TRAIN)
            return super().build_train_loader(cfg)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=0, proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
        seed = cfg.SEED if sampler_seed is None else sampler_seed
        loader = build_detection_train_loader(cfg, dataset=dataset,
                                              sampler=ResumableTrainingSampler(len(dataset), seed=seed, skip=skip))
        _workers_leave_termination_to_main(loader)
        return loader

    def build_hooks(self):
        self._state_hook = TrainingStateHook(self.cfg.SEED)
        # Preemption last: its checkpoint is taken after the LR scheduler has stepped, like the
        # periodic one, so a resumed run continues the same schedule.
        return [self._state_hook] + super().build_hooks() + [PreemptionHook(), ReplicaConsistencyHook()]

    # Detectron2 0.6's DefaultTrainer checkpoints only the iteration and the hooks: the optimizer
    # (momentum, and the LR in effect) was lost on resume. Later Detectron2 adds it like this.
    def state_dict(self):
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            # Continue the data stream where the checkpointed run stopped.
            per_rank = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            loader = self.build_train_loader(self.cfg, sampler_seed=self._state_hook.sampler_seed,
                                             skip=self.start_iter * per_rank)
            self._trainer.data_loader = loader
            self._trainer._data_loader_iter = _TorchRNGNeutralStart(iter(loader))


def launch_from_args(main_func, args):
    """Runs `main_func(args)` in the distributed setting the command line or the environment asks
    for: under torchrun (WORLD_SIZE in the environment) it joins torchrun's process group (gloo
    on CPU, NCCL on GPUs) and sets Detectron2's per-machine group, as Detectron2's launcher does;
    otherwise Detectron2's launcher (--num-gpus/--num-machines/--dist-url) spawns the workers."""
    if "WORLD_SIZE" not in os.environ or "LOCAL_RANK" not in os.environ:
        return launch(main_func, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                      dist_url=args.dist_url, args=(args,))
    use_cuda = torch.cuda.is_available() and "cpu" not in [str(o).lower() for o in args.opts]
    backend = os.environ.get("CRBP_DIST_BACKEND", "nccl" if use_cuda else "gloo")
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    machine = rank // local_size
    for m in range(world // local_size):  # every rank must create every group, in order
        group = dist.new_group(list(range(m * local_size, (m + 1) * local_size)))
        if m == machine:
            comm._LOCAL_PROCESS_GROUP = group
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    try:
        return main_func(args)
    finally:
        dist.destroy_process_group()


def check_device(cfg):
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA device is available: "
                           "add `MODEL.DEVICE cpu` to the command line to train on the CPU.")


def setup(args):
    """Config from --config-file (a path, a packaged config name or a model-zoo name) and opts,
    validated, then Detectron2's default_setup (logging, output dir, config dump, seed)."""
    args.config_file = resolve_config_file(args.config_file)  # default_setup logs the file
    cfg = load_config(args.config_file, args.opts)
    check_device(cfg)
    register_datasets(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def register_datasets(cfg):
    """Registers (generating if needed) the project's own datasets that the config names.
    COCO's standard splits are registered by Detectron2 itself on import."""
    from .data.demo import DEMO_DATASETS, register_demo_datasets

    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if any(n.startswith(DEMO_DATASETS) for n in names):
        register_demo_datasets(progress=comm.is_main_process())

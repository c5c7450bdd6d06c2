"""The trainer and the command-line tools' set-up on Detectron2's engine (as detectron2.engine.defaults):
the Trainer (evaluators by dataset type: ..evaluation), config loading and checks, dataset registration."""
import json
import logging
import os
import weakref

import detectron2.utils.comm as comm
import torch
from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.utils.events import JSONWriter

from ..checkpoint import CheckpointedParts, Checkpointer, remove_stale_temporaries
from ..config import ConfigError, load_config, resolve_config_file
from ..data.stream import build_resumable_train_loader
from ..evaluation import build_evaluator
from .hooks import PenaltyScheduleHook, ReplicaConsistencyHook
from .preemption import PreemptionHook, ignore_termination_in_worker
from .train_loop import GradientGuard, GuardedTrainer
from .training_state import TrainingStateHook

logger = logging.getLogger("detectron2.crbp")  # under detectron2's logger: same handlers


class _Lines:
    """A write buffer without fileno (JSONWriter then skips its fsync)."""

    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines += [line for line in text.splitlines() if line]

    def flush(self):
        pass


class IterationOrderedJSONWriter(JSONWriter):
    """Detectron2's JSONWriter with its rows in iteration order: Detectron2 0.6 writes them in the
    order the metrics were first put, so a run that stops in a forward (whose statistics are put at
    the failing iteration) wrote that row before the previous iteration's."""

    def write(self):
        target, self._file_handle = self._file_handle, _Lines()
        try:
            super().write()
        finally:
            buffered, self._file_handle = self._file_handle, target
        for line in sorted(buffered.lines, key=lambda line: json.loads(line)["iteration"]):
            target.write(line + "\n")
        target.flush()
        os.fsync(target.fileno())


class Trainer(CheckpointedParts, DefaultTrainer):
    """Detectron2's DefaultTrainer with: the evaluators of `build_evaluator`; the guarded step
    (SOLVER.AMP.ENABLED, no non-finite loss, no exploding gradient: `train_loop`); atomic
    checkpoints and a resume past damaged ones (`checkpoint`); a checkpoint on SIGTERM/SIGINT
    (`preemption`); and an exact resume on every rank, with or without data workers (RNG states,
    data stream: `training_state`, `data.stream`)."""

    def __init__(self, cfg):
        amp = cfg.SOLVER.AMP.ENABLED
        cfg = cfg.clone()
        cfg.defrost()
        if cfg.SEED < 0:  # draw the data-order seed once, so a resume can replay it
            cfg.SEED = comm.shared_random_seed()
        # DefaultTrainer builds a SimpleTrainer, or with AMP an AMPTrainer with a CUDA GradScaler
        # (warnings on a CPU), that ours replaces: let it build the plain one, then restore the key.
        cfg.SOLVER.AMP.ENABLED = False
        cfg.freeze()
        super().__init__(cfg)
        self.cfg.defrost()
        self.cfg.SOLVER.AMP.ENABLED = amp
        self.cfg.freeze()
        simple = self._trainer
        self._trainer = GuardedTrainer(simple.model, simple.data_loader, simple.optimizer, amp=amp,
                                       gradient_guard=GradientGuard.from_config(self.cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg, sampler_seed=None, stream=None):
        """The resumable stream (`data.stream`); `stream` = {"start", "pending"} continues one."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            raise ValueError(f"DATALOADER.SAMPLER_TRAIN = {cfg.DATALOADER.SAMPLER_TRAIN!r}: this trainer's resumable "
                             "data stream supports 'TrainingSampler' only")
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=0, proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
        stream = stream or {}
        return build_resumable_train_loader(
            cfg, dataset, DatasetMapper(cfg, True), seed=cfg.SEED if sampler_seed is None else sampler_seed,
            start=stream.get("start", 0), pending=stream.get("pending", ()),
            worker_init_fn=ignore_termination_in_worker)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader = super().build_test_loader(cfg, dataset_name)
        loader.generator = torch.Generator()  # evaluation leaves the global RNGs to training
        return loader

    def build_hooks(self):
        # Called by DefaultTrainer.__init__; the periodic checkpointer hook takes our checkpointer.
        self.checkpointer = Checkpointer(self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        if comm.is_main_process():  # a run's OUTPUT_DIR: the stale writes of killed runs go (logged)
            remove_stale_temporaries(self.cfg.OUTPUT_DIR)
        self._state_hook = TrainingStateHook(self.cfg.SEED, self.cfg.SOLVER.CHECKPOINT_PERIOD)
        self._preemption_hook = PreemptionHook(before_checkpoint=self._state_hook.gather)
        # Preemption last: its checkpoint is taken after the LR scheduler has stepped, like the
        # periodic one, so a resumed run continues the same schedule.
        schedule = PenaltyScheduleHook.from_config(self.cfg)
        return ([self._state_hook] + ([schedule] if schedule else []) + super().build_hooks()
                + [self._preemption_hook, ReplicaConsistencyHook()])

    def build_writers(self):
        writers = super().build_writers()
        for i, writer in enumerate(writers):
            if type(writer) is JSONWriter:
                writer.close()
                writers[i] = IterationOrderedJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))
        return writers

    def after_train(self):
        self._preemption_hook.restore_signals()  # before the final evaluation and its worker processes
        # Shut the data workers down now: they ignore SIGTERM (see ignore_termination_in_worker), so
        # multiprocessing's exit-time terminate-and-join would wait for them forever.
        self._trainer.close_data_loader()
        super().after_train()

    # Detectron2 0.6's DefaultTrainer checkpoints only the iteration and the hooks: the optimizer
    # (momentum, and the LR in effect) was lost on resume. Later Detectron2 adds it under this key.
    def checkpointed_parts(self):
        return {"_trainer": self._trainer}

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            # Continue the data stream where the checkpointed run stopped.
            stream = self._state_hook.resume_stream or {
                "start": self.start_iter * (self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())}
            self._trainer.reset_data_loader(lambda: self.build_train_loader(
                self.cfg, sampler_seed=self._state_hook.sampler_seed, stream=stream))


def check_device(cfg):
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"MODEL.DEVICE = {cfg.MODEL.DEVICE!r}: no CUDA device is available here; add "
                          "`MODEL.DEVICE cpu` to the command line to run on the CPU")


def check_output_dir(folder: str, key: str = "OUTPUT_DIR"):
    """Creates `folder` if missing; a ConfigError naming `key` if a file is in the way or it cannot
    be written to."""
    if not folder:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = folder
        while os.path.dirname(blocker) != blocker and not os.path.exists(blocker):
            blocker = os.path.dirname(blocker)
        raise ConfigError(f"{key} = {folder!r}: {blocker} is a file, not a folder; {key} must be a folder "
                          "(created if missing)") from None
    except OSError as e:
        raise ConfigError(f"{key} = {folder!r}: cannot create the folder ({e.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} = {folder!r}: the folder is not writable")


def check_datasets_registered(cfg):
    """Every name in DATASETS.TRAIN / DATASETS.TEST is registered (Detectron2 would fail later with
    a KeyError); a misspelt one gets the closest registered names."""
    import difflib

    from detectron2.data import DatasetCatalog

    from ..data.demo import DEMO_DATASETS

    registered = DatasetCatalog.list()
    for key, names in (("DATASETS.TRAIN", cfg.DATASETS.TRAIN), ("DATASETS.TEST", cfg.DATASETS.TEST)):
        for name in names:
            if name in registered:
                continue
            known = registered + [d + "_separated" for d in DEMO_DATASETS]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{key} = {tuple(names)!r}: {name!r} is not a registered dataset; {hint}"
                              "(Detectron2's builtin names, the demo's crbp_demo_train_separated / "
                              "crbp_demo_val_separated, or one registered in your code: datasets/README.md)")


def setup(args, load=None, register=None, resolve=None):
    """Config from --config-file (a path, a packaged config name or a model-zoo name) and opts,
    validated, its datasets registered, then Detectron2's default_setup (logging, output dir,
    config dump, seed). `resolve(name)`, `load(name, opts)` and `register(cfg)` are a project's
    (projects/Pathfinder); by default resolve_config_file, load_config and register_datasets."""
    args.config_file = (resolve or resolve_config_file)(args.config_file)  # default_setup logs the file
    cfg = (load or load_config)(args.config_file, dataset_opts(getattr(args, "dataset", None)) + list(args.opts))
    check_device(cfg)
    if comm.is_main_process():
        check_output_dir(cfg.OUTPUT_DIR)
    (register or register_datasets)(cfg)
    check_datasets_registered(cfg)
    check_classes_match_datasets(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    if comm.is_main_process():
        remove_stale_temporaries(cfg.OUTPUT_DIR)
    return cfg


def register_datasets(cfg, metadata_only: bool = False):
    """Registers (generating if needed) the project's synthetic datasets (demo, contours) that the config names, and the
    user's COCO-format panoptic datasets of DATASETS.COCO_PANOPTIC (prepared and validated by the
    main process; `metadata_only`: registered for their categories, nothing written or checked).
    COCO's standard splits are registered by Detectron2 itself on import."""
    from ..data.coco_panoptic import register_own_datasets
    from ..data.contours import CONTOURS, register_contour_datasets
    from ..data.demo import DEMO_DATASETS, register_demo_datasets

    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if any(n.startswith(DEMO_DATASETS) for n in names):
        register_demo_datasets(progress=comm.is_main_process())
    if any(n.startswith(CONTOURS.name + "_") for n in names):
        register_contour_datasets(progress=comm.is_main_process())
    if cfg.DATASETS.COCO_PANOPTIC.NAMES:
        prepare = comm.is_main_process() and not metadata_only
        if prepare:
            register_own_datasets(cfg, prepare=True)
        comm.synchronize()
        if not prepare:
            register_own_datasets(cfg, prepare=False)


def add_dataset_argument(parser):
    """--dataset NAME IMAGE_ROOT PANOPTIC_ROOT PANOPTIC_JSON (repeatable): a COCO-format panoptic
    dataset, registered as NAME_separated (DATASETS.COCO_PANOPTIC)."""
    parser.add_argument("--dataset", nargs=4, action="append", default=[],
                        metavar=("NAME", "IMAGE_ROOT", "PANOPTIC_ROOT", "PANOPTIC_JSON"),
                        help="register a COCO-format panoptic dataset as NAME_separated (use that name in "
                             "DATASETS.TRAIN / DATASETS.TEST); repeatable. See datasets/README.md")


def dataset_opts(datasets) -> list:
    """Config overrides (KEY VALUE ...) for the --dataset arguments."""
    if not datasets:
        return []
    columns = list(zip(*datasets))
    keys = ("NAMES", "IMAGE_ROOTS", "PANOPTIC_ROOTS", "PANOPTIC_JSONS")
    return [item for key, values in zip(keys, columns) for item in (f"DATASETS.COCO_PANOPTIC.{key}", repr(list(values)))]


def check_classes_match_datasets(cfg):
    """MODEL.ROI_HEADS.NUM_CLASSES / SEM_SEG_HEAD.NUM_CLASSES fit the training datasets' categories
    (a model for other data would fail, or silently ignore classes, later)."""
    from detectron2.data import MetadataCatalog

    for name in cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(name)
        expected = (("MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES, "thing_classes", "thing"),
                    ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "stuff_classes",
                     "stuff (\"things\" included)"))
        for key, value, field, what in expected:
            classes = meta.get(field, None)
            if classes is not None and cfg.MODEL.META_ARCHITECTURE.endswith("PanopticFPN") and value != len(classes):
                raise ConfigError(f"{key} = {value}: the training dataset {name!r} has {len(classes)} {what} classes; "
                                  f"set {key} {len(classes)}")

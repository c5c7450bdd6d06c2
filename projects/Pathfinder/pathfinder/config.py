"""Config keys of the Pathfinder experiment (`add_pathfinder_config`) and their validation.

A Pathfinder config is a Detectron2 config (`_BASE_` chains, command-line `KEY VALUE` overrides):
the recurrent block is configured by the same MODEL.CRBP keys as the Detectron2 components
(mode, steps, penalty, its schedule, the cell), the optimisation by SOLVER.*, the run by
OUTPUT_DIR/SEED; what is Pathfinder's own lives under PATHFINDER.*.
"""
import os
from typing import Optional

from crbp_detectron.config import (CELL_BN_STATISTICS, TRACER_BODIES, _check_choice, _check_number, _fail, get_cfg,
                                   validate_crbp_config)

# the project's configs: crbp.yaml and its baselines here, the study's variants under study/, the
# paper's 150 px set-up under paper/
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

LOSSES = ("focal", "balanced_bce", "bce")
BODIES = TRACER_BODIES
OPTIMIZERS = ("adam", "sgd")


def add_pathfinder_config(cfg):
    CN = type(cfg)
    cfg.PATHFINDER = CN()
    d = cfg.PATHFINDER.DATA = CN()
    # Generator (pathfinder.generator.PathfinderConfig): pixels and degrees.
    d.SIZE = 64
    d.PADDLE_LENGTH = 3.0
    d.PADDLE_WIDTH = 1.0
    d.GAP = 2.5
    d.CONTINUITY = 35.0
    d.DISTRACTORS = 4
    d.DISTRACTOR_LENGTH = 0  # paddles per short distractor; 0 = a third of the target's
    d.LONG_DISTRACTORS = 1  # distractors as long as the target (removes a length shortcut)
    # The training set's own distractors (-1: DISTRACTORS / LONG_DISTRACTORS): e.g. only distractors
    # as long as the target, so that only the marker tells the target apart, tested on the usual sets.
    d.TRAIN_DISTRACTORS = -1
    d.TRAIN_LONG_DISTRACTORS = -1
    d.MARKER_RADIUS = 1.5
    d.CLEARANCE = 1.5
    d.MARGIN = 1.0
    d.TRAIN_LENGTHS = [6, 10, 14]  # target paddles; the training set mixes them
    d.TRAIN_PER_LENGTH = 2000
    # Prepared sets (pathfinder.generator.storage.write_prepared) to train on instead of the generated
    # TRAIN_LENGTHS sets, e.g. other contours drawn as Pathfinder draws (experiments.crossings).
    d.TRAIN_FOLDERS = []
    d.TEST_LENGTHS = [6, 10, 14, 18]  # lengths not in TRAIN_LENGTHS are out of distribution
    d.TEST_PER_LENGTH = 300
    d.SEED = 0  # data seed (the model's and the data order's: SEED)
    d.ROOT = ""  # "" = $CRBP_PATHFINDER_DIR or ~/.cache/crbp_detectron/pathfinder
    d.WORKERS = 0  # generator processes; 0 = every core
    # Attempts at placing a sample's paths before giving up. It changes no sample that is placed
    # (the attempts draw from the sample's own seeded stream): long contours on a small canvas
    # (22 paddles at 64 px) need more than the 200 that shorter ones never exhaust.
    d.MAX_TRIES = 200

    m = cfg.PATHFINDER.MODEL = CN()
    m.BODY = "recurrent"  # recurrent: one cell run by Recurrence (MODEL.CRBP); cnn: a conv stack
    m.CHANNELS = 12
    m.FRONT_KERNEL_SIZE = 7  # front-end conv, squared, BatchNorm (the paper's)
    m.STRIDE = 1  # the front-end's stride: 2 runs the body at half resolution (1/4 of the compute)
    m.CELL_BN_STATISTICS = "running"  # when MODEL.CRBP.CELL.NORM is BN
    m.CNN_LAYERS = 6
    m.CNN_KERNEL_SIZE = 7

    loss = cfg.PATHFINDER.LOSS = CN()
    loss.NAME = "focal"
    loss.FOCAL_ALPHA = 0.75
    loss.FOCAL_GAMMA = 2.0

    # Training in cycles (warm restarts): CYCLES x SOLVER.MAX_ITER iterations, each cycle from the
    # previous cycle's final weights with a fresh optimiser, the same warm-up and LR schedule and
    # the same data order (SEED), in OUTPUT_DIR/cycle<k>; as three runs chained by MODEL.WEIGHTS.
    cfg.PATHFINDER.CYCLES = 1
    cfg.PATHFINDER.OPTIMIZER = "adam"
    cfg.PATHFINDER.AUGMENT = True  # a random symmetry of the square per sample

    e = cfg.PATHFINDER.EVAL = CN()
    e.BATCH_SIZE = 100
    e.SWEEP_MAX_STEPS = 0  # IoU against test-time steps up to this; 0 = 2 x MODEL.CRBP.STEPS
    e.SWEEP_LENGTHS = []  # [] = every test length
    e.VAL_LENGTH = 0  # length of the validation set used during training; 0 = longest trained
    e.VAL_COUNT = 100
    e.MEMORY_BATCH = 0  # batch of the saved-bytes probe; 0 = SOLVER.IMS_PER_BATCH
    return cfg


def get_pathfinder_cfg():
    """Detectron2's defaults + MODEL.CRBP + PATHFINDER, with Pathfinder-sized solver defaults."""
    cfg = get_cfg()
    add_pathfinder_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "PathfinderModel"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0  # the data are in memory
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False  # square images
    return cfg


def resolve_pathfinder_config(name: str) -> str:
    """A config path from a path or a name under the project's configs ("crbp.yaml",
    "study/crbp_steps64.yaml")."""
    if os.path.isfile(name):
        return os.path.abspath(name)
    packaged = os.path.join(CONFIG_DIR, name)
    if os.path.isfile(packaged):
        return packaged
    raise FileNotFoundError(f"Pathfinder config {name!r} not found: it is neither a file nor a config of the "
                            f"project (under {CONFIG_DIR})")


def load_pathfinder_config(name: str, opts: Optional[list] = None):
    """get_pathfinder_cfg() + the file (a path or a name under the project's configs, like
    "crbp.yaml") + opts, validated."""
    cfg = get_pathfinder_cfg()
    cfg.merge_from_file(resolve_pathfinder_config(name))
    if opts:
        cfg.merge_from_list(list(opts))
    validate_pathfinder_config(cfg)
    return cfg


def split_distractors(data_cfg, split: str):
    """(distractors, of them as long as the target) in one split's images (PATHFINDER.DATA): the
    training set's TRAIN_DISTRACTORS / TRAIN_LONG_DISTRACTORS where set (>= 0)."""
    distractors, long_distractors = data_cfg.DISTRACTORS, data_cfg.LONG_DISTRACTORS
    if split == "train":
        distractors = distractors if data_cfg.TRAIN_DISTRACTORS < 0 else data_cfg.TRAIN_DISTRACTORS
        long_distractors = long_distractors if data_cfg.TRAIN_LONG_DISTRACTORS < 0 else data_cfg.TRAIN_LONG_DISTRACTORS
    return distractors, long_distractors


def validate_pathfinder_config(cfg):
    """ValueError naming the key, the value and what is allowed."""
    validate_crbp_config(cfg)
    p = "PATHFINDER."
    d, pd = cfg.PATHFINDER.DATA, p + "DATA."
    _check_number(d, "SIZE", pd, low=8, integer=True)
    for key in ("PADDLE_LENGTH", "GAP", "PADDLE_WIDTH", "MARKER_RADIUS"):
        _check_number(d, key, pd, low=0, low_open=True)
    for key in ("CLEARANCE", "MARGIN", "CONTINUITY"):
        _check_number(d, key, pd, low=0)
    for key in ("DISTRACTORS", "DISTRACTOR_LENGTH", "LONG_DISTRACTORS", "SEED", "WORKERS"):
        _check_number(d, key, pd, low=0, integer=True)
    for key in ("TRAIN_PER_LENGTH", "TEST_PER_LENGTH", "MAX_TRIES"):
        _check_number(d, key, pd, low=1, integer=True)
    if d.LONG_DISTRACTORS > d.DISTRACTORS:
        _fail(pd + "LONG_DISTRACTORS", d.LONG_DISTRACTORS, f"must be <= DISTRACTORS ({d.DISTRACTORS})")
    for key in ("TRAIN_DISTRACTORS", "TRAIN_LONG_DISTRACTORS"):
        _check_number(d, key, pd, low=-1, integer=True)
    train_distractors, train_long = split_distractors(d, "train")
    if train_long > train_distractors:
        _fail(pd + "TRAIN_LONG_DISTRACTORS", d.TRAIN_LONG_DISTRACTORS,
              f"the training set's long distractors ({train_long}) must be <= its distractors ({train_distractors}; "
              "PATHFINDER.DATA.TRAIN_DISTRACTORS, -1 = DISTRACTORS)")
    for key in ("TRAIN_LENGTHS", "TEST_LENGTHS"):
        lengths = list(getattr(d, key))
        if not lengths or any(not isinstance(v, int) or v < 1 for v in lengths) or len(set(lengths)) != len(lengths):
            _fail(pd + key, lengths, "must be a non-empty list of distinct positive integers (paddles)")
    folders = list(d.TRAIN_FOLDERS)
    if any(not isinstance(f, str) or not f for f in folders):
        _fail(pd + "TRAIN_FOLDERS", folders, "must be a list of folder paths (prepared sets)")
    m, pm = cfg.PATHFINDER.MODEL, p + "MODEL."
    _check_choice(m, "BODY", BODIES, pm)
    _check_choice(m, "CELL_BN_STATISTICS", CELL_BN_STATISTICS, pm)
    _check_choice(m, "STRIDE", (1, 2), pm)
    if cfg.PATHFINDER.DATA.SIZE % m.STRIDE:
        _fail(pm + "STRIDE", m.STRIDE, f"must divide PATHFINDER.DATA.SIZE ({cfg.PATHFINDER.DATA.SIZE})")
    for key in ("CHANNELS", "CNN_LAYERS", "FRONT_KERNEL_SIZE", "CNN_KERNEL_SIZE"):
        _check_number(m, key, pm, low=1, integer=True)
    for key in ("FRONT_KERNEL_SIZE", "CNN_KERNEL_SIZE"):
        if getattr(m, key) % 2 == 0:
            _fail(pm + key, getattr(m, key), "must be odd")
    cell = cfg.MODEL.CRBP.CELL
    if m.BODY == "recurrent" and cell.NORM == "GN" and m.CHANNELS % min(cell.NUM_GROUPS, m.CHANNELS):
        _fail("MODEL.CRBP.CELL.NUM_GROUPS", cell.NUM_GROUPS, f"must divide the {m.CHANNELS} channels "
              "(PATHFINDER.MODEL.CHANNELS)")
    _check_choice(cfg.PATHFINDER.LOSS, "NAME", LOSSES, p + "LOSS.")
    _check_number(cfg.PATHFINDER.LOSS, "FOCAL_ALPHA", p + "LOSS.", low=0, high=1)
    _check_number(cfg.PATHFINDER.LOSS, "FOCAL_GAMMA", p + "LOSS.", low=0)
    _check_choice(cfg.PATHFINDER, "OPTIMIZER", OPTIMIZERS, p)
    _check_number(cfg.PATHFINDER, "CYCLES", p, low=1, integer=True)
    e, pe = cfg.PATHFINDER.EVAL, p + "EVAL."
    for key in ("BATCH_SIZE", "VAL_COUNT"):
        _check_number(e, key, pe, low=1, integer=True)
    for key in ("SWEEP_MAX_STEPS", "VAL_LENGTH", "MEMORY_BATCH"):
        _check_number(e, key, pe, low=0, integer=True)
    unknown = [v for v in e.SWEEP_LENGTHS if v not in d.TEST_LENGTHS]
    if unknown:
        _fail(pe + "SWEEP_LENGTHS", list(e.SWEEP_LENGTHS), f"must be among PATHFINDER.DATA.TEST_LENGTHS {list(d.TEST_LENGTHS)}")
    if cfg.MODEL.META_ARCHITECTURE != "PathfinderModel":
        _fail("MODEL.META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE, "must be 'PathfinderModel' in a Pathfinder config")
    return cfg

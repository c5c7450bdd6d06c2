"""Config keys of crbp-detectron (`add_crbp_config`), their validation, and config-file lookup.

Every key lives under MODEL.CRBP. Which blocks are recurrent is chosen the Detectron2 way, by
registered name: MODEL.ROI_MASK_HEAD.NAME = "CRBPMaskHead" (the published model) and/or
MODEL.BACKBONE.NAME = "build_resnet_crbp_fpn_backbone" (recurrence inside the FPN).
"""
import difflib
import math
import os
import re
from typing import Optional

import yaml

from detectron2.config import CfgNode as _D2CfgNode
from detectron2.config import get_cfg as _d2_get_cfg

from .crbp.backward_solvers import BACKWARD_SOLVERS
from .crbp.cells import EXCITATIONS, GATES, NONLINEARITIES, UPDATE_GATE_INITS
from .crbp.penalties import PENALTIES, REDUCTIONS
from .crbp.recurrence import IMPLICIT_STEPS, MODES
from .crbp.solver import FORWARD_SOLVERS

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
MODEL_ZOO_PREFIX = "model_zoo:"  # _BASE_: "model_zoo:COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml"
CELL_TYPES = ("hgru", "convgru")
MASK_HEAD_READOUTS = ("state", "state_and_features")  # CRBPMaskHead's readout input
DICE_MASK_HEADS = ("CRBPMaskHead", "ConvUpsampleMaskHead", "TracerMaskHead")  # the heads that read MODEL.ROI_MASK_HEAD.DICE_WEIGHT
CELL_NORMS = ("GN", "BN", "")
TRACER_BODIES = ("recurrent", "cnn")  # the tracer's body (modeling/tracer.py)
# Statistics of BatchNorm inside a tracer's recurrent cell at evaluation: "running" (the usual running
# averages) or "batch" (the batch's own, as in training; an output then depends on the batch).
CELL_BN_STATISTICS = ("running", "batch")
FPN_LEVELS = ("p2", "p3", "p4", "p5")
# Detectron2's get_norm names (detectron2.layers.get_norm; "" = none).
DETECTRON2_NORMS = ("", "BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N")
# Upper bound of MODEL.CRBP.STEPS / TEST_STEPS and BACKWARD.MAX_VJPS: each is one more pass of the
# cell per training or test iteration (the paper used 20 steps on COCO, up to 300 on Pathfinder);
# a billion would make iteration 0 never end.
MAX_STEPS = 10000
# Upper bound of MODEL.CRBP.FORWARD.WINDOW: Anderson keeps 2 x WINDOW state-sized buffers.
MAX_FORWARD_WINDOW = 100


class ConfigError(ValueError):
    """A bad config file, key or value; the message names it and what is allowed."""


def add_crbp_config(cfg):
    """Adds the MODEL.CRBP node. Defaults reproduce the paper's COCO model (Linsley et al. 2020):
    C-RBP, 20 steps, 15 VJPs in the backward, LCP with lambda 0.95 summed, weight 0.001, and a 256-channel
    hGRU with a GALA gate, 3x3 kernels, GroupNorm and softplus in the mask head."""
    _C = cfg
    CN = type(cfg)  # nodes of the cfg's own class, or yacs refuses to merge them
    _C.MODEL.CRBP = CN()
    _C.MODEL.CRBP.MODE = "crbp"  # crbp | rbp | bptt | cbptt
    _C.MODEL.CRBP.STEPS = 20  # iterations in training (the recorded one included)
    _C.MODEL.CRBP.TEST_STEPS = 0  # iterations at test time; 0 = STEPS
    # Per-sample (per image / RoI) early stop once the estimated relative distance to the fixed
    # point, q / (1 - q) ||h_t+1 - h_t|| / ||h_t+1|| (q: the step-size ratio), is under TOL; 0 = never.
    _C.MODEL.CRBP.TOL = 0.0
    # The solver of the graph-free iterations (crbp/solver.py), in training and evaluation. Its budget
    # is STEPS (TEST_STEPS in evaluation) cell evaluations, the recorded step included; with TOL > 0
    # each sample stops once converged (plain: the distance estimate above; anderson: the relative
    # residual ||f(h) - h|| / ||f(h)||).
    _C.MODEL.CRBP.FORWARD = CN()
    _C.MODEL.CRBP.FORWARD.SOLVER = "plain"  # plain (h <- f(h)) | anderson (Anderson acceleration, per sample)
    _C.MODEL.CRBP.FORWARD.WINDOW = 5  # anderson: residuals in its least-squares problem (2 x WINDOW states kept)
    _C.MODEL.CRBP.FORWARD.BETA = 1.0  # anderson: mixing of f's output, in (0, 1] (1: undamped)
    _C.MODEL.CRBP.FORWARD.RIDGE = 1e-6  # anderson: regularisation, relative to its Gram matrix's diagonal
    # Graph-free cell evaluations through torch.compile (Inductor: fused kernels; on CPU it needs a
    # C++ compiler): the same function to float round-off; the Pathfinder tracing recipe trains at
    # 0.54x the time per iteration of the eager code before (benchmarks/results/train_speed_compiled.md).
    # The first evaluation of each batch shape and mode compiles (20-50 s). The recorded step and
    # the backward stay eager.
    _C.MODEL.CRBP.FORWARD.COMPILE = False
    # How the step at the equilibrium is kept for the backward: "recompute" keeps only x and h*
    # (the step and the penalty are recomputed in the backward); "recorded" keeps their graphs.
    _C.MODEL.CRBP.IMPLICIT_STEP = "recompute"
    # With "recompute": the step at the equilibrium over this many samples (RoIs, images) at a time,
    # 0 = all at once. The backward's peak memory then holds one chunk's graph (not the batch's), at
    # the cost of one more step's forward per backward VJP; same gradients. Needs a cell whose
    # samples are independent (CELL.NORM GN or none, not BN).
    _C.MODEL.CRBP.IMPLICIT_CHUNK = 0
    _C.MODEL.CRBP.BACKWARD = CN()  # the solver of (I - J^T) z = dL/dh* (crbp/backward_solvers.py)
    _C.MODEL.CRBP.BACKWARD.SOLVER = "gmres"  # gmres | neumann | bicgstab
    _C.MODEL.CRBP.BACKWARD.MAX_VJPS = 15  # VJPs through the step at most (the paper: 15 Neumann terms)
    _C.MODEL.CRBP.BACKWARD.TOL = 1e-10  # relative residual ||g - (I - J^T) z|| / ||g|| to stop at
    _C.MODEL.CRBP.BACKWARD.RESTART = 20  # gmres: Krylov vectors kept (memory) before a restart
    # Divergence: a term of the series (neumann) or z beyond GROWTH_BOUND x ||g||, a non-finite
    # value, or (neumann) no net decrease over DIVERGENCE_WINDOW terms. Transient growth is not.
    _C.MODEL.CRBP.BACKWARD.GROWTH_BOUND = 1e6
    _C.MODEL.CRBP.BACKWARD.DIVERGENCE_WINDOW = 100
    # Stop training with an error after this many backward passes in a row in which a block's
    # backward solve diverged; 0 = never stop (divergences are still counted in the metrics).
    _C.MODEL.CRBP.MAX_CONSECUTIVE_DIVERGENCES = 0
    _C.MODEL.CRBP.PENALTY = "lcp"  # lcp | jacobian_frobenius | none
    _C.MODEL.CRBP.LCP_LAMBDA = 0.95
    _C.MODEL.CRBP.LCP_ABSOLUTE = False  # penalise |1^T J| instead of the signed column sums
    _C.MODEL.CRBP.PENALTY_REDUCTION = "sum"  # sum | mean over state elements
    _C.MODEL.CRBP.PENALTY_WEIGHT = 0.001
    # Penalty schedule: weight 0 for PENALTY_WARMUP_DELAY iterations, then a linear ramp to
    # PENALTY_WEIGHT over PENALTY_WARMUP_ITERS (both 0: the full weight from the start).
    _C.MODEL.CRBP.PENALTY_WARMUP_DELAY = 0
    _C.MODEL.CRBP.PENALTY_WARMUP_ITERS = 0
    _C.MODEL.CRBP.HUTCHINSON_SAMPLES = 1

    _C.MODEL.CRBP.CELL = CN()
    _C.MODEL.CRBP.CELL.TYPE = "hgru"  # hgru | convgru
    _C.MODEL.CRBP.CELL.KERNEL_SIZE = 3
    _C.MODEL.CRBP.CELL.NORM = "GN"  # GN | BN | "" (inside the cell)
    _C.MODEL.CRBP.CELL.NUM_GROUPS = 32
    _C.MODEL.CRBP.CELL.GATE = "gala"  # gala | conv (hGRU inhibition gate)
    _C.MODEL.CRBP.CELL.NONLINEARITY = "softplus"
    _C.MODEL.CRBP.CELL.INHIBITION_ETA = False  # COCO cell: h1 = eta(x - c1 (alpha h + mu))
    _C.MODEL.CRBP.CELL.EXCITATION = "simple"  # simple: h~ = eta(c2); full: eta(k h1 + g c2 + w h1 c2)
    _C.MODEL.CRBP.CELL.OUTPUT_ETA = False
    _C.MODEL.CRBP.CELL.UPDATE_GATE_INIT = "chrono"  # chrono (slow gates, g ~ 1/STEPS) | neutral (g = 1/2)

    _C.MODEL.CRBP.MASK_HEAD = CN()
    _C.MODEL.CRBP.MASK_HEAD.OUTPUT_NORM = "BN"  # norm after the cell (the paper: SyncBN)
    # Channels of the mask head's recurrent state; 0 = the RoI features' (MODEL.FPN.OUT_CHANNELS,
    # the paper). Narrower: a 1x1 conv projects the RoI features to the drive; a step costs
    # (STATE_CHANNELS / OUT_CHANNELS)^2 of the paper's.
    _C.MODEL.CRBP.MASK_HEAD.STATE_CHANNELS = 0
    # What the upsampling readout sees: "state" (h*, the paper) or "state_and_features" (h* beside
    # the RoI features, so that the state need not carry the fine position of what it groups).
    _C.MODEL.CRBP.MASK_HEAD.READOUT = "state"

    # Weight of a Dice term added to the mask heads' per-pixel cross-entropy (0: Detectron2's loss).
    # Read by CRBPMaskHead and ConvUpsampleMaskHead (Detectron2's conv head with this loss); it keeps
    # thin structures above 0.5 (modeling/mask_loss.py).
    _C.MODEL.ROI_MASK_HEAD.DICE_WEIGHT = 0.0

    # TracerMaskHead (with ROI_HEADS.NAME TracerROIHeads): the Pathfinder tracer run on each RoI's
    # window of the image itself, the box told by dimming what lies outside it (tracer_mask_head.py).
    _C.MODEL.CRBP.TRACER = CN()
    _C.MODEL.CRBP.TRACER.BODY = "recurrent"  # recurrent: MODEL.CRBP's cell to equilibrium; cnn: a conv stack
    _C.MODEL.CRBP.TRACER.CHANNELS = 16
    _C.MODEL.CRBP.TRACER.FRONT_KERNEL_SIZE = 7
    _C.MODEL.CRBP.TRACER.STRIDE = 2  # the body at half the window's resolution
    _C.MODEL.CRBP.TRACER.CELL_BN_STATISTICS = "batch"
    _C.MODEL.CRBP.TRACER.CNN_LAYERS = 6
    _C.MODEL.CRBP.TRACER.CNN_KERNEL_SIZE = 7
    # Each RoI's window: a square about the box's centre, WINDOW image px a side or CONTEXT x the
    # box's longer side if that is more, sampled on GRID x GRID (64 / 128 px: half scale, the scale
    # of Pathfinder's paddles for the contour data's dashes); outside the box at BOX_DIM.
    _C.MODEL.CRBP.TRACER.GRID = 64
    _C.MODEL.CRBP.TRACER.WINDOW = 128.0
    _C.MODEL.CRBP.TRACER.CONTEXT = 1.25
    _C.MODEL.CRBP.TRACER.BOX_DIM = 0.4
    # A trained tracer's weights (a Pathfinder model's state dict, e.g. projects/Pathfinder/results/
    # crossings_trained/<run>/seed0_model.pth) loaded at build; MODEL.WEIGHTS, loaded later, wins.
    _C.MODEL.CRBP.TRACER.INIT_WEIGHTS = ""
    # Foreground RoIs per image that train the mask head (0: all, Detectron2's): each is one run
    # of the tracer on its window.
    _C.MODEL.CRBP.TRACER.MAX_TRAIN_ROIS_PER_IMAGE = 16
    # An ink net (INK_LAYERS 3 x 3 convs of INK_CHANNELS at full resolution; 0: none, the tracer
    # traces the image): the tracer traces its probability that a pixel is a thing's, trained on
    # the union of the thing masks with INK_LOSS_WEIGHT x binary cross-entropy.
    _C.MODEL.CRBP.TRACER.INK_LAYERS = 0
    _C.MODEL.CRBP.TRACER.INK_CHANNELS = 16
    _C.MODEL.CRBP.TRACER.INK_LOSS_WEIGHT = 1.0
    # Recompute the ink net's full-resolution activations in the backward instead of saving them
    # (exact; a few convs' compute for most of the head's training memory).
    _C.MODEL.CRBP.TRACER.INK_RECOMPUTE = True

    _C.MODEL.CRBP.FPN = CN()
    _C.MODEL.CRBP.FPN.LEVELS = ["p2", "p3", "p4", "p5"]  # FPN outputs made recurrent
    _C.MODEL.CRBP.FPN.SHARE_CELL = False  # one cell for every level instead of one per level

    # Your own COCO-format panoptic datasets (the tools' --dataset NAME IMAGE_ROOT PANOPTIC_ROOT
    # PANOPTIC_JSON fills these): each registered as "<NAME>_separated" for DATASETS.TRAIN / TEST,
    # with the categories of its panoptic JSON; one entry per name in each list. datasets/README.md.
    _C.DATASETS.COCO_PANOPTIC = CN()
    _C.DATASETS.COCO_PANOPTIC.NAMES = []
    _C.DATASETS.COCO_PANOPTIC.IMAGE_ROOTS = []
    _C.DATASETS.COCO_PANOPTIC.PANOPTIC_ROOTS = []
    _C.DATASETS.COCO_PANOPTIC.PANOPTIC_JSONS = []
    # Detection-format instances JSONs, one per name ("" or an empty list: derived from the panoptic
    # annotations, masks in INPUT.MASK_FORMAT; stuff categories in a given one are left out).
    _C.DATASETS.COCO_PANOPTIC.INSTANCES_JSONS = []
    # Where the stuff PNGs and derived instances are written ("" = OUTPUT_DIR/datasets/<NAME>).
    _C.DATASETS.COCO_PANOPTIC.DERIVED_DIR = ""

    # The training step's guard against exploding steps (crbp_detectron.engine.train_loop.GradientGuard):
    # a step whose gradient norm is non-finite, or above FACTOR x the median norm of the last WINDOW
    # accepted steps (judged once MIN_HISTORY have been accepted), is refused (skipped, weights
    # unchanged); MAX_CONSECUTIVE_REFUSALS refusals in a row stop training. FACTOR 0 = refuse
    # non-finite norms only; MAX_CONSECUTIVE_REFUSALS 0 = never stop.
    from .engine.train_loop import GUARD_DEFAULTS

    _C.SOLVER.GRADIENT_GUARD = CN()
    for key, value in GUARD_DEFAULTS.items():
        setattr(_C.SOLVER.GRADIENT_GUARD, key.upper(), value)
    return cfg


class CRBPCfgNode(_D2CfgNode):
    """Detectron2's CfgNode, plus `_BASE_: "model_zoo:<name>"` resolving to a Detectron2
    model-zoo config, so our configs chain onto the installed model zoo wherever it is."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False):
        at = filename.find(MODEL_ZOO_PREFIX)
        if at >= 0:  # Detectron2 joins a relative _BASE_ onto the including file's folder
            filename = model_zoo_config_file(filename[at + len(MODEL_ZOO_PREFIX):])
        return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)


def get_cfg() -> CRBPCfgNode:
    """Detectron2's defaults plus MODEL.CRBP, as a CRBPCfgNode."""
    cfg = CRBPCfgNode(_d2_get_cfg())
    add_crbp_config(cfg)
    return cfg


def model_zoo_config_file(name: str) -> str:
    from detectron2 import model_zoo

    try:
        return model_zoo.get_config_file(name)
    except RuntimeError as e:
        raise FileNotFoundError(f"{name!r} is not a config in Detectron2's model zoo ({e})") from None


def resolve_config_file(name: str) -> str:
    """A config path from a path, a packaged config name ("panoptic_crbp.yaml",
    "COCO-PanopticSegmentation/panoptic_crbp_R_50_1x.yaml"), or a Detectron2 model-zoo name."""
    if os.path.isfile(name):
        return os.path.abspath(name)
    packaged = os.path.join(CONFIG_DIR, name)
    if os.path.isfile(packaged):
        return packaged
    if name.startswith(MODEL_ZOO_PREFIX):
        name = name[len(MODEL_ZOO_PREFIX):]
    try:
        return model_zoo_config_file(name)
    except FileNotFoundError:
        pass
    raise FileNotFoundError(
        f"Config file {name!r} not found: it is neither a file, nor a config packaged with "
        f"crbp_detectron (under {CONFIG_DIR}), nor a Detectron2 model-zoo config.")


def load_config(name: str, opts: Optional[list] = None) -> CRBPCfgNode:
    """get_cfg() + the config file (resolved by `resolve_config_file`) + opts, validated. A key that
    does not exist fails with the closest existing keys; a file that is not a Detectron2 config
    (e.g. a Pathfinder config) says which tool reads it."""
    cfg = get_cfg()
    path = resolve_config_file(name)
    check_config_file(path, cfg)
    try:
        cfg.merge_from_file(path)
    except KeyError as e:
        message = _unknown_key_message(cfg, e)
        unknown = re.match(r"unknown config key '([^'.]+)", message)
        if unknown and unknown.group(1) not in cfg:  # a top-level group of another tool's configs
            message = _project_hint(path)
        raise ConfigError(f"{path}: {message}") from None
    except ValueError as e:  # yacs: a value of the wrong type, naming the key
        raise ConfigError(f"{path}: {e}") from None
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"Config overrides must be KEY VALUE pairs; got an odd number: {list(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:  # yacs: KeyError, or an assertion "Non-existent key: X"
            raise ConfigError(f"command line: {_unknown_key_message(cfg, e)}") from None
        except ValueError as e:
            raise ConfigError(f"command line: {e}") from None
    validate_crbp_config(cfg)
    return cfg


def check_config_file(path: str, defaults=None, _chain: tuple = ()):
    """Checks a config file and every file of its `_BASE_` chain before yacs merges them, so that a
    bad one fails naming itself (or the config that names it): not YAML, empty, not a mapping, a
    group of keys given a value (`MODEL: 5`), a `_BASE_` that is missing or closes a cycle, or a
    file that is not a Detectron2 config (e.g. a Pathfinder config). `defaults`: a config whose
    groups the file's keys are checked against."""
    chain = _chain + (os.path.abspath(path),)
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty; a config is a YAML mapping of KEY: value "
                          "(e.g. _BASE_: \"Base-CRBP-Panoptic-FPN.yaml\" and the keys it changes)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping of KEY: value, not a {type(data).__name__}")
    lower = sorted(k for k in data if isinstance(k, str) and k != k.upper())
    if lower:
        hint = (_project_hint(path) if "_base_" in lower else
                "Detectron2 configs have upper-case top-level keys (MODEL, SOLVER, DATASETS, ...).")
        raise ConfigError(f"{path} is not a Detectron2 config (top-level keys {lower}). {hint}")
    if defaults is not None:
        _check_groups(data, defaults, path)
    bases = data.get(BASE_KEY, [])
    for base in bases if isinstance(bases, list) else [bases]:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: {BASE_KEY} = {base!r}: must be a config file name (or a list of them)")
        base_path = _base_path(path, base)
        if base_path in chain:
            cycle = " -> ".join(os.path.basename(p) for p in chain[chain.index(base_path):] + (base_path,))
            raise ConfigError(f"{path}: {BASE_KEY} {base!r} closes a cycle ({cycle}); a config cannot include itself")
        if not os.path.isfile(base_path):
            raise ConfigError(f"{path}: {BASE_KEY} {base!r} not found (looked for {base_path})")
        check_config_file(base_path, defaults, chain)


BASE_KEY = "_BASE_"


def _base_path(including: str, base: str) -> str:
    """Where Detectron2 looks for `_BASE_: base` named in `including` (relative to its folder;
    "model_zoo:<name>" in Detectron2's model zoo)."""
    if base.startswith(MODEL_ZOO_PREFIX):
        try:
            return model_zoo_config_file(base[len(MODEL_ZOO_PREFIX):])
        except FileNotFoundError as e:
            raise ConfigError(f"{including}: {BASE_KEY} {base!r}: {e}") from None
    base = os.path.expanduser(base)
    return os.path.abspath(base if os.path.isabs(base) else os.path.join(os.path.dirname(including), base))


def _check_groups(data: dict, node, path: str, prefix: str = ""):
    """A key that is a group of keys in the defaults (MODEL, MODEL.CRBP, ...) must be a mapping."""
    for key, value in data.items():
        default = node.get(key) if isinstance(key, str) else None
        if not isinstance(default, _D2CfgNode):
            continue
        if not isinstance(value, dict):
            full = prefix + key
            raise ConfigError(f"{path}: {full} = {value!r}: {full} is a group of keys ({full}.{next(iter(default))}, "
                              "...), so its value must be a YAML mapping of them, not a single value")
        _check_groups(value, default, path, f"{prefix}{key}.")


def _project_hint(path: str) -> str:
    return (f"It looks like a project's config (projects/*, e.g. projects/Pathfinder), not a Detectron2 model's: "
            f"train it with that project's train_net.py (python projects/<Project>/train_net.py --config-file {path}).")


def _all_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, _D2CfgNode):
            yield from _all_keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def _unknown_key_message(cfg, error: Exception) -> str:
    """yacs' "Non-existent (config) key: X" -> the key, and the closest existing keys."""
    text = str(error.args[0]) if error.args else str(error)
    if "Non-existent" not in text:
        return text
    key = text.split(":", 1)[1].strip()
    keys = list(_all_keys(cfg))
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.75)
    if not close:  # a misspelt last component under the right node
        parent = key.rsplit(".", 1)[0] + "."
        close = difflib.get_close_matches(key, [k for k in keys if k.startswith(parent)], n=3, cutoff=0.5)
    suggestion = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown config key {key!r}{suggestion}"


def _fail(key, value, allowed):
    raise ConfigError(f"Invalid config {key} = {value!r}: {allowed}")


def _check_choice(node, key, choices, prefix):
    value = getattr(node, key)
    if value not in choices:
        _fail(prefix + key, value, f"must be one of {tuple(choices)}")


def _check_number(node, key, prefix, low=None, high=None, integer=False, low_open=False, high_open=False):
    value = getattr(node, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        _fail(prefix + key, value, "must be an integer" if integer else "must be a number")
    if not math.isfinite(value):
        _fail(prefix + key, value, "must be a finite number")
    if low is not None and (value <= low if low_open else value < low):
        _fail(prefix + key, value, f"must be {'>' if low_open else '>='} {low}")
    if high is not None and (value >= high if high_open else value > high):
        _fail(prefix + key, value, f"must be {'<' if high_open else '<='} {high}")


def validate_crbp_config(cfg):
    """Raises ConfigError naming the key, the value and what is allowed, for any bad MODEL.CRBP or
    SOLVER.GRADIENT_GUARD key (and the Detectron2 keys of `validate_training_config`)."""
    if not hasattr(cfg.MODEL, "CRBP"):
        raise ConfigError("cfg has no MODEL.CRBP: call crbp_detectron.add_crbp_config(cfg) first")
    c, p = cfg.MODEL.CRBP, "MODEL.CRBP."
    _check_choice(c, "MODE", MODES, p)
    steps_cost = (f"must be <= {MAX_STEPS}: each step is one more pass of the cell in every iteration (the paper "
                  "used 20 on COCO and up to 300 on Pathfinder)")
    _check_number(c, "STEPS", p, low=1, integer=True)
    _check_number(c, "TEST_STEPS", p, low=0, integer=True)
    for key in ("STEPS", "TEST_STEPS"):
        if getattr(c, key) > MAX_STEPS:
            _fail(p + key, getattr(c, key), steps_cost)
    # Relative distances / residuals: a tolerance of 1 or more would stop at once.
    _check_number(c, "TOL", p, low=0, high=1, high_open=True)
    _check_choice(c, "IMPLICIT_STEP", IMPLICIT_STEPS, p)
    _check_number(c, "IMPLICIT_CHUNK", p, low=0, integer=True)
    if c.IMPLICIT_CHUNK and c.IMPLICIT_STEP != "recompute":
        _fail(p + "IMPLICIT_CHUNK", c.IMPLICIT_CHUNK, "must be 0 with IMPLICIT_STEP 'recorded' (the recorded step "
              "keeps the whole batch's graph); chunks need IMPLICIT_STEP 'recompute'")
    if c.IMPLICIT_CHUNK and c.CELL.NORM == "BN":
        _fail(p + "IMPLICIT_CHUNK", c.IMPLICIT_CHUNK, "must be 0 with CELL.NORM 'BN' (BatchNorm couples the samples "
              "of a batch, so the step cannot be taken in chunks of them); chunks need CELL.NORM 'GN' or ''")
    fw, pf = c.FORWARD, p + "FORWARD."
    _check_choice(fw, "SOLVER", tuple(FORWARD_SOLVERS), pf)
    _check_number(fw, "WINDOW", pf, low=1, high=MAX_FORWARD_WINDOW, integer=True)
    _check_number(fw, "BETA", pf, low=0, high=1, low_open=True)
    _check_number(fw, "RIDGE", pf, low=0, high=1, high_open=True)
    if not isinstance(fw.COMPILE, bool):
        _fail(pf + "COMPILE", fw.COMPILE, "must be true or false")
    b, pb = c.BACKWARD, p + "BACKWARD."
    _check_choice(b, "SOLVER", tuple(BACKWARD_SOLVERS), pb)
    _check_number(b, "MAX_VJPS", pb, low=0, high=MAX_STEPS, integer=True)
    _check_number(b, "TOL", pb, low=0, high=1, high_open=True)
    _check_number(b, "RESTART", pb, low=1, integer=True)
    _check_number(b, "GROWTH_BOUND", pb, low=1, low_open=True)
    _check_number(b, "DIVERGENCE_WINDOW", pb, low=1, integer=True)
    _check_number(c, "MAX_CONSECUTIVE_DIVERGENCES", p, low=0, integer=True)
    _check_choice(c, "PENALTY", PENALTIES, p)
    _check_number(c, "LCP_LAMBDA", p, low=0, low_open=True)
    if c.PENALTY == "lcp" and c.LCP_LAMBDA >= 1:
        # The LCP is zero while every column sum of the Jacobian stays under lambda: with lambda >= 1
        # it allows a non-contractive block, whose fixed point need not attract and whose C-RBP
        # gradient (the solve of (I - J^T) z = g) is then not valid.
        _fail(p + "LCP_LAMBDA", c.LCP_LAMBDA, "must be < 1 with PENALTY 'lcp' (the penalty enforces contraction, "
              "a Jacobian norm under lambda; at 1 or more it allows a non-contractive block, for which the "
              "C-RBP gradient is not valid)")
    _check_choice(c, "PENALTY_REDUCTION", REDUCTIONS, p)
    _check_number(c, "PENALTY_WEIGHT", p, low=0)
    if not isinstance(c.LCP_ABSOLUTE, bool):
        _fail(p + "LCP_ABSOLUTE", c.LCP_ABSOLUTE, "must be true or false")
    _check_number(c, "PENALTY_WARMUP_DELAY", p, low=0, integer=True)
    _check_number(c, "PENALTY_WARMUP_ITERS", p, low=0, integer=True)
    _check_number(c, "HUTCHINSON_SAMPLES", p, low=1, integer=True)
    cell, pc = c.CELL, p + "CELL."
    _check_choice(cell, "TYPE", CELL_TYPES, pc)
    _check_number(cell, "KERNEL_SIZE", pc, low=1, integer=True)
    if cell.KERNEL_SIZE % 2 == 0:
        _fail(pc + "KERNEL_SIZE", cell.KERNEL_SIZE, "must be odd")
    _check_choice(cell, "NORM", CELL_NORMS, pc)
    _check_number(cell, "NUM_GROUPS", pc, low=1, integer=True)
    _check_choice(cell, "GATE", GATES, pc)
    _check_choice(cell, "NONLINEARITY", tuple(NONLINEARITIES), pc)
    _check_choice(cell, "EXCITATION", EXCITATIONS, pc)
    _check_choice(cell, "UPDATE_GATE_INIT", UPDATE_GATE_INITS, pc)
    for key in ("INHIBITION_ETA", "OUTPUT_ETA"):
        if not isinstance(getattr(cell, key), bool):
            _fail(pc + key, getattr(cell, key), "must be true or false")
    _check_choice(c.MASK_HEAD, "OUTPUT_NORM", DETECTRON2_NORMS, p + "MASK_HEAD.")
    _check_number(c.MASK_HEAD, "STATE_CHANNELS", p + "MASK_HEAD.", low=0, integer=True)
    _check_choice(c.MASK_HEAD, "READOUT", MASK_HEAD_READOUTS, p + "MASK_HEAD.")
    widths = {"MODEL.FPN.OUT_CHANNELS": cfg.MODEL.FPN.OUT_CHANNELS}
    if c.MASK_HEAD.STATE_CHANNELS:
        widths[p + "MASK_HEAD.STATE_CHANNELS"] = c.MASK_HEAD.STATE_CHANNELS
    for key, channels in widths.items():
        if cell.NORM == "GN" and channels % min(cell.NUM_GROUPS, channels):
            _fail(pc + "NUM_GROUPS", cell.NUM_GROUPS, f"must divide the {channels} channels ({key})")
    _check_number(cfg.MODEL.ROI_MASK_HEAD, "DICE_WEIGHT", "MODEL.ROI_MASK_HEAD.", low=0)
    if cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT and cfg.MODEL.ROI_MASK_HEAD.NAME not in DICE_MASK_HEADS:
        _fail("MODEL.ROI_MASK_HEAD.DICE_WEIGHT", cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT,
              f"is read only by the mask heads {DICE_MASK_HEADS}, not by MODEL.ROI_MASK_HEAD.NAME = "
              f"{cfg.MODEL.ROI_MASK_HEAD.NAME!r}: use ConvUpsampleMaskHead for Detectron2's conv head with this loss, "
              "or set it to 0")
    t, pt = c.TRACER, p + "TRACER."
    _check_choice(t, "BODY", TRACER_BODIES, pt)
    _check_choice(t, "CELL_BN_STATISTICS", CELL_BN_STATISTICS, pt)
    for key in ("CHANNELS", "FRONT_KERNEL_SIZE", "STRIDE", "CNN_LAYERS", "CNN_KERNEL_SIZE", "GRID", "INK_CHANNELS"):
        _check_number(t, key, pt, low=1, integer=True)
    _check_number(t, "MAX_TRAIN_ROIS_PER_IMAGE", pt, low=0, integer=True)
    _check_number(t, "INK_LAYERS", pt, low=0, integer=True)
    _check_number(t, "INK_LOSS_WEIGHT", pt, low=0)
    _check_number(t, "WINDOW", pt, low=0, low_open=True)
    _check_number(t, "CONTEXT", pt, low=1)
    _check_number(t, "BOX_DIM", pt, low=0, high=1)
    if t.GRID % t.STRIDE:
        _fail(pt + "GRID", t.GRID, f"must be a multiple of {pt}STRIDE = {t.STRIDE}")
    if t.INIT_WEIGHTS and not os.path.isfile(t.INIT_WEIGHTS):
        _fail(pt + "INIT_WEIGHTS", t.INIT_WEIGHTS, "must be an existing file (a tracer's state dict) or empty")
    levels = list(c.FPN.LEVELS)
    bad = [lv for lv in levels if lv not in FPN_LEVELS]
    if bad or not levels or len(set(levels)) != len(levels):
        _fail(p + "FPN.LEVELS", levels, f"must be a non-empty list of distinct levels from {FPN_LEVELS}")
    guard, pg = cfg.SOLVER.GRADIENT_GUARD, "SOLVER.GRADIENT_GUARD."
    _check_number(guard, "FACTOR", pg, low=0)
    if 0 < guard.FACTOR <= 1:
        _fail(pg + "FACTOR", guard.FACTOR, "must be 0 (off) or > 1: it multiplies the median gradient norm")
    _check_number(guard, "WINDOW", pg, low=1, integer=True)
    _check_number(guard, "MIN_HISTORY", pg, low=1, high=guard.WINDOW, integer=True)
    _check_number(guard, "MAX_CONSECUTIVE_REFUSALS", pg, low=0, integer=True)
    validate_training_config(cfg)
    return cfg


def validate_training_config(cfg):
    """Detectron2's own keys that would otherwise fail late (after the model is built, or inside
    PyTorch without naming the key): batch, learning rate, schedule, data workers, periods."""
    s, ps = cfg.SOLVER, "SOLVER."
    _check_number(s, "IMS_PER_BATCH", ps, low=1, integer=True)
    for key in ("BASE_LR", "MOMENTUM", "WEIGHT_DECAY"):
        _check_number(s, key, ps, low=0)
    for key in ("MAX_ITER", "WARMUP_ITERS"):
        _check_number(s, key, ps, low=0, integer=True)
    _check_number(s, "CHECKPOINT_PERIOD", ps, low=1, integer=True)
    _check_number(cfg.DATALOADER, "NUM_WORKERS", "DATALOADER.", low=0, integer=True)
    _check_number(cfg.TEST, "EVAL_PERIOD", "TEST.", low=0, integer=True)
    return cfg

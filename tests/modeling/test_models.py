"""The Detectron2 components: every config trains a step, penalties are never dropped, the mask
head matches the paper's parameter count, memory is constant in steps, configs equal the zoo's."""
import glob
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.backbone import build_backbone
from detectron2.utils.events import EventStorage

import crbp_detectron  # noqa: F401
from crbp_detectron.config import CONFIG_DIR, get_cfg, load_config, resolve_config_file
from crbp_detectron.crbp import Recurrence, recurrent_blocks
from crbp_detectron.crbp.memory import saved_bytes
from crbp_detectron.modeling import CRBPMaskHead
from detectron2.layers import ShapeSpec

from .utils import TINY, synthetic_batch

DETECTRON2_CONFIGS = sorted(
    os.path.relpath(p, CONFIG_DIR) for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
    if "pathfinder" not in os.path.relpath(p, CONFIG_DIR).split(os.sep))
# Detectron2's own model on a project dataset: the baseline that the C-RBP one is compared with.
FEED_FORWARD_CONFIGS = ("demo/panoptic_fpn_demo.yaml", "contours/panoptic_fpn_contours.yaml",
                        "contours/panoptic_tracer_cnn_contours.yaml", "contours/panoptic_tracer_cnn_ink_contours.yaml")


def trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def train_step(cfg, batch=None):
    model = build_model(cfg)
    model.train()
    with EventStorage() as storage:
        losses = model(batch or synthetic_batch())
        sum(losses.values()).backward()
    return model, losses, storage


@pytest.mark.parametrize("name", DETECTRON2_CONFIGS)
def test_every_config_trains_a_step(name):
    cfg = load_config(name, TINY)
    model, losses, storage = train_step(cfg)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    blocks = recurrent_blocks(model)
    penalties = {k for k in losses if k.startswith("loss_penalty/")}
    if name in FEED_FORWARD_CONFIGS:
        assert not blocks and not penalties and cfg.MODEL.META_ARCHITECTURE == "PanopticFPN"
        return
    assert blocks, "a C-RBP config without a recurrent block"
    if cfg.MODEL.CRBP.MODE in ("crbp", "cbptt"):
        # One entry per recurrent block: no penalty silently dropped.
        assert penalties == {f"loss_penalty/{b}" for b in blocks}
    else:
        assert not penalties
    assert {f"crbp/{b}/residual" for b in blocks} <= set(storage.latest())


def test_every_trainable_parameter_gets_a_finite_gradient():
    cfg = load_config("COCO-PanopticSegmentation/panoptic_crbp_fpn_R_50_1x.yaml", TINY)
    model, _, _ = train_step(cfg)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_penalties_from_blocks_anywhere_are_collected_mask_rcnn_too():
    """The same mechanism serves GeneralizedRCNN (Mask R-CNN) configs, and a block the
    architecture does not know about (here: an extra one inserted by hand) is collected."""
    cfg = load_config("model_zoo:COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", TINY + [
        "MODEL.META_ARCHITECTURE", "CRBPGeneralizedRCNN", "MODEL.ROI_MASK_HEAD.NAME", "CRBPMaskHead"])
    model = build_model(cfg)
    model.roi_heads.extra = Recurrence(torch.nn.Identity(), steps=1)  # never called
    model.train()
    with EventStorage():
        losses = model([{k: v for k, v in x.items() if k != "sem_seg"} for x in synthetic_batch()])
    assert "loss_penalty/roi_heads.mask_head" in losses
    assert set(recurrent_blocks(model)) == {"roi_heads.mask_head", "roi_heads.extra"}


def test_mask_head_matches_the_papers_parameter_saving():
    zoo = build_model(load_config("model_zoo:COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", ["MODEL.DEVICE", "cpu"]))
    ours = build_model(load_config("COCO-PanopticSegmentation/panoptic_crbp_R_50_1x.yaml", ["MODEL.DEVICE", "cpu"]))
    assert trainable(zoo) == 45_751_590
    assert trainable(ours) == 44_968_038
    assert trainable(zoo.roi_heads.mask_head) - trainable(ours.roi_heads.mask_head) == 783_552
    assert trainable(ours.roi_heads.mask_head.recurrence.cell) + 512 == 1_576_768


def test_configs_equal_the_model_zoo_outside_crbp_keys():
    crbp_keys = {("MODEL", "META_ARCHITECTURE"), ("MODEL", "ROI_MASK_HEAD", "NAME"), ("MODEL", "BACKBONE", "NAME"),
                 ("MODEL", "CRBP")}

    def strip(cfg):
        d = cfg.clone()
        d.defrost()
        for key in crbp_keys:
            node = d
            for k in key[:-1]:
                node = node[k]
            node.pop(key[-1])
        return d

    # Our base is self-contained (Detectron2's plain merge_from_file reads it): it must equal the
    # model zoo's base as a whole.
    pairs = {"panoptic_crbp.yaml": "panoptic_fpn_R_50_1x.yaml", "panoptic_crbp_R_101_3x.yaml": "panoptic_fpn_R_101_3x.yaml",
             "Base-CRBP-Panoptic-FPN.yaml": "Base-Panoptic-FPN.yaml"}
    for ours in DETECTRON2_CONFIGS:
        base = os.path.basename(ours)
        zoo_name = pairs.get(base, "panoptic_fpn_R_50_1x.yaml")
        if "demo" in ours or "contours" in ours:
            continue
        a = strip(load_config(ours))
        b = strip(load_config("model_zoo:COCO-PanopticSegmentation/" + zoo_name))
        assert a == b, ours
        full = load_config(ours)
        assert full.MODEL.META_ARCHITECTURE == "CRBPPanopticFPN"
        assert full.MODEL.ROI_MASK_HEAD.NAME == "CRBPMaskHead"


def test_paper_defaults():
    cfg = load_config("panoptic_crbp.yaml")
    c = cfg.MODEL.CRBP
    assert (c.MODE, c.STEPS, c.BACKWARD.MAX_VJPS, c.PENALTY, c.LCP_LAMBDA, c.PENALTY_REDUCTION, c.PENALTY_WEIGHT) == \
        ("crbp", 20, 15, "lcp", 0.95, "sum", 0.001)
    assert load_config("COCO-PanopticSegmentation/panoptic_bptt3_R_50_1x.yaml").MODEL.CRBP.MODE == "bptt"


def test_config_file_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # packaged names resolve from any directory
    assert resolve_config_file("panoptic_crbp.yaml").startswith(CONFIG_DIR)
    assert os.path.isfile(resolve_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        resolve_config_file("nope.yaml")


@pytest.mark.parametrize("opts,key", [
    (["MODEL.CRBP.MODE", "bptt2"], "MODEL.CRBP.MODE"),
    (["MODEL.CRBP.STEPS", 0], "MODEL.CRBP.STEPS"),
    (["MODEL.CRBP.PENALTY", "l2"], "MODEL.CRBP.PENALTY"),
    (["MODEL.CRBP.LCP_LAMBDA", -1.0], "MODEL.CRBP.LCP_LAMBDA"),
    (["MODEL.CRBP.PENALTY_WEIGHT", -0.1], "MODEL.CRBP.PENALTY_WEIGHT"),
    (["MODEL.CRBP.PENALTY_REDUCTION", "max"], "MODEL.CRBP.PENALTY_REDUCTION"),
    (["MODEL.CRBP.BACKWARD.MAX_VJPS", -2], "MODEL.CRBP.BACKWARD.MAX_VJPS"),
    (["MODEL.CRBP.BACKWARD.SOLVER", "cg"], "MODEL.CRBP.BACKWARD.SOLVER"),
    (["MODEL.CRBP.BACKWARD.DIVERGENCE_WINDOW", 0], "MODEL.CRBP.BACKWARD.DIVERGENCE_WINDOW"),
    (["MODEL.CRBP.BACKWARD.GROWTH_BOUND", 1.0], "MODEL.CRBP.BACKWARD.GROWTH_BOUND"),
    (["MODEL.CRBP.IMPLICIT_STEP", "saved"], "MODEL.CRBP.IMPLICIT_STEP"),
    (["MODEL.CRBP.IMPLICIT_CHUNK", -1], "MODEL.CRBP.IMPLICIT_CHUNK"),
    (["MODEL.CRBP.IMPLICIT_CHUNK", 4, "MODEL.CRBP.IMPLICIT_STEP", "recorded"], "MODEL.CRBP.IMPLICIT_CHUNK"),
    (["MODEL.CRBP.IMPLICIT_CHUNK", 4, "MODEL.CRBP.CELL.NORM", "BN"], "MODEL.CRBP.IMPLICIT_CHUNK"),
    (["MODEL.CRBP.FORWARD.SOLVER", "newton"], "MODEL.CRBP.FORWARD.SOLVER"),
    (["MODEL.CRBP.FORWARD.WINDOW", 0], "MODEL.CRBP.FORWARD.WINDOW"),
    (["MODEL.CRBP.FORWARD.WINDOW", 1000], "MODEL.CRBP.FORWARD.WINDOW"),
    (["MODEL.CRBP.FORWARD.BETA", 0.0], "MODEL.CRBP.FORWARD.BETA"),
    (["MODEL.CRBP.FORWARD.BETA", 1.5], "MODEL.CRBP.FORWARD.BETA"),
    (["MODEL.CRBP.FORWARD.RIDGE", -1e-3], "MODEL.CRBP.FORWARD.RIDGE"),
    (["MODEL.CRBP.FORWARD.RIDGE", 1.0], "MODEL.CRBP.FORWARD.RIDGE"),
    (["MODEL.CRBP.CELL.KERNEL_SIZE", 4], "MODEL.CRBP.CELL.KERNEL_SIZE"),
    (["MODEL.CRBP.CELL.TYPE", "lstm"], "MODEL.CRBP.CELL.TYPE"),
    (["MODEL.CRBP.CELL.NUM_GROUPS", 24], "MODEL.CRBP.CELL.NUM_GROUPS"),
    (["MODEL.CRBP.FPN.LEVELS", "['p7']"], "MODEL.CRBP.FPN.LEVELS"),
    (["MODEL.CRBP.TOL", float("nan")], "MODEL.CRBP.TOL"),
    (["MODEL.CRBP.MASK_HEAD.STATE_CHANNELS", -64], "MODEL.CRBP.MASK_HEAD.STATE_CHANNELS"),
    (["MODEL.CRBP.MASK_HEAD.STATE_CHANNELS", 48], "MODEL.CRBP.MASK_HEAD.STATE_CHANNELS"),  # 32 groups
    (["MODEL.CRBP.TRACER.BODY", "transformer"], "MODEL.CRBP.TRACER.BODY"),
    (["MODEL.CRBP.TRACER.GRID", 63], "MODEL.CRBP.TRACER.GRID"),  # STRIDE 2
    (["MODEL.CRBP.TRACER.BOX_DIM", 1.5], "MODEL.CRBP.TRACER.BOX_DIM"),
    (["MODEL.CRBP.TRACER.CONTEXT", 0.5], "MODEL.CRBP.TRACER.CONTEXT"),
    (["MODEL.CRBP.TRACER.INIT_WEIGHTS", "no/such/tracer.pth"], "MODEL.CRBP.TRACER.INIT_WEIGHTS"),
    (["MODEL.CRBP.TRACER.INK_LAYERS", -1], "MODEL.CRBP.TRACER.INK_LAYERS"),
    (["MODEL.CRBP.TRACER.INK_LOSS_WEIGHT", -0.5], "MODEL.CRBP.TRACER.INK_LOSS_WEIGHT"),
])
def test_bad_config_values_name_key_value_and_allowed(opts, key):
    with pytest.raises(ValueError) as info:
        load_config("panoptic_crbp.yaml", opts)
    message = str(info.value)
    assert key in message and str(opts[1]).strip("[]'") in message and ("must" in message)


def test_add_crbp_config_on_a_plain_detectron2_cfg():
    from detectron2.config import get_cfg as d2_get_cfg

    from crbp_detectron import add_crbp_config
    cfg = d2_get_cfg()
    add_crbp_config(cfg)
    assert cfg.MODEL.CRBP.STEPS == 20 and get_cfg().MODEL.CRBP.STEPS == 20


def _mask_head(mode, steps):
    torch.manual_seed(0)
    recurrence = Recurrence(crbp_detectron.modeling.build_cell(32, num_groups=8), mode=mode, steps=steps, penalty="lcp")
    return CRBPMaskHead(ShapeSpec(channels=32, height=14, width=14), num_classes=3, recurrence=recurrence)


def _assert_memory_law(mode, sizes):
    """sizes at steps 1, 5, 20: constant for crbp; linear growth for bptt."""
    s1, s5, s20 = sizes
    if mode == "crbp":
        assert s1 == s5 == s20
    else:
        per_step = (s5 - s1) / 4
        assert per_step > 0 and abs((s20 - s5) - 15 * per_step) <= 0.02 * (s20 - s5)


@pytest.mark.parametrize("mode", ["crbp", "bptt"])
def test_mask_head_memory_in_steps(mode):
    rois = torch.rand(8, 32, 14, 14)
    _assert_memory_law(mode, [saved_bytes(lambda: _mask_head(mode, n).layers(rois))[0] for n in (1, 5, 20)])


@pytest.mark.parametrize("mode", ["crbp", "bptt"])
def test_recurrent_fpn_memory_in_steps(mode):
    images = torch.rand(1, 3, 64, 64)
    sizes = []
    for steps in (1, 5, 20):
        cfg = load_config("COCO-PanopticSegmentation/panoptic_crbp_fpn_R_50_1x.yaml",
                          TINY + ["MODEL.CRBP.MODE", mode, "MODEL.CRBP.STEPS", steps])
        torch.manual_seed(0)
        backbone = build_backbone(cfg)
        backbone.train()
        size, out = saved_bytes(lambda: backbone(images))
        sizes.append(size)
        assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
            "p2": (32, 16, 16), "p3": (32, 8, 8), "p4": (32, 4, 4), "p5": (32, 2, 2), "p6": (32, 1, 1)}
    _assert_memory_law(mode, sizes)


def test_shared_fpn_cell_and_level_subset():
    cfg = load_config("COCO-PanopticSegmentation/panoptic_crbp_fpn_R_50_1x.yaml",
                      TINY + ["MODEL.CRBP.FPN.SHARE_CELL", True, "MODEL.CRBP.FPN.LEVELS", "['p2', 'p3']"])
    backbone = build_backbone(cfg)
    blocks = recurrent_blocks(backbone)
    assert set(blocks) == {"fpn_output2", "fpn_output3"}
    assert blocks["fpn_output2"].cell is blocks["fpn_output3"].cell
    assert isinstance(backbone.fpn_output4, torch.nn.Module) and not isinstance(backbone.fpn_output4, Recurrence)


def test_training_batch_without_any_thing():
    """Panoptic configs keep images without things (FILTER_EMPTY_ANNOTATIONS False): the
    recurrent mask head then sees zero RoIs, and the step must still be finite."""
    from detectron2.structures import BitMasks, Boxes, Instances

    batch = synthetic_batch()
    for item in batch:
        empty = Instances((64, 64))
        empty.gt_boxes = Boxes(torch.zeros(0, 4))
        empty.gt_classes = torch.zeros(0, dtype=torch.int64)
        empty.gt_masks = BitMasks(torch.zeros(0, 64, 64, dtype=torch.bool))
        item["instances"] = empty
    cfg = load_config("panoptic_crbp.yaml", TINY)
    _, losses, _ = train_step(cfg, batch)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert float(losses["loss_penalty/roi_heads.mask_head"].detach()) == 0.0


def test_backward_and_implicit_step_keys_reach_every_block():
    cfg = load_config("COCO-PanopticSegmentation/panoptic_crbp_fpn_R_50_1x.yaml", TINY + [
        "MODEL.CRBP.BACKWARD.SOLVER", "bicgstab", "MODEL.CRBP.BACKWARD.MAX_VJPS", 7, "MODEL.CRBP.BACKWARD.RESTART", 3,
        "MODEL.CRBP.BACKWARD.GROWTH_BOUND", 1e3, "MODEL.CRBP.BACKWARD.DIVERGENCE_WINDOW", 9,
        "MODEL.CRBP.IMPLICIT_STEP", "recorded", "MODEL.CRBP.TOL", 1e-3])
    blocks = recurrent_blocks(build_model(cfg))
    assert len(blocks) == 5  # the mask head and four FPN levels
    for block in blocks.values():
        b = block.backward_config
        assert (b.solver, b.max_vjps, b.restart, b.growth_bound, b.window) == ("bicgstab", 7, 3, 1e3, 9)
        assert block.implicit_step == "recorded" and block.tol == 1e-3


def test_implicit_chunk_reaches_every_block_and_trains_a_step():
    cfg = load_config("COCO-PanopticSegmentation/panoptic_crbp_fpn_R_50_1x.yaml", TINY + ["MODEL.CRBP.IMPLICIT_CHUNK", 2])
    model, losses, _ = train_step(cfg)
    assert all(block.implicit_chunk == 2 for block in recurrent_blocks(model).values())
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "recurrence" in n)


def test_forward_solver_keys_reach_every_block_and_its_statistics_reach_event_storage():
    cfg = load_config("COCO-PanopticSegmentation/panoptic_crbp_fpn_R_50_1x.yaml", TINY + [
        "MODEL.CRBP.FORWARD.SOLVER", "anderson", "MODEL.CRBP.FORWARD.WINDOW", 3, "MODEL.CRBP.FORWARD.BETA", 0.7,
        "MODEL.CRBP.FORWARD.RIDGE", 1e-5, "MODEL.CRBP.STEPS", 30, "MODEL.CRBP.TOL", 1e-3])
    model, losses, storage = train_step(cfg)
    blocks = recurrent_blocks(model)
    assert len(blocks) == 5 and all(torch.isfinite(v) for v in losses.values())
    for name, block in blocks.items():
        assert (block.forward_config.solver, block.forward_config.window, block.forward_config.beta,
                block.forward_config.ridge) == ("anderson", 3, 0.7, 1e-5)
        latest = storage.latest()
        evaluations = latest[f"crbp/{name}/evaluations"][0]
        assert 1 < evaluations <= 30 and latest[f"crbp/{name}/residual"][0] >= 0
        assert evaluations == latest[f"crbp/{name}/mean_steps"][0]  # with a tolerance: the per-sample mean


def _recurrent_step_flops(state_channels, channels=32):
    """fvcore FLOPs of one more recurrent step of the mask head (eval, 4 RoIs of 14x14)."""
    from fvcore.nn import FlopCountAnalysis

    def flops(steps):
        head = CRBPMaskHead(ShapeSpec(channels=channels, height=14, width=14), num_classes=3,
                            state_channels=state_channels,
                            recurrence=Recurrence(crbp_detectron.modeling.build_cell(state_channels or channels, num_groups=4),
                                                  steps=steps)).eval()
        layers = torch.nn.Module()
        layers.head = head
        layers.forward = head.layers
        with torch.no_grad():
            analysis = FlopCountAnalysis(layers, (torch.rand(4, channels, 14, 14),))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            return analysis.total()
    return (flops(6) - flops(2)) / 4


def test_narrow_state_mask_head_trains_and_a_step_costs_the_square_of_its_width():
    """MODEL.CRBP.MASK_HEAD.STATE_CHANNELS: a 1x1 conv projects the RoI features to the drive; the
    gradient reaches the projection, the cell and the deconv; a recurrent step costs about
    (state / features)^2 of the full-width one (the cell's convs are state-to-state)."""
    cfg = load_config("panoptic_crbp.yaml", TINY + ["MODEL.CRBP.MASK_HEAD.STATE_CHANNELS", 8,
                                                    "MODEL.CRBP.CELL.NUM_GROUPS", 4])
    model, losses, storage = train_step(cfg)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    head = model.roi_heads.mask_head
    assert tuple(head.drive.weight.shape) == (8, 32, 1, 1) and head.deconv.in_channels == 8
    cell = head.recurrence.cell
    assert cell.channels == 8 and tuple(cell.w_inh.weight.shape[:2]) == (8, 8) and cell.norm_inh.num_groups == 4
    for module in (head.drive, head.recurrence.cell, head.deconv):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)
    assert "crbp/roi_heads.mask_head/residual" in storage.latest()
    # The paper's width keeps no projection.
    assert build_model(load_config("panoptic_crbp.yaml", TINY)).roi_heads.mask_head.drive is None
    ratio = _recurrent_step_flops(8) / _recurrent_step_flops(0)
    assert 1 / 16 <= ratio <= 1 / 12, ratio

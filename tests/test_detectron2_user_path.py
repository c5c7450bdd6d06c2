"""What an experienced Detectron2 user does first: read a packaged config with Detectron2's own
calls, build parts without a config, and misconfigure a part; misuse fails at build time naming
what to use instead. (LazyConfig: tests/test_lazyconfig.py; export: tests/test_export.py; own data:
tests/test_own_dataset.py.)"""
import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.roi_heads import build_mask_head

import crbp_detectron  # noqa: F401  (registers the components)
from crbp_detectron import add_crbp_config
from crbp_detectron.config import CONFIG_DIR, ConfigError
from crbp_detectron.crbp import recurrent_blocks
from crbp_detectron.modeling import CRBPFPN, CRBPMaskHead

from .modeling.test_models import FEED_FORWARD_CONFIGS

PACKAGED_YAML = sorted(os.path.relpath(p, CONFIG_DIR)
                       for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True))


def plain_cfg(name=None):
    """Detectron2's get_cfg() + add_crbp_config + merge_from_file."""
    cfg = get_cfg()
    add_crbp_config(cfg)
    if name:
        cfg.merge_from_file(os.path.join(CONFIG_DIR, name))
    return cfg


@pytest.mark.parametrize("name", PACKAGED_YAML)
def test_every_packaged_yaml_merges_with_plain_detectron2_and_builds(name):
    cfg = plain_cfg(name)
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert bool(recurrent_blocks(model)) != (name in FEED_FORWARD_CONFIGS)


@pytest.mark.parametrize("architecture, part, instead", [
    ("PanopticFPN", ("MODEL.ROI_MASK_HEAD.NAME", "CRBPMaskHead"), "use MODEL.META_ARCHITECTURE 'CRBPPanopticFPN'"),
    ("GeneralizedRCNN", ("MODEL.ROI_MASK_HEAD.NAME", "CRBPMaskHead"),
     "use MODEL.META_ARCHITECTURE 'CRBPGeneralizedRCNN'"),
    ("PanopticFPN", ("MODEL.BACKBONE.NAME", "build_resnet_crbp_fpn_backbone"),
     "use MODEL.META_ARCHITECTURE 'CRBPPanopticFPN'"),
    ("SemanticSegmentor", ("MODEL.BACKBONE.NAME", "build_resnet_crbp_fpn_backbone"),
     "use one of ['CRBPGeneralizedRCNN', 'CRBPPanopticFPN'], or a meta-architecture that has "
     "crbp_detectron.modeling.RecurrenceLossMixin first among its bases"),
])
def test_recurrent_part_in_a_stock_meta_architecture_fails_at_build_time(architecture, part, instead):
    """It used to train without the contraction penalty for 64 iterations, then fail."""
    cfg = plain_cfg("COCO-PanopticSegmentation/panoptic_crbp_R_50_1x.yaml")
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.META_ARCHITECTURE", architecture, *part])
    with pytest.raises(ConfigError) as info:
        build_model(cfg)
    assert str(info.value) == (
        f"MODEL.META_ARCHITECTURE = {architecture!r} with {part[0]} = {part[1]!r}: {architecture} does not add the "
        f"recurrent block's contraction penalty to the loss nor log its statistics; {instead}")


def _recurrence_settings(block):
    return (block.mode, block.steps, block.test_steps, block.tol, block.implicit_step, repr(block.backward_config),
            block.penalty, block.lcp_lambda, block.penalty_reduction, block.lcp_absolute, block.penalty_weight,
            block.hutchinson_samples)


def _same_module(a, b):
    assert [(n, type(m)) for n, m in a.named_modules()] == [(n, type(m)) for n, m in b.named_modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_mask_head_constructor_defaults_are_the_config_defaults():
    """Built without a config, the head is the default config's head: the paper's lambda 0.95 and
    weight 0.001 (it had the core's 0.9 and 1.0), and the same parameters given the same seed."""
    cfg = plain_cfg()
    cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.ROI_MASK_HEAD.NAME = "CRBPGeneralizedRCNN", "CRBPMaskHead"
    shape = ShapeSpec(channels=cfg.MODEL.FPN.OUT_CHANNELS, width=14, height=14)
    torch.manual_seed(0)
    from_config = build_mask_head(cfg, shape)
    torch.manual_seed(0)
    bare = CRBPMaskHead(shape, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    _same_module(bare, from_config)
    assert _recurrence_settings(bare.recurrence) == _recurrence_settings(from_config.recurrence)
    assert (bare.recurrence.lcp_lambda, bare.recurrence.penalty_weight, bare.recurrence.penalty_reduction) == (
        cfg.MODEL.CRBP.LCP_LAMBDA, cfg.MODEL.CRBP.PENALTY_WEIGHT, cfg.MODEL.CRBP.PENALTY_REDUCTION) == (
        0.95, 0.001, "sum")


def test_fpn_constructor_defaults_are_the_config_defaults():
    cfg = plain_cfg("COCO-PanopticSegmentation/panoptic_crbp_fpn_R_50_1x.yaml")
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.CRBP.FPN.SHARE_CELL", True])
    torch.manual_seed(0)
    from_config = build_backbone(cfg)
    torch.manual_seed(0)
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    bottom_up = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    bare = CRBPFPN(bottom_up, cfg.MODEL.FPN.IN_FEATURES, cfg.MODEL.FPN.OUT_CHANNELS, share_cell=True,
                   top_block=LastLevelMaxPool())
    _same_module(bare, from_config)
    assert {n: _recurrence_settings(b) for n, b in recurrent_blocks(bare).items()} == {
        n: _recurrence_settings(b) for n, b in recurrent_blocks(from_config).items()}
    assert tuple(bare.recurrent_levels) == tuple(plain_cfg().MODEL.CRBP.FPN.LEVELS)


def test_head_constructor_scalars_are_the_config_defaults():
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(CRBPMaskHead.__init__).parameters.items()}
    cfg = plain_cfg()
    assert defaults["output_norm"] == cfg.MODEL.CRBP.MASK_HEAD.OUTPUT_NORM
    assert defaults["state_channels"] == cfg.MODEL.CRBP.MASK_HEAD.STATE_CHANNELS
    assert defaults["deconv_dim"] == cfg.MODEL.ROI_MASK_HEAD.CONV_DIM


# --------------------------------------------------------------------------- Detectron2 versions
def test_amp_on_cpu_builds_no_cuda_grad_scaler(demo_root, tmp_path):
    """Detectron2's CUDA AMPTrainer (and its GradScaler warnings on a CPU) is not built to be thrown
    away; the trainer's config still says AMP."""
    import warnings

    from crbp_detectron.config import load_config

    from .training_utils import tiny_opts, train

    cfg = load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path, SOLVER__AMP__ENABLED=True, SOLVER__MAX_ITER=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = train(cfg)
    assert not [w for w in caught if "GradScaler" in str(w.message) or "amp" in str(w.message).lower()]
    assert trainer.cfg.SOLVER.AMP.ENABLED and trainer._trainer.amp and trainer._trainer.grad_scaler is None


def test_resume_uses_no_private_data_loader_iterator(demo_root, tmp_path, monkeypatch):
    """On Detectron2's main branch SimpleTrainer._data_loader_iter is a read-only property: the
    trainer must neither read it nor replace it. Here reading it fails and writing it is ignored,
    and a preempted-and-resumed run still ends with the uninterrupted run's weights."""
    from crbp_detectron.config import load_config
    from crbp_detectron.engine.preemption import Preempted
    from crbp_detectron.engine.train_loop import GuardedTrainer

    from .training_utils import SignalAt, tiny_opts, train, weights

    def forbidden(self):
        raise AssertionError("SimpleTrainer._data_loader_iter read")

    monkeypatch.setattr(GuardedTrainer, "_data_loader_iter", property(forbidden, lambda self, value: None),
                        raising=False)
    opts = dict(INPUT__RANDOM_FLIP="horizontal")
    reference = weights(train(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path / "a", **opts))))
    cfg = load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path / "b", **opts))
    with pytest.raises(Preempted):
        train(cfg, hooks=[SignalAt(2)])
    resumed = weights(train(cfg, resume=True))
    for key, value in reference.items():
        assert torch.equal(resumed[key], value), key

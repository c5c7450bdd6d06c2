"""The LazyConfig (.py) configs build the same models, schedules and datasets as their YAML twins."""
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler

import crbp_detectron  # noqa: F401  (registers the components)
from crbp_detectron.config import load_config, resolve_config_file
from crbp_detectron.crbp import recurrent_blocks

PAIRS = ["panoptic_crbp_R_50_1x", "panoptic_crbp_fpn_R_50_1x", "panoptic_crbp_R_101_3x"]
TRAINABLE = {"panoptic_crbp_R_50_1x": 44_968_038, "panoptic_crbp_fpn_R_50_1x": 48_912_742}  # README


def _settings(obj):
    """Public plain attributes of `obj`, functions (e.g. the cell's nonlinearity) by name."""
    plain = (bool, int, float, str, type(None), tuple)
    return {k: v if isinstance(v, plain) else getattr(v, "__name__", repr(v)) for k, v in vars(obj).items()
            if not k.startswith("_") and (isinstance(v, plain) or callable(v) and not isinstance(v, torch.nn.Module))}


def _block_settings(model):
    """Every recurrent block's training settings (mode, steps, Neumann, penalty) and cell options."""
    return {name: (_settings(b), repr(b.forward_config), repr(b.backward_config), _settings(b.cell))
            for name, b in recurrent_blocks(model).items()}


@pytest.mark.parametrize("name", PAIRS)
def test_lazyconfig_builds_the_yaml_model(name):
    yaml_cfg = load_config(f"COCO-PanopticSegmentation/{name}.yaml", ["MODEL.DEVICE", "cpu"])
    lazy_cfg = LazyConfig.load(resolve_config_file(f"COCO-PanopticSegmentation/{name}.py"))
    torch.manual_seed(0)
    from_yaml = build_model(yaml_cfg)
    from_lazy = instantiate(lazy_cfg.model)

    assert [(n, type(m)) for n, m in from_lazy.named_modules()] == [(n, type(m)) for n, m in from_yaml.named_modules()]
    shapes = lambda m: [(n, tuple(p.shape), p.requires_grad) for n, p in m.named_parameters()]  # noqa: E731
    assert shapes(from_lazy) == shapes(from_yaml)
    trainable = sum(p.numel() for p in from_lazy.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in from_yaml.parameters() if p.requires_grad)
    if name in TRAINABLE:
        assert trainable == TRAINABLE[name]
    lazy_buffers, yaml_buffers = dict(from_lazy.named_buffers()), dict(from_yaml.named_buffers())
    assert lazy_buffers.keys() == yaml_buffers.keys()
    for key, value in yaml_buffers.items():  # deterministic: pixel mean/std, frozen-BN statistics
        assert torch.equal(lazy_buffers[key], value), key
    assert _block_settings(from_lazy) == _block_settings(from_yaml) != {}
    for attr in ("num_classes", "mask_on", "test_score_thresh"):
        assert getattr(from_lazy.roi_heads, attr, None) == getattr(from_yaml.roi_heads, attr, None), attr
    assert vars(from_lazy.sem_seg_head).keys() == vars(from_yaml.sem_seg_head).keys()
    for attr in ("combine_overlap_thresh", "combine_stuff_area_thresh", "combine_instances_score_thresh",
                 "max_consecutive_divergences"):
        assert getattr(from_lazy, attr) == getattr(from_yaml, attr), attr

    # The same datasets, iterations, learning rate and schedule.
    assert lazy_cfg.dataloader.train.dataset.names == yaml_cfg.DATASETS.TRAIN[0]
    assert lazy_cfg.dataloader.test.dataset.names == yaml_cfg.DATASETS.TEST[0]
    assert lazy_cfg.train.max_iter == yaml_cfg.SOLVER.MAX_ITER
    assert lazy_cfg.optimizer.lr == yaml_cfg.SOLVER.BASE_LR
    yaml_lr = build_lr_scheduler(yaml_cfg, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))._multiplier
    lazy_lr = instantiate(lazy_cfg.lr_multiplier)
    for it in (0, 500, 999, 1000, *yaml_cfg.SOLVER.STEPS, yaml_cfg.SOLVER.STEPS[-1] - 1, yaml_cfg.SOLVER.MAX_ITER - 1):
        where = it / yaml_cfg.SOLVER.MAX_ITER
        assert lazy_lr(where) == pytest.approx(yaml_lr(where), rel=1e-9), it


def test_steps_set_in_lazyconfig_or_yaml_give_the_same_model():
    """README's override `model.roi_heads.mask_head.recurrence.steps=10` is the 10-step YAML model,
    the gate initialisation (chrono: biases drawn for 10 steps) included."""
    from detectron2.modeling.roi_heads import build_mask_head

    yaml_cfg = load_config("COCO-PanopticSegmentation/panoptic_crbp10_R_50_1x.yaml", ["MODEL.DEVICE", "cpu"])
    lazy_cfg = LazyConfig.load(resolve_config_file("COCO-PanopticSegmentation/panoptic_crbp_R_50_1x.py"))
    lazy_cfg = LazyConfig.apply_overrides(lazy_cfg, ["model.roi_heads.mask_head.recurrence.steps=10"])
    torch.manual_seed(0)
    from_yaml = build_mask_head(yaml_cfg, ShapeSpec(channels=256, width=14, height=14))
    torch.manual_seed(0)
    from_lazy = instantiate(lazy_cfg.model.roi_heads.mask_head)
    assert from_lazy.recurrence.steps == from_yaml.recurrence.steps == 10
    assert _block_settings(from_lazy) == _block_settings(from_yaml)
    lazy_state, yaml_state = from_lazy.state_dict(), from_yaml.state_dict()
    assert lazy_state.keys() == yaml_state.keys()
    for key, value in yaml_state.items():
        assert torch.equal(lazy_state[key], value), key
    # ... and not the 20-step one: the gate biases differ.
    torch.manual_seed(0)
    twenty = instantiate(LazyConfig.load(resolve_config_file(
        "COCO-PanopticSegmentation/panoptic_crbp_R_50_1x.py")).model.roi_heads.mask_head)
    assert not torch.equal(twenty.state_dict()["recurrence.cell.mix_gate.bias"], yaml_state["recurrence.cell.mix_gate.bias"])

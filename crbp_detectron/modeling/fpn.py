"""FPN with recurrent output stages: at each chosen level the 3x3 output conv after the top-down
fusion becomes a recurrent block run to equilibrium, with the fused feature as its drive. Output
names, shapes and strides are the standard FPN's, so every Detectron2 head works unchanged.
(The C-RBP authors explored recurrence in the FPN but published only the recurrent mask head.)"""
import math
from typing import Optional, Sequence

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .blocks import (build_cell, build_recurrence, cell_kwargs_for, cell_kwargs_from_cfg, default_block_kwargs,
                     recurrence_kwargs_from_cfg)
from .meta_arch import require_collecting_meta_architecture


class CRBPFPN(FPN):
    """Detectron2's FPN whose output convs at `recurrent_levels` are replaced by Recurrence blocks
    (attribute `fpn_output{stage}`, like the conv it replaces). `cell_kwargs` / `recurrence_kwargs`
    left out: the config's defaults (MODEL.CRBP, `add_crbp_config`)."""

    def __init__(self, bottom_up, in_features, out_channels, *, recurrent_levels: Sequence[str] = ("p2", "p3", "p4", "p5"),
                 share_cell: bool = False, cell_kwargs: Optional[dict] = None,
                 recurrence_kwargs: Optional[dict] = None, **fpn_kwargs):
        super().__init__(bottom_up, in_features, out_channels, **fpn_kwargs)
        default_cell, default_recurrence = default_block_kwargs()
        cell_kwargs = default_cell if cell_kwargs is None else cell_kwargs
        recurrence_kwargs = default_recurrence if recurrence_kwargs is None else recurrence_kwargs
        strides = [bottom_up.output_shape()[f].stride for f in in_features]
        stages = [int(math.log2(s)) for s in strides]
        unknown = set(recurrent_levels) - {f"p{s}" for s in stages}
        if unknown:
            raise ValueError(f"recurrent FPN levels {sorted(unknown)} are not among this FPN's "
                             f"levels {[f'p{s}' for s in stages]}")
        shared = (build_cell(out_channels, **cell_kwargs_for(cell_kwargs, recurrence_kwargs.get("steps", default_recurrence["steps"])))
                  if share_cell else None)
        self.recurrent_levels = tuple(recurrent_levels)
        # output_convs runs from the coarsest level to the finest (Detectron2's order).
        for idx, stage in enumerate(reversed(stages)):
            if f"p{stage}" not in recurrent_levels:
                continue
            block = build_recurrence(out_channels, cell=shared, cell_kwargs=cell_kwargs, **recurrence_kwargs)
            setattr(self, f"fpn_output{stage}", block)  # replaces the conv's registration
            self.output_convs[idx] = block


@BACKBONE_REGISTRY.register()
def build_resnet_crbp_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet + recurrent FPN (MODEL.CRBP.FPN.LEVELS, MODEL.CRBP.FPN.SHARE_CELL), P6 by max-pool."""
    require_collecting_meta_architecture(cfg, "MODEL.BACKBONE.NAME = 'build_resnet_crbp_fpn_backbone'")
    return CRBPFPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        recurrent_levels=tuple(cfg.MODEL.CRBP.FPN.LEVELS),
        share_cell=cfg.MODEL.CRBP.FPN.SHARE_CELL,
        cell_kwargs=cell_kwargs_from_cfg(cfg),
        recurrence_kwargs=recurrence_kwargs_from_cfg(cfg),
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )

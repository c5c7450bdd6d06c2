"""Detectron2 components, registered on import: CRBPMaskHead, ConvUpsampleMaskHead and TracerMaskHead
(ROI_MASK_HEAD_REGISTRY), TracerROIHeads (ROI_HEADS_REGISTRY), build_resnet_crbp_fpn_backbone
(BACKBONE_REGISTRY), CRBPPanopticFPN and CRBPGeneralizedRCNN (META_ARCH_REGISTRY)."""
from .blocks import build_cell, build_recurrence, cell_kwargs_from_cfg, recurrence_kwargs_from_cfg
from .conv_mask_head import ConvUpsampleMaskHead
from .fpn import CRBPFPN, build_resnet_crbp_fpn_backbone
from .mask_head import CRBPMaskHead
from .meta_arch import CRBPGeneralizedRCNN, CRBPPanopticFPN, RecurrenceLossMixin, RecurrentBlockDivergence
from .tracer import Tracer, load_tracer_weights
from .tracer_mask_head import TracerMaskHead, TracerROIHeads

__all__ = [k for k in dir() if not k.startswith("_")]

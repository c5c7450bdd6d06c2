"""The published C-RBP mask head: Mask R-CNN's stack of 3x3 convs replaced by ONE recurrent cell
(hGRU, 256 channels, 3x3, GALA gate, GroupNorm, softplus) iterated to equilibrium on the RoI
features, then the usual deconv and per-class predictor (Linsley et al., NeurIPS 2020). Optionally
the state is narrower than the RoI features (a 1x1 projection makes the drive): a step's cost
falls with the square of the width, so the recurrence can run 20 steps at feed-forward cost."""
from typing import Optional

import fvcore.nn.weight_init as weight_init
from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, get_norm
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead
import torch
from torch import nn

from ..config import MASK_HEAD_READOUTS
from .blocks import build_recurrence, cell_kwargs_from_cfg, default_block_kwargs, recurrence_kwargs_from_cfg
from .mask_loss import MaskLossMixin
from .meta_arch import require_collecting_meta_architecture


@ROI_MASK_HEAD_REGISTRY.register()
class CRBPMaskHead(MaskLossMixin, BaseMaskRCNNHead):
    """RoI features (-> 1x1 projection, with a narrower state) = the cell's drive x -> recurrent
    block h* -> norm -> ReLU -> 2x deconv -> ReLU -> 1x1 predictor. Trained in MODEL.CRBP.MODE;
    its penalty and statistics are collected by the C-RBP meta-architectures."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes: int, recurrence: Optional[nn.Module] = None,
                 output_norm: str = "BN", deconv_dim: int = 256, state_channels: int = 0, readout: str = "state",
                 dice_weight: float = 0.0, **kwargs):
        """
        Args:
            input_shape: shape of the RoI features.
            num_classes: foreground classes (1 for class-agnostic masks).
            recurrence: a `Recurrence` whose cell maps (x, h) of the state's channels; default:
                the config's defaults (`add_crbp_config`: the paper's C-RBP hGRU, 20 steps, LCP
                lambda 0.95 summed, weight 0.001). The head must sit in a meta-architecture that
                collects its penalty (CRBPPanopticFPN, CRBPGeneralizedRCNN).
            output_norm: Detectron2 norm name applied to h* ("BN", "SyncBN", "GN", "").
            deconv_dim: channels of the upsampling deconvolution.
            state_channels: channels of the recurrent state; 0 = input_shape.channels (the paper,
                no projection), otherwise a 1x1 conv projects the RoI features to this many.
            readout: what the deconv sees: "state" (h*, the paper) or "state_and_features" (h*
                concatenated with the RoI features, each through its own output norm).
            dice_weight: weight of a Dice term added to the mask cross-entropy (mask_loss.py).
            kwargs: BaseMaskRCNNHead's (loss_weight, vis_period).
        """
        super().__init__(**kwargs)
        self.dice_weight = dice_weight
        if readout not in MASK_HEAD_READOUTS:
            raise ValueError(f"readout must be one of {MASK_HEAD_READOUTS}, got {readout!r}")
        if state_channels < 0:
            raise ValueError(f"state_channels must be >= 0 (0: the RoI features' channels), got {state_channels}")
        channels = state_channels or input_shape.channels
        self.drive = None
        if channels != input_shape.channels:
            self.drive = Conv2d(input_shape.channels, channels, kernel_size=1)
            weight_init.c2_msra_fill(self.drive)
        if recurrence is None:
            cell_kwargs, recurrence_kwargs = default_block_kwargs()
            recurrence = build_recurrence(channels, cell_kwargs=cell_kwargs, **recurrence_kwargs)
        self.recurrence = recurrence
        self.output_norm = get_norm(output_norm, channels) or nn.Identity()
        self.features_norm = None
        readout_channels = channels
        if readout == "state_and_features":
            self.features_norm = get_norm(output_norm, input_shape.channels) or nn.Identity()
            readout_channels += input_shape.channels
        self.deconv = ConvTranspose2d(readout_channels, deconv_dim, kernel_size=2, stride=2, padding=0)
        self.predictor = Conv2d(deconv_dim, num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.deconv)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        require_collecting_meta_architecture(cfg, "MODEL.ROI_MASK_HEAD.NAME = 'CRBPMaskHead'")
        ret = super().from_config(cfg, input_shape)
        num_classes = 1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
        state_channels = cfg.MODEL.CRBP.MASK_HEAD.STATE_CHANNELS
        ret.update(
            input_shape=input_shape,
            num_classes=num_classes,
            recurrence=build_recurrence(state_channels or input_shape.channels,
                                        cell_kwargs=cell_kwargs_from_cfg(cfg), **recurrence_kwargs_from_cfg(cfg)),
            output_norm=cfg.MODEL.CRBP.MASK_HEAD.OUTPUT_NORM,
            deconv_dim=cfg.MODEL.ROI_MASK_HEAD.CONV_DIM,
            state_channels=state_channels,
            readout=cfg.MODEL.CRBP.MASK_HEAD.READOUT,
            dice_weight=cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT,
        )
        return ret

    def layers(self, x):
        h = nn.functional.relu(self.output_norm(self.recurrence(x if self.drive is None else self.drive(x))))
        if self.features_norm is not None:
            h = torch.cat([h, nn.functional.relu(self.features_norm(x))], dim=1)
        return self.predictor(nn.functional.relu(self.deconv(h)))

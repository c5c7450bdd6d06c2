"""Detectron2's feed-forward mask head with the project's mask loss options: the baseline a
recurrent mask head is compared with when both train with the same loss."""
from detectron2.config import configurable
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead

from .mask_loss import MaskLossMixin


@ROI_MASK_HEAD_REGISTRY.register()
class ConvUpsampleMaskHead(MaskLossMixin, MaskRCNNConvUpsampleHead):
    """MaskRCNNConvUpsampleHead (MODEL.ROI_MASK_HEAD.NUM_CONV 3x3 convs, 2x deconv, predictor),
    unchanged, trained with `mask_loss` (Detectron2's cross-entropy + DICE_WEIGHT x Dice)."""

    @configurable
    def __init__(self, input_shape, *, dice_weight: float = 0.0, **kwargs):
        """dice_weight: weight of the Dice term added to the cross-entropy; other arguments:
        MaskRCNNConvUpsampleHead's."""
        super().__init__(input_shape, **kwargs)
        self.dice_weight = dice_weight

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["dice_weight"] = cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT
        return ret

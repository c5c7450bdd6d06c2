"""The mask loss of the mask heads: Detectron2's per-pixel binary cross-entropy (mask_rcnn_loss),
optionally plus a Dice term. Per-pixel cross-entropy alone keeps thin structures under 0.5: a
mask head uncertain about a 3 px contour's position by a pixel spreads its probability over
twice the contour's width, and a head that cannot tell two crossing contours apart is, at
best, calibrated to the chance that a contour pixel in the box is the instance's (about 0.5).
Dice scores the mask as a whole (2 |P.T| / (|P| + |T|)), so it rewards covering the thin
instance over spreading a low probability around it (Milletari et al., V-Net, 2016)."""
from typing import List

import torch
from detectron2.layers import cat
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
from detectron2.structures import Instances


def mask_logits_and_targets(pred_mask_logits: torch.Tensor, instances: List[Instances]):
    """Each RoI's logits for its ground-truth class [N, M, M] and its target mask [N, M, M]
    (float), made as Detectron2's mask_rcnn_loss makes them (the ground-truth mask cropped to the
    proposal box at the mask resolution)."""
    side = pred_mask_logits.size(2)
    targets = [x.gt_masks.crop_and_resize(x.proposal_boxes.tensor, side) for x in instances if len(x)]
    if not targets:
        return pred_mask_logits[:0, 0], pred_mask_logits.new_zeros((0, side, side))
    targets = cat(targets, dim=0).to(device=pred_mask_logits.device, dtype=torch.float32)
    if pred_mask_logits.size(1) == 1:
        return pred_mask_logits[:, 0], targets
    classes = cat([x.gt_classes for x in instances if len(x)], dim=0).to(dtype=torch.int64)
    return pred_mask_logits[torch.arange(len(classes)), classes], targets


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over masks of 1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s), p = sigmoid(logits)."""
    if logits.numel() == 0:
        return logits.sum() * 0
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    return (1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


def mask_loss(pred_mask_logits: torch.Tensor, instances: List[Instances], dice_weight: float = 0.0,
              vis_period: int = 0) -> torch.Tensor:
    """Detectron2's mask_rcnn_loss (+ dice_weight x dice_loss on the same targets)."""
    loss = mask_rcnn_loss(pred_mask_logits, instances, vis_period)
    if dice_weight:
        loss = loss + dice_weight * dice_loss(*mask_logits_and_targets(pred_mask_logits, instances))
    return loss


class MaskLossMixin:
    """First among a Detectron2 mask head's bases: its training loss is `mask_loss` with the
    head's `dice_weight` (MODEL.ROI_MASK_HEAD.DICE_WEIGHT); inference is Detectron2's."""

    dice_weight = 0.0

    def forward(self, x, instances: List[Instances]):
        return self.loss_or_inference(self.layers(x), instances)

    def loss_or_inference(self, mask_logits: torch.Tensor, instances: List[Instances]):
        """Training: the loss dict of the RoIs' mask logits; inference: `instances` with their masks."""
        from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference

        if self.training:
            return {"loss_mask": mask_loss(mask_logits, instances, self.dice_weight, self.vis_period) * self.loss_weight}
        mask_rcnn_inference(mask_logits, instances)
        return instances

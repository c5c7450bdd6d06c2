"""A mask head that traces: the Pathfinder tracer (tracer.py: front-end, hGRU to equilibrium,
per-pixel readout) run on each RoI's window of the image itself, with the box as its only cue.

Why the image and not the RoI features: a 3 px dashed contour has no identity in any local
feature; it is one instance because its dashes continue one another, which only a process that
follows it from dash to dash can tell (the contour benchmark, benchmarks/contour_grouping.py: every
feature-based head stays near the non-grouping bound). Pathfinder's tracer does that at pixel level.

Each RoI's window is a square about its box's centre (MODEL.CRBP.TRACER.WINDOW image px a side, or
CONTEXT x the box's longer side if that is more), sampled on GRID x GRID (ROIAlign), with every
pixel outside the box scaled by BOX_DIM: a contour that crosses the instance leaves its box and the
instance's own contour does not, so the box tells the tracer its target as Pathfinder's marker did
(projects/Pathfinder/experiments/crossings.py --cue box). The tracer's logits are then pooled on
the box at the mask resolution (2 x ROI_MASK_HEAD.POOLER_RESOLUTION, as the conv head's deconv
gives), class-agnostic, into Detectron2's mask_rcnn_loss and mask_rcnn_inference.

TracerROIHeads is StandardROIHeads whose mask head receives the image ({"image": the model's
normalised input}) instead of pooled FPN features, and trains on at most
TRACER.MAX_TRAIN_ROIS_PER_IMAGE foreground RoIs per image (one tracer run each).
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import ROIAlign, ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, select_foreground_proposals
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead, build_mask_head
from detectron2.structures import Instances

from .mask_loss import MaskLossMixin
from .meta_arch import require_collecting_meta_architecture
from .tracer import Tracer, build_tracer_body, load_tracer_weights

IMAGE = "image"  # the key of the image among the features the mask head receives


def roi_windows(boxes: torch.Tensor, window: float, context: float) -> torch.Tensor:
    """XYXY boxes [R, 4] -> their windows [R, 4]: squares about the boxes' centres, `window` a side
    or `context` x the box's longer side if that is more."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    longer = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values
    half = (longer * context).clamp_min(window)[:, None] / 2
    return torch.cat([centre - half, centre + half], dim=1)


@ROI_MASK_HEAD_REGISTRY.register()
class TracerMaskHead(MaskLossMixin, BaseMaskRCNNHead):
    """image -> each RoI's window (GRID x GRID, outside its box dimmed) -> tracer -> logits pooled
    on the box [R, 1, M, M]. Its recurrent body's penalty and statistics are collected by the
    C-RBP meta-architectures."""

    @configurable
    def __init__(self, *, tracer: Tracer, mask_size: int, grid: int = 64, window: float = 128.0,
                 context: float = 1.25, box_dim: float = 0.4, dice_weight: float = 0.0, **kwargs):
        """
        Args:
            tracer: the pixel-level tracer (its in_channels: the image's).
            mask_size: M, the side of the mask logits per RoI.
            grid, window, context, box_dim: each RoI's window (module docstring).
            dice_weight: weight of a Dice term added to the mask cross-entropy (mask_loss.py).
            kwargs: BaseMaskRCNNHead's (loss_weight, vis_period).
        """
        super().__init__(**kwargs)
        if not 0 <= box_dim <= 1:
            raise ValueError(f"box_dim must be in [0, 1], got {box_dim}")
        if window <= 0 or context < 1:
            raise ValueError(f"need window > 0 and context >= 1, got {window}, {context}")
        self.tracer, self.dice_weight = tracer, dice_weight
        self.grid, self.window, self.context, self.box_dim = grid, window, context, box_dim
        self.sample_window = ROIAlign((grid, grid), 1.0, 0, aligned=True)
        self.pool_box = ROIAlign((mask_size, mask_size), 1.0, 0, aligned=True)

    @classmethod
    def from_config(cls, cfg, input_shape):
        t = cfg.MODEL.CRBP.TRACER
        if t.BODY == "recurrent":
            require_collecting_meta_architecture(cfg, "MODEL.ROI_MASK_HEAD.NAME = 'TracerMaskHead'")
        channels = input_shape[IMAGE].channels if isinstance(input_shape, dict) else input_shape.channels
        tracer = Tracer(build_tracer_body(cfg, t.BODY, t.CHANNELS, t.CNN_LAYERS, t.CNN_KERNEL_SIZE, t.CELL_BN_STATISTICS),
                        t.CHANNELS, t.FRONT_KERNEL_SIZE, t.STRIDE, in_channels=channels)
        if t.INIT_WEIGHTS:
            load_tracer_weights(tracer, torch.load(t.INIT_WEIGHTS, map_location="cpu", weights_only=True))
        ret = super().from_config(cfg, input_shape)
        ret.update(tracer=tracer, mask_size=2 * cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION, grid=t.GRID,
                   window=t.WINDOW, context=t.CONTEXT, box_dim=t.BOX_DIM,
                   dice_weight=cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT)
        return ret

    @property
    def recurrence(self):
        return self.tracer.recurrence

    def views(self, image: torch.Tensor, boxes: List[torch.Tensor]):
        """What the tracer sees of each box: its window of `image` [B, C, H, W] on the grid, the
        pixels outside the box dimmed ([R, C, G, G]), and the box in the grid's coordinates [R, 4]."""
        boxes_all = torch.cat(boxes).to(image.dtype)
        index = torch.cat([torch.full((len(b), 1), i, dtype=image.dtype, device=image.device) for i, b in enumerate(boxes)])
        windows = roi_windows(boxes_all, self.window, self.context)
        view = self.sample_window(image, torch.cat([index, windows], dim=1))
        scale = self.grid / (windows[:, 2] - windows[:, 0])
        in_grid = (boxes_all - windows[:, :2].repeat(1, 2)) * scale[:, None]
        centres = torch.arange(self.grid, dtype=image.dtype, device=image.device) + 0.5
        inside_x = (centres[None] >= in_grid[:, 0:1]) & (centres[None] <= in_grid[:, 2:3])
        inside_y = (centres[None] >= in_grid[:, 1:2]) & (centres[None] <= in_grid[:, 3:4])
        inside = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
        return torch.where(inside, view, self.box_dim * view), in_grid

    def layers(self, x: Dict[str, torch.Tensor], boxes: List[torch.Tensor]) -> torch.Tensor:
        image = x[IMAGE] if isinstance(x, dict) else x
        if sum(len(b) for b in boxes) == 0:
            side = self.pool_box.output_size[0]
            return image.new_zeros((0, 1, side, side))
        view, in_grid = self.views(image, boxes)
        logits = self.tracer.logits(view)
        rows = torch.arange(len(view), dtype=view.dtype, device=view.device)[:, None]
        return self.pool_box(logits, torch.cat([rows, in_grid], dim=1))

    def forward(self, x, instances: List[Instances]):
        boxes = [(i.proposal_boxes if self.training else i.pred_boxes).tensor for i in instances]
        return self.loss_or_inference(self.layers(x, boxes), instances)


@ROI_HEADS_REGISTRY.register()
class TracerROIHeads(StandardROIHeads):
    """StandardROIHeads whose mask head sees the image ({IMAGE: the model's normalised input
    batch}) in place of pooled features, and is trained on at most `max_train_mask_rois` foreground
    RoIs per image (0: all)."""

    @configurable
    def __init__(self, *, max_train_mask_rois: int = 0, **kwargs):
        super().__init__(**kwargs)
        if max_train_mask_rois < 0:
            raise ValueError(f"max_train_mask_rois must be >= 0, got {max_train_mask_rois}")
        self.max_train_mask_rois = max_train_mask_rois

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["max_train_mask_rois"] = cfg.MODEL.CRBP.TRACER.MAX_TRAIN_ROIS_PER_IMAGE
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        if not cfg.MODEL.MASK_ON:
            return {}
        channels = len(cfg.MODEL.PIXEL_MEAN)
        return {"mask_in_features": [IMAGE], "mask_pooler": None,
                "mask_head": build_mask_head(cfg, {IMAGE: ShapeSpec(channels=channels, stride=1)})}

    @staticmethod
    def features_with_image(images, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The features the heads receive: the backbone's and the normalised input batch (an
        ImageList) as IMAGE; what forward_with_given_boxes needs when called directly."""
        return {**features, IMAGE: images.tensor}

    def forward(self, images, features, proposals, targets=None):
        return super().forward(images, self.features_with_image(images, features), proposals, targets)

    def _forward_mask(self, features, instances):
        if self.training and self.max_train_mask_rois:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            instances = [x[torch.randperm(len(x), device=x.proposal_boxes.device)[:self.max_train_mask_rois]]
                         if len(x) > self.max_train_mask_rois else x for x in instances]
        return super()._forward_mask(features, instances)

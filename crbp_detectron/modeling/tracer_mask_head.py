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

With TRACER.INK_LAYERS > 0 the tracer does not trace the image itself but its ink: an ink net (a few
3 x 3 convs at full resolution) gives every pixel's probability of being a thing's pixel, trained on
the union of the ground-truth thing masks (loss_ink, binary cross-entropy, x INK_LOSS_WEIGHT) and by
the mask loss through the tracer. Why: on a textured colour image the tracer's single squared-conv
front-end must separate a thin contour from the background and group it at once; given the
contours' true pixels the C-RBP tracer groups crossing contours far better than the CNN tracer
(benchmarks/contour_mask_head.py --oracle-ink), so the ink net asks the front-end for exactly that.

TracerROIHeads is StandardROIHeads whose mask head receives the image ({"image": the model's
normalised input}) instead of pooled FPN features (and, in training, the union of the thing masks
for the ink net), and trains on at most TRACER.MAX_TRAIN_ROIS_PER_IMAGE foreground RoIs per image
(one tracer run each).
"""
import contextlib
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from detectron2.config import configurable
from detectron2.layers import ROIAlign, ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, select_foreground_proposals
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead, build_mask_head
from detectron2.structures import BitMasks, Instances, PolygonMasks
from torch import nn

from .mask_loss import MaskLossMixin
from .meta_arch import require_collecting_meta_architecture
from .tracer import Tracer, build_tracer_body, conv_stack, load_tracer_weights

IMAGE = "image"  # the key of the image among the features the mask head receives
THING_PIXELS = "thing_pixels"  # in training: the union of the ground-truth thing masks [B, 1, H, W]


class InkNet(nn.Sequential):
    """image [B, C, H, W] -> one logit per pixel [B, 1, H, W]: is it a thing's pixel. `layers`
    3 x 3 convs with BatchNorm and ReLU at full resolution, then a 1 x 1 conv."""

    def __init__(self, in_channels: int, channels: int = 16, layers: int = 4):
        if layers < 1:
            raise ValueError(f"an ink net needs at least one layer, got {layers}")
        super().__init__(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True), *conv_stack(channels, layers - 1, 3), nn.Conv2d(channels, 1, 1))


@contextlib.contextmanager
def running_statistics_kept(module: nn.Module):
    """BatchNorms in `module` normalise with the batch as in training but leave their running
    statistics (and batch count) as they were: a recomputed forward must not count its batch twice."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kept = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, kept):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def recomputed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x), its activations recomputed in the backward instead of saved (only x is kept);
    exact: the same outputs, gradients and BatchNorm running statistics as module(x)."""
    return torch.utils.checkpoint.checkpoint(
        module, x, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), running_statistics_kept(module)))


def thing_pixels(targets: List[Instances], shape, device=None) -> torch.Tensor:
    """The union of each image's ground-truth thing masks, on the padded batch `shape` (B, C, H, W)
    -> [B, 1, H, W] float on `device` (0 in the padding)."""
    out = torch.zeros((shape[0], 1, shape[2], shape[3]), device=device)
    for i, target in enumerate(targets):
        if not len(target):
            continue
        if not target.has("gt_masks"):
            raise ValueError("the ink net trains on the thing masks: the targets have no gt_masks (MODEL.MASK_ON?)")
        masks = target.gt_masks
        if isinstance(masks, PolygonMasks):
            masks = BitMasks.from_polygon_masks(masks, *target.image_size)
        union = masks.tensor.any(dim=0)
        out[i, 0, :union.shape[0], :union.shape[1]] = union.to(out)
    return out


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
                 context: float = 1.25, box_dim: float = 0.4, dice_weight: float = 0.0,
                 ink_net: Optional[nn.Module] = None, ink_loss_weight: float = 1.0, ink_recompute: bool = True,
                 **kwargs):
        """
        Args:
            tracer: the pixel-level tracer (its in_channels: the image's, or 1 with an ink net).
            mask_size: M, the side of the mask logits per RoI.
            grid, window, context, box_dim: each RoI's window (module docstring).
            dice_weight: weight of a Dice term added to the mask cross-entropy (mask_loss.py).
            ink_net: None (the tracer traces the image) or a module image -> [B, 1, H, W] logits of
                thing pixels (InkNet), whose probability the tracer traces; trained with
                ink_loss_weight x binary cross-entropy against the union of the thing masks.
            ink_recompute: in training, recompute the ink net's activations in the backward
                instead of saving them (`recomputed`: exact; at full resolution they would be most
                of the head's training memory).
            kwargs: BaseMaskRCNNHead's (loss_weight, vis_period).
        """
        super().__init__(**kwargs)
        if not 0 <= box_dim <= 1:
            raise ValueError(f"box_dim must be in [0, 1], got {box_dim}")
        if window <= 0 or context < 1:
            raise ValueError(f"need window > 0 and context >= 1, got {window}, {context}")
        if ink_net is not None and tracer.front.conv.in_channels != 1:
            raise ValueError(f"with an ink net the tracer traces one channel, got in_channels "
                             f"{tracer.front.conv.in_channels}")
        if ink_loss_weight < 0:
            raise ValueError(f"ink_loss_weight must be >= 0, got {ink_loss_weight}")
        self.tracer, self.dice_weight = tracer, dice_weight
        self.ink_net, self.ink_loss_weight, self.ink_recompute = ink_net, ink_loss_weight, ink_recompute
        self.grid, self.window, self.context, self.box_dim = grid, window, context, box_dim
        self.sample_window = ROIAlign((grid, grid), 1.0, 0, aligned=True)
        self.pool_box = ROIAlign((mask_size, mask_size), 1.0, 0, aligned=True)

    @classmethod
    def from_config(cls, cfg, input_shape):
        t = cfg.MODEL.CRBP.TRACER
        if t.BODY == "recurrent":
            require_collecting_meta_architecture(cfg, "MODEL.ROI_MASK_HEAD.NAME = 'TracerMaskHead'")
        channels = input_shape[IMAGE].channels if isinstance(input_shape, dict) else input_shape.channels
        ink_net = InkNet(channels, t.INK_CHANNELS, t.INK_LAYERS) if t.INK_LAYERS else None
        tracer = Tracer(build_tracer_body(cfg, t.BODY, t.CHANNELS, t.CNN_LAYERS, t.CNN_KERNEL_SIZE, t.CELL_BN_STATISTICS),
                        t.CHANNELS, t.FRONT_KERNEL_SIZE, t.STRIDE, in_channels=1 if ink_net else channels)
        if t.INIT_WEIGHTS:
            load_tracer_weights(tracer, torch.load(t.INIT_WEIGHTS, map_location="cpu", weights_only=True))
        ret = super().from_config(cfg, input_shape)
        ret.update(tracer=tracer, mask_size=2 * cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION, grid=t.GRID,
                   window=t.WINDOW, context=t.CONTEXT, box_dim=t.BOX_DIM,
                   dice_weight=cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT, ink_net=ink_net,
                   ink_loss_weight=t.INK_LOSS_WEIGHT, ink_recompute=t.INK_RECOMPUTE)
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

    def layers(self, x: Dict[str, torch.Tensor], boxes: List[torch.Tensor],
               ink_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The mask logits [R, 1, M, M] of the boxes (one list per image of `x`); with an ink net,
        of its `ink_logits` on the images (computed here if not given)."""
        image = x[IMAGE] if isinstance(x, dict) else x
        if self.ink_net is not None:
            image = (self.ink_net(image) if ink_logits is None else ink_logits).sigmoid()
        if sum(len(b) for b in boxes) == 0:
            side = self.pool_box.output_size[0]
            return image.new_zeros((0, 1, side, side))
        view, in_grid = self.views(image, boxes)
        logits = self.tracer.logits(view)
        rows = torch.arange(len(view), dtype=view.dtype, device=view.device)[:, None]
        return self.pool_box(logits, torch.cat([rows, in_grid], dim=1))

    def forward(self, x, instances: List[Instances]):
        boxes = [(i.proposal_boxes if self.training else i.pred_boxes).tensor for i in instances]
        ink_logits = None
        if self.ink_net is not None:
            image = x[IMAGE] if isinstance(x, dict) else x
            recompute = self.ink_recompute and self.training and torch.is_grad_enabled()
            ink_logits = recomputed(self.ink_net, image) if recompute else self.ink_net(image)
        out = self.loss_or_inference(self.layers(x, boxes, ink_logits), instances)
        if self.training and ink_logits is not None:
            if not isinstance(x, dict) or THING_PIXELS not in x:
                raise KeyError(f"TracerMaskHead's ink net trains on the union of the thing masks, features[{THING_PIXELS!r}]"
                               " [B, 1, H, W]: TracerROIHeads gives it (or pass it with the image)")
            target = x[THING_PIXELS].to(ink_logits)
            out["loss_ink"] = self.ink_loss_weight * F.binary_cross_entropy_with_logits(ink_logits, target)
        return out


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
    def features_with_image(images, features: Dict[str, torch.Tensor], targets=None) -> Dict[str, torch.Tensor]:
        """The features the heads receive: the backbone's and the normalised input batch (an
        ImageList) as IMAGE (what forward_with_given_boxes needs when called directly); with
        `targets`, the union of their thing masks as THING_PIXELS (for an ink net)."""
        out = {**features, IMAGE: images.tensor}
        if targets is not None:
            out[THING_PIXELS] = thing_pixels(targets, images.tensor.shape, images.tensor.device)
        return out

    def forward(self, images, features, proposals, targets=None):
        with_ink = self.training and getattr(self.mask_head, "ink_net", None) is not None
        return super().forward(images, self.features_with_image(images, features, targets if with_ink else None),
                               proposals, targets)

    def _forward_mask(self, features, instances):
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            if self.max_train_mask_rois:
                instances = [x[torch.randperm(len(x), device=x.proposal_boxes.device)[:self.max_train_mask_rois]]
                             if len(x) > self.max_train_mask_rois else x for x in instances]
        return self.mask_head({k: features[k] for k in (IMAGE, THING_PIXELS) if k in features}, instances)

"""The mask heads' loss option (MODEL.ROI_MASK_HEAD.DICE_WEIGHT): Detectron2's loss exactly at
weight 0, the Dice term as defined, and the feed-forward twin equal to Detectron2's head."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead, mask_rcnn_loss
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from crbp_detectron.config import ConfigError, load_config
from crbp_detectron.modeling import ConvUpsampleMaskHead
from crbp_detectron.modeling.mask_loss import dice_loss, mask_logits_and_targets, mask_loss


def thin_line_instances(num_classes=3):
    """Two RoIs on a 32 x 32 image with a 2-px line each, boxes around the lines."""
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 10:12, 4:28] = True
    masks[1, 4:28, 20:22] = True
    inst = Instances((32, 32))
    inst.proposal_boxes = Boxes(torch.tensor([[2.0, 6.0, 30.0, 16.0], [16.0, 2.0, 26.0, 30.0]]))
    inst.gt_masks = BitMasks(masks)
    inst.gt_classes = torch.tensor([1, num_classes - 1])
    return [inst]


def test_weight_zero_is_detectron2s_loss_and_dice_adds_its_term():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 14, 14)
    instances = thin_line_instances()
    with EventStorage(0):
        assert torch.equal(mask_loss(logits, instances, 0.0), mask_rcnn_loss(logits, instances))
        selected, targets = mask_logits_and_targets(logits, instances)
        p = selected.sigmoid()
        expected = [1 - (2 * (p[i] * targets[i]).sum() + 1) / (p[i].sum() + targets[i].sum() + 1) for i in range(2)]
        assert torch.allclose(dice_loss(selected, targets), torch.stack(expected).mean())
        assert torch.allclose(mask_loss(logits, instances, 0.5),
                              mask_rcnn_loss(logits, instances) + 0.5 * torch.stack(expected).mean())
    # The selected logits are each RoI's ground-truth class, the targets its mask in the box.
    assert torch.equal(selected, logits[torch.arange(2), torch.tensor([1, 2])])
    assert targets.shape == (2, 14, 14) and targets.sum() > 0


def test_dice_scores_a_confident_thin_mask_over_a_diffuse_one():
    """A 0.9 mask on the line scores far better under Dice than a 0.4 band twice the line's width
    (which thresholds to nothing), and Dice's gradient raises the line and lowers the rest."""
    targets = torch.zeros(1, 20, 20)
    targets[0, 9:11] = 1
    confident = torch.full((1, 20, 20), -4.0)
    confident[0, 9:11] = 2.2  # p ~ 0.9 on the line
    diffuse = torch.full((1, 20, 20), -4.0)
    diffuse[0, 8:12] = -0.4  # p ~ 0.4 over twice the width
    assert dice_loss(confident, targets) < 0.15 < 0.4 < dice_loss(diffuse, targets)
    logits = torch.zeros(1, 20, 20, requires_grad=True)
    dice_loss(logits, targets).backward()
    assert (logits.grad[0, 9:11] < 0).all() and (logits.grad[0, :8] > 0).all()  # up on the line, down off it


def test_feed_forward_twin_equals_detectron2s_head():
    shape = ShapeSpec(channels=8, width=14, height=14)
    args = dict(num_classes=3, conv_dims=[8, 8, 8], conv_norm="")
    torch.manual_seed(0)
    stock = MaskRCNNConvUpsampleHead(shape, **args)
    twin = ConvUpsampleMaskHead(shape, dice_weight=0.0, **args)
    twin.load_state_dict(stock.state_dict())  # same parameters, same names
    x = torch.randn(2, 8, 14, 14)
    with EventStorage(0):
        assert torch.equal(twin(x, thin_line_instances())["loss_mask"], stock(x, thin_line_instances())["loss_mask"])
        twin.dice_weight = 1.0
        assert twin(x, thin_line_instances())["loss_mask"] > stock(x, thin_line_instances())["loss_mask"]
    twin.eval(), stock.eval()
    out_twin, out_stock = Instances((32, 32)), Instances((32, 32))
    for o in (out_twin, out_stock):
        o.pred_classes = torch.tensor([0, 2])
    twin(x, [out_twin]), stock(x, [out_stock])
    assert torch.equal(out_twin.pred_masks, out_stock.pred_masks)


def test_dice_weight_is_read_from_the_config_and_refused_where_unread():
    from detectron2.modeling import build_model

    cfg = load_config("contours/panoptic_fpn_contours.yaml", ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.ROI_MASK_HEAD.NAME == "ConvUpsampleMaskHead" and cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT > 0
    assert build_model(cfg).roi_heads.mask_head.dice_weight == cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT
    crbp = load_config("contours/panoptic_crbp_contours.yaml", ["MODEL.DEVICE", "cpu"])
    assert build_model(crbp).roi_heads.mask_head.dice_weight == crbp.MODEL.ROI_MASK_HEAD.DICE_WEIGHT > 0
    with pytest.raises(ConfigError, match=r"MODEL.ROI_MASK_HEAD.DICE_WEIGHT = 1.0: is read only by the mask heads "
                                          r".*'MaskRCNNConvUpsampleHead'.*use ConvUpsampleMaskHead"):
        load_config("demo/panoptic_fpn_demo.yaml", ["MODEL.ROI_MASK_HEAD.DICE_WEIGHT", 1.0])
    with pytest.raises(ConfigError, match="DICE_WEIGHT = -1.0"):
        load_config("contours/panoptic_fpn_contours.yaml", ["MODEL.ROI_MASK_HEAD.DICE_WEIGHT", -1.0])

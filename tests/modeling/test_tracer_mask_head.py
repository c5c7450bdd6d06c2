"""TracerMaskHead and TracerROIHeads: what the tracer sees of each box, where its logits go, that
a Pathfinder tracer's weights load onto a colour image, and that the head trains inside a
Detectron2 model."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.mask_head import build_mask_head
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

import crbp_detectron  # noqa: F401
from crbp_detectron.config import load_config
from crbp_detectron.crbp import recurrent_blocks
from crbp_detectron.modeling import Tracer, TracerMaskHead, load_tracer_weights
from crbp_detectron.modeling.tracer import build_tracer_body
from crbp_detectron.modeling.tracer_mask_head import IMAGE, THING_PIXELS, InkNet, roi_windows, thing_pixels

from .utils import TINY, synthetic_batch

TRACER = "contours/panoptic_tracer_contours.yaml"
TRACER_CNN = "contours/panoptic_tracer_cnn_contours.yaml"
TRACER_INK = "contours/panoptic_tracer_ink_contours.yaml"
TRACER_CNN_INK = "contours/panoptic_tracer_cnn_ink_contours.yaml"


def head(config=TRACER, opts=()):
    cfg = load_config(config, list(opts))
    return build_mask_head(cfg, {IMAGE: ShapeSpec(channels=3, stride=1)})


def test_windows_are_squares_about_the_box_of_the_window_or_context_times_its_longer_side():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 160.0, 40.0]])
    windows = roi_windows(boxes, window=128.0, context=1.25)
    assert torch.allclose(windows[0], torch.tensor([30 - 64.0, 30 - 64.0, 30 + 64.0, 30 + 64.0]))
    assert torch.allclose(windows[1], torch.tensor([80 - 100.0, 20 - 100.0, 80 + 100.0, 20 + 100.0]))  # 1.25 x 160


def test_view_dims_exactly_what_lies_outside_the_box():
    h = head().eval()
    image = torch.ones(1, 3, 128, 128)
    box = torch.tensor([[40.0, 30.0, 80.0, 94.0]])  # window: [-4, -2, 124, 126] on a 64 grid, 2 px a cell
    view, in_grid = h.views(image, [box])
    assert torch.allclose(in_grid, torch.tensor([[22.0, 16.0, 42.0, 48.0]]))
    centres = torch.arange(64) + 0.5
    inside = ((centres >= 16) & (centres <= 48))[:, None] & ((centres >= 22) & (centres <= 42))[None]
    in_image_x = (centres * 2 - 4 >= 0) & (centres * 2 - 4 <= 128)
    in_image_y = (centres * 2 - 2 >= 0) & (centres * 2 - 2 <= 128)
    in_image = (in_image_y[:, None] & in_image_x[None])
    assert torch.allclose(view[0, 0][inside], torch.ones(int(inside.sum())))
    away = ~inside & in_image
    assert torch.allclose(view[0, 0][away], torch.full((int(away.sum()),), 0.4))


def test_mask_logits_are_the_tracers_logits_on_the_box():
    """A tracer that passes its image through: the head's logits on a linear ramp are the ramp's
    values at the mask grid's cell centres in the box (bilinear resampling is exact on a ramp)."""
    h = head(opts=["MODEL.CRBP.TRACER.BOX_DIM", 1.0]).eval()
    h.tracer.logits = lambda view: view[:, :1]
    ramp = torch.arange(128, dtype=torch.float32)[None].expand(128, 128) + 0.5  # x of each pixel centre
    image = ramp[None, None].expand(1, 3, 128, 128).contiguous()
    box = torch.tensor([[40.0, 30.0, 96.0, 94.0]])
    logits = h.layers({IMAGE: image}, [box])
    side = logits.shape[-1]
    assert side == 2 * load_config(TRACER).MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
    expected = 40.0 + (torch.arange(side) + 0.5) * 56.0 / side
    assert torch.allclose(logits[0, 0], expected[None].expand(side, side), atol=1e-3)


def test_one_channel_tracer_weights_spread_over_the_image_channels():
    """A Pathfinder tracer (one channel) loaded into a three-channel tracer gives, on a grey image,
    exactly the one-channel tracer's logits on its grey level."""
    cfg = load_config(TRACER_CNN)
    torch.manual_seed(0)
    grey = Tracer(build_tracer_body(cfg, "cnn", 16, 2, 3), 16, 7, 2, in_channels=1).eval()
    colour = Tracer(build_tracer_body(cfg, "cnn", 16, 2, 3), 16, 7, 2, in_channels=3).eval()
    with torch.no_grad():  # running statistics that are not the defaults
        for m in grey.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    load_tracer_weights(colour, grey.state_dict())
    level = torch.rand(2, 1, 32, 32)
    assert torch.allclose(colour.logits(level.expand(2, 3, 32, 32)), grey.logits(level), atol=1e-5)
    with pytest.raises(KeyError, match="missing"):
        load_tracer_weights(colour, {k: v for k, v in grey.state_dict().items() if not k.startswith("readout")})


def test_init_weights_load_a_saved_tracer(tmp_path):
    cfg = load_config(TRACER_CNN)
    torch.manual_seed(1)
    saved = Tracer(build_tracer_body(cfg, "cnn", 16, 6, 3), 16, 7, 2, in_channels=1)
    torch.save(saved.state_dict(), tmp_path / "tracer.pth")
    loaded = head(TRACER_CNN, ["MODEL.CRBP.TRACER.INIT_WEIGHTS", str(tmp_path / "tracer.pth")])
    assert torch.allclose(loaded.tracer.front.conv.weight, saved.front.conv.weight.expand(-1, 3, -1, -1) / 3)
    assert torch.equal(loaded.tracer.body[0].weight, saved.body[0].weight)


def tiny_tracer(config=TRACER, extra=()):
    opts = [str(o) for o in TINY] + ["MODEL.ROI_HEADS.NAME", "TracerROIHeads", "MODEL.CRBP.TRACER.GRID", 16,
                                     "MODEL.CRBP.TRACER.WINDOW", 32.0, "MODEL.CRBP.TRACER.CHANNELS", 8]
    return load_config(config, opts + list(extra))


@pytest.mark.parametrize("config", [TRACER, TRACER_CNN, TRACER_INK, TRACER_CNN_INK])
def test_a_panoptic_model_with_the_tracer_head_trains_and_the_gradient_reaches_the_tracer(config):
    model = build_model(tiny_tracer(config))
    assert isinstance(model.roi_heads.mask_head, TracerMaskHead)
    ink_net = model.roi_heads.mask_head.ink_net
    assert (ink_net is not None) == (config in (TRACER_INK, TRACER_CNN_INK))
    model.train()
    with EventStorage():
        losses = model(synthetic_batch())
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert ("loss_ink" in losses) == (ink_net is not None)
    tracer = model.roi_heads.mask_head.tracer
    for name, p in list(tracer.named_parameters()) + list((ink_net or torch.nn.Module()).named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    blocks = recurrent_blocks(model)
    if config in (TRACER, TRACER_INK):
        assert list(blocks) == ["roi_heads.mask_head.tracer.body"]
        assert "loss_penalty/roi_heads.mask_head.tracer.body" in losses
    else:
        assert not blocks
    model.eval()
    with torch.no_grad():
        out = model([{"image": synthetic_batch(1)[0]["image"], "height": 64, "width": 64}])
    inst = out[0]["instances"]
    assert inst.pred_masks.shape[1:] == (64, 64)


def test_training_mask_rois_are_capped_per_image():
    model = build_model(tiny_tracer(extra=["MODEL.CRBP.TRACER.MAX_TRAIN_ROIS_PER_IMAGE", 1]))
    seen = []
    forward = model.roi_heads.mask_head.forward

    def counting(x, instances):
        seen.append([len(i) for i in instances])
        return forward(x, instances)

    model.roi_heads.mask_head.forward = counting
    model.train()
    with EventStorage():
        model(synthetic_batch())
    assert seen == [[1, 1]]  # every image has foreground RoIs (its ground-truth boxes among them)


def test_thing_pixels_are_the_union_of_the_masks_on_the_padded_batch():
    a = Instances((6, 5), gt_masks=BitMasks(torch.zeros(2, 6, 5, dtype=torch.bool)))
    a.gt_masks.tensor[0, 1, 1] = a.gt_masks.tensor[1, 4, 3] = a.gt_masks.tensor[1, 1, 1] = True
    square = [[[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]]]  # polygons: pixels 0..3 in x and y
    b = Instances((7, 8), gt_masks=PolygonMasks(square))
    empty = Instances((7, 8), gt_masks=BitMasks(torch.zeros(0, 7, 8, dtype=torch.bool)))
    union = thing_pixels([a, b, empty], (3, 3, 8, 8))
    assert union.shape == (3, 1, 8, 8)
    expected_a = torch.zeros(8, 8)
    expected_a[1, 1] = expected_a[4, 3] = 1
    assert torch.equal(union[0, 0], expected_a)
    expected_b = torch.zeros(8, 8)
    expected_b[:4, :4] = 1
    assert torch.equal(union[1, 0], expected_b)
    assert not union[2].any()


def test_the_ink_head_traces_the_ink_nets_map_and_needs_the_thing_pixels_in_training():
    h = head(TRACER_INK)
    assert isinstance(h.ink_net, InkNet) and h.tracer.front.conv.in_channels == 1
    h.eval()
    image = torch.randn(1, 3, 64, 64)
    box = torch.tensor([[10.0, 12.0, 50.0, 40.0]])
    seen = []
    logits = h.tracer.logits
    h.tracer.logits = lambda view: seen.append(view) or logits(view)
    with torch.no_grad():
        h.layers({IMAGE: image}, [box])
        ink = h.ink_net(image).sigmoid()
    expected, _ = h.views(ink, [box])
    assert torch.allclose(seen[0], expected)
    h.train()
    proposals = Instances((64, 64), proposal_boxes=Boxes(box), gt_classes=torch.tensor([0]),
                          gt_masks=BitMasks(torch.ones(1, 64, 64, dtype=torch.bool)))
    with EventStorage(), pytest.raises(KeyError, match=THING_PIXELS):
        h({IMAGE: image}, [proposals])


def test_the_recomputed_ink_net_is_exact_and_saves_only_its_input():
    """INK_RECOMPUTE: the same loss, gradients and BatchNorm running statistics as the ink net run
    normally, and the bytes saved for the backward drop to about the image's."""
    from crbp_detectron.crbp.memory import saved_bytes

    image = torch.randn(2, 3, 64, 64)
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 40.0]]), torch.tensor([[5.0, 5.0, 30.0, 60.0]])]
    target = (torch.rand(2, 1, 64, 64) > 0.8).float()
    proposals = [Instances((64, 64), proposal_boxes=Boxes(b), gt_classes=torch.tensor([0]),
                           gt_masks=BitMasks(torch.rand(1, 64, 64) > 0.5)) for b in boxes]
    runs = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        h = head(TRACER_CNN_INK, ["MODEL.CRBP.TRACER.INK_RECOMPUTE", recompute]).train()
        with EventStorage():
            nbytes, losses = saved_bytes(lambda: h({IMAGE: image, THING_PIXELS: target}, proposals),
                                         exclude=list(h.parameters()))
        sum(losses.values()).backward()
        runs[recompute] = (nbytes, losses, {n: p.grad.clone() for n, p in h.named_parameters()},
                           {n: b.clone() for n, b in h.ink_net.named_buffers()})
    (plain_bytes, plain, plain_grads, plain_stats), (bytes_, same, grads, stats) = runs[False], runs[True]
    for k in plain:
        assert torch.allclose(plain[k], same[k], atol=1e-6), k
    for n in plain_grads:
        assert torch.allclose(plain_grads[n], grads[n], atol=1e-5, rtol=1e-4), n
    for n in plain_stats:  # counted once, not again by the recomputation
        assert torch.equal(plain_stats[n], stats[n]), n
    ink_activations = 4 * 16 * image[:, :1].numel() * 4  # four 16-channel maps at full resolution, float32
    assert plain_bytes - bytes_ > ink_activations

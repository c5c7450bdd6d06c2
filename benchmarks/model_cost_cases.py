"""The models, inputs and measurements of `benchmarks.model_cost` (whole Panoptic FPN R-50).

Every model is built from a config with random weights (MODEL.WEIGHTS ""): memory, FLOPs and time
do not depend on the weights, except where a per-sample early stop makes the number of recurrent
steps depend on the data (that row says so).

How the number of RoIs is forced:
  training   the mask head sees the foreground proposals the RoI heads sample: at most
             BATCH_SIZE_PER_IMAGE (512) x POSITIVE_FRACTION of them, and the ground-truth boxes are
             always among the candidates (PROPOSAL_APPEND_GT). With N ground-truth boxes and
             POSITIVE_FRACTION = N / 512 exactly N RoIs reach the mask head (checked by a hook).
  inference  the RPN's and the box predictor's output layers are zeroed (force_detections): every
             anchor becomes a proposal with the same score (with random weights the features
             reach ~1e4, the box deltas saturate, and NMS merged the clipped boxes into one to six
             proposals), every class scores 1/(C+1); SCORE_THRESH_TEST 0 and NMS_THRESH_TEST 1
             keep every (proposal, class) candidate and TEST.DETECTIONS_PER_IMAGE = K keeps K:
             the mask head runs on K RoIs (checked). The FLOPs of a layer do not depend on its
             weights, so zeroing them changes which boxes are kept, not what they cost.
"""
import time
from typing import Dict, List, Optional, Tuple

import torch

from crbp_detectron.crbp.memory import saved_bytes_by

from .memory import release_memory
from .methods import Case
from .timing import median, time_interleaved

FACTORY = "benchmarks.model_cost_cases:build_train_case"
FEED_FORWARD = "model_zoo:COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
HEADLINE = "COCO-PanopticSegmentation/panoptic_crbp_R_50_1x.yaml"
RECURRENT_FPN = "COCO-PanopticSegmentation/panoptic_crbp_fpn_R_50_1x.yaml"
NARROW_STATE = "COCO-PanopticSegmentation/panoptic_crbp_state64_R_50_1x.yaml"


def _crbp(steps, implicit_step="recompute"):
    return (HEADLINE, ["MODEL.CRBP.STEPS", steps, "MODEL.CRBP.IMPLICIT_STEP", implicit_step])


TRAIN_CONFIGS: Dict[str, Tuple[str, list]] = {
    "feed-forward (model zoo)": (FEED_FORWARD, []),
    **{f"crbp-{n}": _crbp(n) for n in (5, 10, 20, 40)},
    **{f"crbp-{n} (recorded step)": _crbp(n, "recorded") for n in (5, 10, 20, 40)},
    # The backward solver's vectors: GMRES keeps min(RESTART, MAX_VJPS) + 1, Neumann 3.
    "crbp-20, GMRES restart 5": (HEADLINE, _crbp(20)[1] + ["MODEL.CRBP.BACKWARD.RESTART", 5]),
    "crbp-20, Neumann backward": (HEADLINE, _crbp(20)[1] + ["MODEL.CRBP.BACKWARD.SOLVER", "neumann"]),
    # The implicit step 4 RoIs at a time (MODEL.CRBP.IMPLICIT_CHUNK): the backward's peak holds one
    # chunk's graph; the same gradients.
    "crbp-20, implicit step in chunks of 4": (HEADLINE, _crbp(20)[1] + ["MODEL.CRBP.IMPLICIT_CHUNK", 4]),
    "bptt-5": (HEADLINE, ["MODEL.CRBP.MODE", "bptt", "MODEL.CRBP.STEPS", 5]),
    "bptt-20": (HEADLINE, ["MODEL.CRBP.MODE", "bptt", "MODEL.CRBP.STEPS", 20]),
    "crbp-20 + recurrent FPN": (RECURRENT_FPN, []),
    "crbp-20, 64-channel state": (NARROW_STATE, ["MODEL.CRBP.STEPS", 20]),
}
# Inference runs `test_steps` graph-free iterations whatever the training mode: one row per count.
INFER_CONFIGS: Dict[str, Tuple[str, list]] = {
    "feed-forward (model zoo)": (FEED_FORWARD, []),
    "recurrent, 3 steps": (HEADLINE, ["MODEL.CRBP.STEPS", 3]),  # the demo's per-sample stop at TOL 0.05
    "recurrent, 5 steps": (HEADLINE, ["MODEL.CRBP.STEPS", 5]),
    "recurrent, 20 steps": (HEADLINE, ["MODEL.CRBP.STEPS", 20]),
    "recurrent, 20 steps, 64-channel state": (NARROW_STATE, ["MODEL.CRBP.STEPS", 20]),
    "recurrent, <= 20 steps, per-sample stop": (HEADLINE, ["MODEL.CRBP.STEPS", 20]),  # + TOL (option)
    "recurrent, 20 steps + recurrent FPN": (RECURRENT_FPN, []),
}
EARLY_STOP = "recurrent, <= 20 steps, per-sample stop"
EXPENSIVE = ("recurrent, 20 steps + recurrent FPN",)  # at 800x1333 on a CPU: one detection count, one run
OWNERS = ("backbone", "proposal_generator", "roi_heads.box_head", "roi_heads.box_predictor",
          "roi_heads.mask_head", "sem_seg_head")


def build(config: str, opts: list, device: str, train: bool):
    from detectron2.modeling import build_model

    import crbp_detectron  # noqa: F401  (registers the components)
    from crbp_detectron.config import load_config

    cfg = load_config(config, ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""] + list(opts))
    torch.manual_seed(0)
    return build_model(cfg).train(train), cfg


def train_batch(rois: int, size: int, device: str, seed: int = 0) -> List[dict]:
    """One image with `rois` random ground-truth boxes (their masks: the boxes) and a stuff map."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(rois, 2, generator=g) * size * 0.75
    wh = torch.rand(rois, 2, generator=g) * size * 0.2 + 8
    boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1)
    masks = torch.zeros(rois, size, size, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        masks[i, y0:y1, x0:x1] = True
    inst = Instances((size, size))
    inst.gt_boxes, inst.gt_masks = Boxes(boxes), BitMasks(masks)
    inst.gt_classes = torch.randint(0, 80, (rois,), generator=g)
    image = torch.randint(0, 256, (3, size, size), generator=g).float()
    sem = torch.randint(0, 54, (size, size), generator=g)
    return [{"image": image.to(device), "instances": inst.to(device), "sem_seg": sem.to(device),
             "height": size, "width": size}]


class OwnerTracker:
    """Which of OWNERS is running now (forward hooks), for a split of the saved bytes, and the
    number of RoIs the mask head saw."""

    def __init__(self, model):
        self.stack, self.rois = [], []
        modules = dict(model.named_modules())
        for name in OWNERS:
            if name in modules:
                modules[name].register_forward_pre_hook(lambda _m, args, name=name: self._enter(name, args))
                modules[name].register_forward_hook(lambda *_: self._exit())

    def _enter(self, name, args):
        self.stack.append(name)
        if name == "roi_heads.mask_head":
            self.rois.append(int(args[0].shape[0]))

    def _exit(self):
        self.stack.pop()  # returns None: a forward hook's return value would replace the output

    def owner(self) -> str:
        return self.stack[-1] if self.stack else "other (losses, RoI pooling, ...)"


def set_recurrent_steps(model, steps: Optional[int]):
    """A warm-up at 1 step and 1 VJP (same shapes and kernels as the measured step)."""
    from crbp_detectron.crbp import recurrent_blocks

    if steps is None:
        return
    for block in recurrent_blocks(model).values():
        block.steps = steps
        block.backward_config = type(block.backward_config)(**{**block.backward_config.__dict__, "max_vjps": 1})


def build_train_case(case) -> Case:
    """One training step (forward, summed losses, backward) of case["config"] with case["rois"]
    RoIs on a case["size"]^2 image; its report() gives saved bytes (split by module) and RoIs."""
    from detectron2.utils.events import EventStorage

    config, opts = TRAIN_CONFIGS[case["config"]]
    rois, device = case["rois"], case.get("device", "cpu")
    model, _ = build(config, opts + ["MODEL.ROI_HEADS.POSITIVE_FRACTION", rois / 512], device, train=True)
    set_recurrent_steps(model, case.get("steps"))
    batch = train_batch(rois, case["size"], device)
    tracker = OwnerTracker(model)
    params = [p for p in model.parameters()]
    result = {}

    def forward():
        with EventStorage():
            losses = model(batch)
        return sum(losses.values())

    def step():
        for p in params:
            p.grad = None
        tracker.rois.clear()
        t0 = time.perf_counter()
        total, by, loss = saved_bytes_by(forward, exclude=params + [batch[0]["image"]], owner=tracker.owner)
        loss.backward()
        result.update(saved_bytes=total, saved_by_module=by, rois_seen=list(tracker.rois),
                      seconds=time.perf_counter() - t0)

    return Case(step=step, forward=forward, inputs=params, report=lambda: dict(result))


def infer_inputs(size: Tuple[int, int], device: str, seed: int = 0) -> List[dict]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3,) + tuple(size), generator=g).float().to(device)
    return [{"image": image, "height": size[0], "width": size[1]}]


def infer_opts(detections: int, tol: float, name: str) -> list:
    opts = ["TEST.DETECTIONS_PER_IMAGE", detections, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
            "MODEL.ROI_HEADS.NMS_THRESH_TEST", 1.0]
    return opts + (["MODEL.CRBP.TOL", tol] if name == EARLY_STOP else [])


def force_detections(model):
    """Zero the RPN head's objectness and box-delta layers and the box predictor's class and box
    layers (see the module's docstring): proposals are the anchors, all candidates tie."""
    rpn, predictor = model.proposal_generator.rpn_head, model.roi_heads.box_predictor
    with torch.no_grad():
        for layer in (rpn.objectness_logits, rpn.anchor_deltas, predictor.cls_score, predictor.bbox_pred):
            layer.weight.zero_()
            layer.bias.zero_()
    return model


def flop_count(model, inputs) -> Tuple[float, float]:
    """(total, mask head) FLOPs by fvcore through Detectron2's FlopCountAnalysis (one multiply-add
    = one flop, fvcore's convention)."""
    from detectron2.utils.analysis import FlopCountAnalysis

    with torch.no_grad():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        total, by_module = analysis.total(), analysis.by_module()
    return float(total), float(by_module.get("model.roi_heads.mask_head", 0.0))  # under the TracingAdapter


def measure_inference(names: List[str], size: Tuple[int, int], detections: int, repeats: int, device: str,
                      tol: float) -> Dict[str, dict]:
    """FLOPs and wall time (round-robin, paired with the feed-forward model) of each named
    inference config at one image size and detection count; the models are freed afterwards."""
    inputs = infer_inputs(size, device)
    models, rows = {}, {}
    for name in names:
        config, opts = INFER_CONFIGS[name]
        model, _ = build(config, opts + infer_opts(detections, tol, name), device, train=False)
        force_detections(model)
        tracker = OwnerTracker(model)
        flops, mask_flops = flop_count(model, inputs)
        rows[name] = {"flops": flops, "mask_head_flops": mask_flops, "rois_seen": list(tracker.rois)}
        summary = (getattr(model, "last_recurrence", None) or {}).get("roi_heads.mask_head")
        if summary is not None and summary.stats:  # iterations per RoI in the traced run
            stats = summary.stats[-1]
            rows[name]["mean_steps"] = stats.mean_steps if stats.mean_steps is not None else stats.steps
        models[name] = model

    def run(model):
        def call():
            with torch.no_grad():
                model(inputs)
        return call

    times = time_interleaved({n: run(m) for n, m in models.items()}, repeats, warmup=0, device=device)
    for name, ts in times.items():
        rows[name].update(time=median(ts), times=ts)
    models.clear()
    release_memory(device)
    return rows

"""The fpn workload of the recurrence benchmark (GPU only): the full Panoptic FPN R-50 with the
recurrent FPN and mask head, built from crbp_detectron's configs with random weights, every
recurrent block set to the method and N, on a synthetic 800x1333 batch: memory and time only."""
import torch

from .methods import PENALIZED, Case
from .workloads import FPN_CONFIG


def build_panoptic_crbp_fpn(device: str, method: str, steps: int, neumann_steps: int = 15):
    """The full Panoptic FPN R-50 with the recurrent FPN (and the recurrent mask head), built from
    crbp_detectron's configs, its recurrent blocks set to `method` and `steps`.

    Weights are random (MODEL.WEIGHTS ""): memory and time only.
    """
    from detectron2.modeling import build_model

    import crbp_detectron  # noqa: F401  (registers the components)
    from crbp_detectron.config import load_config

    cfg = load_config(FPN_CONFIG, ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "",
                                   "MODEL.CRBP.BACKWARD.SOLVER", "neumann",
                                   "MODEL.CRBP.BACKWARD.MAX_VJPS", neumann_steps + 1, "MODEL.CRBP.BACKWARD.TOL", 0.0])
    model = build_model(cfg)
    set_blocks(model, method, steps)
    model.train()
    return model, cfg


def set_blocks(model, method: str, steps: int):
    """Every Recurrence block of `model` to `method` (one of ours) and `steps`."""
    from crbp_detectron.crbp import recurrent_blocks

    blocks = recurrent_blocks(model)
    for block in blocks.values():
        if not hasattr(block, "_bench_penalty"):
            block._bench_penalty = block.penalty  # the config's penalty, for crbp/cbptt
        block.mode = method
        block.steps = steps
        block.penalty = block._bench_penalty if method in PENALIZED else "none"
    return blocks


def synthetic_panoptic_batch(cfg, device, images=2, height=800, width=1333, instances=8, seed=0):
    """Random images with random boxes, masks, classes and a random semantic map."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(images):
        x0 = torch.randint(0, width // 2, (instances,), generator=g).float()
        y0 = torch.randint(0, height // 2, (instances,), generator=g).float()
        w = torch.randint(32, width // 2, (instances,), generator=g).float()
        h = torch.randint(32, height // 2, (instances,), generator=g).float()
        boxes = torch.stack([x0, y0, x0 + w, y0 + h], dim=1)
        masks = torch.zeros(instances, height, width, dtype=torch.bool)
        for i, (a, b, c, d) in enumerate(boxes.long().tolist()):
            masks[i, b:d, a:c] = True
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, (instances,), generator=g)
        inst.gt_masks = BitMasks(masks)
        batch.append({
            "image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8),
            "height": height, "width": width, "instances": inst,
            "sem_seg": torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (height, width), generator=g),
        })
    return batch


def fpn_case(device: str, method: str, steps: int, neumann_steps: int, cache: dict) -> Case:
    if "model" not in cache:
        cache["model"], cache["cfg"] = build_panoptic_crbp_fpn(device, method, steps, neumann_steps)
        cache["batch"] = synthetic_panoptic_batch(cache["cfg"], device)
    from detectron2.utils.events import EventStorage

    model, batch = cache["model"], cache["batch"]
    params = [p for p in model.parameters() if p.requires_grad]

    def forward():
        set_blocks(model, method, steps)  # the model is shared by the methods: set them per call
        with EventStorage(0):  # Detectron2's training forward logs into an event storage
            return model(batch)

    def step():
        set_blocks(model, method, steps)
        for p in params:
            p.grad = None
        with EventStorage(0):
            losses = model(batch)
        sum(losses.values()).backward()

    return Case(step=step, forward=forward, inputs=params)


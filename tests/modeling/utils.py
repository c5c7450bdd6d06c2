"""Tiny CPU versions of the configs, and a synthetic panoptic batch, for fast model tests."""
import torch
from detectron2.structures import BitMasks, Boxes, Instances

# Shrinks any Panoptic FPN / Mask R-CNN config to seconds on a CPU: ResNet-18 from scratch with
# BN, 32-channel FPN (so the recurrent cells are 32 channels, GroupNorm with 8 groups), few RoIs.
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.NORM", "BN",
    "MODEL.BACKBONE.FREEZE_AT", 0,
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64, "MODEL.ROI_MASK_HEAD.CONV_DIM", 32,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 32, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3,
    "MODEL.CRBP.CELL.NUM_GROUPS", 8,
    "MODEL.CRBP.STEPS", 3,
    "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
]


def tiny_demo_opts():
    """TINY for the embedded demo data: its thing classes, and its stuff classes + "things"."""
    from crbp_detectron.data.demo import STUFF, THINGS

    opts = [str(o) for o in TINY]
    for key, value in (("MODEL.ROI_HEADS.NUM_CLASSES", len(THINGS)), ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", len(STUFF) + 1)):
        opts[opts.index(key) + 1] = str(value)
    return opts


def synthetic_batch(num_images=2, size=64, num_classes=3, seed=0):
    """Images with a few random boxes, their masks and a semantic map (stuff classes 0..2)."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 255, (3, size, size), generator=g).float()
        boxes, masks = [], []
        for _ in range(2):
            x0, y0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            w, h = torch.randint(size // 4, size // 2, (2,), generator=g).tolist()
            boxes.append([x0, y0, x0 + w, y0 + h])
            m = torch.zeros(size, size, dtype=torch.bool)
            m[y0:y0 + h, x0:x0 + w] = True
            masks.append(m)
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.randint(0, num_classes, (2,), generator=g)
        inst.gt_masks = BitMasks(torch.stack(masks))
        sem = torch.randint(0, 3, (size, size), generator=g)
        batch.append({"image": image, "instances": inst, "sem_seg": sem, "height": size, "width": size})
    return batch

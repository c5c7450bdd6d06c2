"""The demo model learns through its recurrent blocks: a short training run on the embedded demo
data lowers the loss and reaches a PQ that a model whose C-RBP gradient is broken does not.

Calibration (60 iterations, this configuration, demo data v4 at 64 px, CPU): PQ 16.9 (PQ_st 45.0)
with the C-RBP gradient; PQ 0.0 (PQ_st 0.0) with the RBP gradient zeroed (the backward solve's
solution replaced by zeros; v3 data: 16.9 against 0.6), which starves the backbone, since every head's gradient passes through
the recurrent FPN blocks. The threshold sits between the two with margin on both sides.
"""
import json

import torch
from detectron2.engine import HookBase

import crbp_detectron  # noqa: F401
from crbp_detectron.config import load_config
from crbp_detectron.data.demo import DemoParams, register_demo_datasets
from crbp_detectron.engine import Trainer

from .modeling.utils import tiny_demo_opts

ITERATIONS = 60
PQ_THRESHOLD = 8.0
DATA = DemoParams(train_images=200, val_images=24, image_size=64, min_object_size=12, max_object_size=30)


class LossLog(HookBase):
    def __init__(self):
        self.losses = []

    def after_step(self):
        self.losses.append(self.trainer.storage.latest()["total_loss"][0])


def test_demo_model_learns_through_its_recurrent_blocks(tmp_path):
    register_demo_datasets(str(tmp_path / "data"), DATA, progress=False)
    opts = tiny_demo_opts()
    opts += ["MODEL.BACKBONE.NAME", "build_resnet_crbp_fpn_backbone", "MODEL.CRBP.STEPS", "6",
             "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
             "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
             "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.BASE_LR", "0.02",
             "SOLVER.WARMUP_ITERS", "20", "SOLVER.STEPS", f"({int(ITERATIONS * 0.8)},)",
             "SOLVER.MAX_ITER", str(ITERATIONS), "SOLVER.CHECKPOINT_PERIOD", "100000",
             "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.5",
             "OUTPUT_DIR", str(tmp_path / "out"), "SEED", "0"]
    cfg = load_config("demo/panoptic_crbp_demo.yaml", opts)
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    log = LossLog()
    trainer.register_hooks([log])
    trainer.resume_or_load(resume=False)
    trainer.train()

    first, last = sum(log.losses[:10]) / 10, sum(log.losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    results = Trainer.test(cfg, trainer.model)["panoptic_seg"]
    assert results["PQ"] > PQ_THRESHOLD, json.dumps(results)
    # The FPN's recurrent blocks reached a finite, logged state.
    metrics = [json.loads(line) for line in open(tmp_path / "out" / "metrics.json")]
    assert any("crbp/backbone.fpn_output2/backward_vjps" in m for m in metrics)

# LazyConfig of panoptic_crbp_R_101_3x.yaml: C-RBP, 20 steps, R-101, 3x schedule.
from detectron2 import model_zoo

from .panoptic_crbp_R_50_1x import dataloader, model, optimizer, train

lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_3x
model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.max_iter = 270000

# LazyConfig of panoptic_crbp_R_50_1x.yaml, the paper's model: Detectron2's model-zoo Panoptic
# FPN R-50 1x (its LazyConfig) with the C-RBP mask head (20 steps).
#   python tools/lazyconfig_train_net.py --config-file COCO-PanopticSegmentation/panoptic_crbp_R_50_1x.py
from detectron2 import model_zoo

from ..common.crbp import use_crbp

_zoo = use_crbp(model_zoo.get_config("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py"))
model, dataloader, optimizer, lr_multiplier, train = (
    _zoo.model, _zoo.dataloader, _zoo.optimizer, _zoo.lr_multiplier, _zoo.train)

# LazyConfig of panoptic_crbp_fpn_R_50_1x.yaml: recurrence in the FPN's output stages (P2-P5,
# one hGRU each, C-RBP) as well as in the mask head.
from crbp_detectron.modeling.fpn import CRBPFPN

from ..common.crbp import cell as _cell
from ..common.crbp import recurrence as _recurrence
from .panoptic_crbp_R_50_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone._target_ = CRBPFPN
model.backbone.recurrent_levels = ["p2", "p3", "p4", "p5"]
model.backbone.share_cell = False
model.backbone.cell_kwargs = _cell
model.backbone.recurrence_kwargs = _recurrence

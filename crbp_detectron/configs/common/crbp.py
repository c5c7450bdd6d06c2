"""LazyConfig parts of the C-RBP models (Detectron2's LazyConfig style, `LazyCall` of our
@configurable components). The values are those of the YAML configs' MODEL.CRBP defaults
(`crbp_detectron.config.add_crbp_config`); tests/test_lazyconfig.py checks that the models built
from the .py and the .yaml configs are the same."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from crbp_detectron.evaluation import has_compiled_ops
from crbp_detectron.modeling import CRBPMaskHead
from crbp_detectron.modeling.blocks import build_recurrence

# How every recurrent block trains: C-RBP, 20 steps, 15 VJPs in the backward solve, LCP lambda
# 0.95 summed with weight 0.001 (the paper's COCO model). Arguments of crbp_detectron.crbp.Recurrence.
recurrence = dict(
    mode="crbp", steps=20, test_steps=None, tol=0.0, implicit_step="recompute", implicit_chunk=0,
    forward_solver="plain", forward_window=5, forward_beta=1.0, forward_ridge=1e-6, forward_compile=False,
    backward_solver="gmres", backward_max_vjps=15, backward_tol=1e-10, backward_restart=20,
    divergence_window=100, divergence_growth_bound=1e6, penalty="lcp", lcp_lambda=0.95,
    penalty_reduction="sum", penalty_weight=0.001, hutchinson_samples=1,
)
# The COCO hGRU: 3x3 kernels, GALA gate, GroupNorm(32), softplus. Arguments of
# crbp_detectron.modeling.blocks.build_cell; its `timesteps` (the gate-bias init) are left to
# build_recurrence, which takes the recurrence's steps: an override such as
# `model.roi_heads.mask_head.recurrence.steps=10` gives the 10-step YAML model.
cell = dict(
    cell_type="hgru", kernel_size=3, norm="GN", num_groups=32, gate="gala", nonlinearity="softplus",
    inhibition_eta=False, excitation="simple", output_eta=False, update_gate_init="chrono",
)

# The published C-RBP mask head: one hGRU on the 14x14 RoI features, BN, deconv, predictor.
mask_head = L(CRBPMaskHead)(
    input_shape=ShapeSpec(channels=256, width=14, height=14),
    num_classes="${..num_classes}",
    recurrence=L(build_recurrence)(channels=256, cell_kwargs=cell, **recurrence),
    output_norm="BN",
    deconv_dim=256,
)


def use_crbp(cfg):
    """Turns the LazyConfig of Detectron2's model-zoo Panoptic FPN (its `model` and `dataloader`)
    into the C-RBP Panoptic FPN: the meta-architecture that collects the blocks' penalties and
    statistics, the recurrent mask head, and COCO evaluation that runs without compiled ops."""
    from crbp_detectron.modeling import CRBPPanopticFPN

    cfg.model._target_ = CRBPPanopticFPN
    cfg.model.max_consecutive_divergences = 0
    cfg.model.roi_heads.mask_head = mask_head
    for evaluator in cfg.dataloader.evaluator:
        if evaluator._target_.__name__ == "COCOEvaluator":
            evaluator.use_fast_impl = L(has_compiled_ops)()
    return cfg

"""Meta-architectures that add every recurrent block's penalty to the loss dict and log every
block's dynamics to Detectron2's EventStorage, through the core's one collection mechanism."""
from typing import Dict

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, PanopticFPN
from detectron2.utils.events import get_event_storage

from ..crbp import collect_recurrence, penalty_losses, summary_scalars


# Detectron2's meta-architectures and their C-RBP counterparts (which collect the blocks' penalties).
CRBP_META_ARCHITECTURES = {"PanopticFPN": "CRBPPanopticFPN", "GeneralizedRCNN": "CRBPGeneralizedRCNN"}


def require_collecting_meta_architecture(cfg, component: str):
    """Raises ConfigError at build time when a recurrent component is configured inside a
    meta-architecture that does not collect recurrent blocks' penalties (not a RecurrenceLossMixin):
    it would train without the contraction penalty and fail only after MAX_PENDING_RECORDS steps."""
    from ..config import ConfigError

    name = cfg.MODEL.META_ARCHITECTURE
    if name not in META_ARCH_REGISTRY:  # Detectron2 names an unknown architecture itself
        return
    architecture = META_ARCH_REGISTRY.get(name)
    if isinstance(architecture, type) and issubclass(architecture, RecurrenceLossMixin):
        return
    instead = CRBP_META_ARCHITECTURES.get(name)
    use = (f"use MODEL.META_ARCHITECTURE {instead!r}" if instead else
           f"use one of {sorted(set(CRBP_META_ARCHITECTURES.values()))}, or a meta-architecture that has "
           "crbp_detectron.modeling.RecurrenceLossMixin first among its bases")
    raise ConfigError(f"MODEL.META_ARCHITECTURE = {name!r} with {component}: {name} does not add the recurrent "
                      f"block's contraction penalty to the loss nor log its statistics; {use}")


class RecurrentBlockDivergence(FloatingPointError):
    """A recurrent block's backward solve diverged too many backward passes in a row."""


class RecurrenceLossMixin:
    """Put first among a meta-architecture's bases. After the parent's forward it takes each
    recurrent block's records (wherever the block sits), adds the penalty loss entries in training,
    logs the statistics, and stops training if a block keeps diverging."""

    last_recurrence = None  # {block name: BlockSummary} of the latest forward, for tools

    @configurable
    def __init__(self, *, max_consecutive_divergences: int = 0, **kwargs):
        """max_consecutive_divergences: stop after this many backward passes in a row in which a
        block's backward solve diverged (0: never). Other arguments: the parent's."""
        super().__init__(**kwargs)
        self.max_consecutive_divergences = max_consecutive_divergences

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["max_consecutive_divergences"] = cfg.MODEL.CRBP.MAX_CONSECUTIVE_DIVERGENCES
        return ret

    def forward(self, batched_inputs):
        out = super().forward(batched_inputs)
        extra = self._recurrence_outputs()
        if self.training:
            out.update(extra)
        return out

    def _recurrence_outputs(self) -> Dict:
        summaries = collect_recurrence(self)
        self.last_recurrence = summaries
        if self.training:
            try:
                storage = get_event_storage()
            except AssertionError:  # no EventStorage outside a trainer
                storage = None
            if storage is not None:  # before the divergence check: the count that stops a run is logged
                storage.put_scalars(**summary_scalars(summaries), smoothing_hint=False)
        self._check_divergence(summaries)
        return penalty_losses(summaries)

    def _check_divergence(self, summaries):
        limit = self.max_consecutive_divergences
        for name, s in summaries.items():
            if limit and s.consecutive_divergences >= limit:
                raise RecurrentBlockDivergence(
                    f"Recurrent block '{name}': its backward solve diverged in "
                    f"{s.consecutive_divergences} consecutive backward passes "
                    f"(MODEL.CRBP.MAX_CONSECUTIVE_DIVERGENCES = {limit}); the block is not "
                    "contractive at its fixed point. Raise MODEL.CRBP.PENALTY_WEIGHT, lower "
                    "MODEL.CRBP.LCP_LAMBDA, use MODEL.CRBP.PENALTY 'lcp' with MODE 'crbp', or "
                    "change MODEL.CRBP.STEPS / the learning rate.")


@META_ARCH_REGISTRY.register()
class CRBPPanopticFPN(RecurrenceLossMixin, PanopticFPN):
    """Panoptic FPN whose recurrent blocks (mask head, FPN, any other) are trained with C-RBP."""


@META_ARCH_REGISTRY.register()
class CRBPGeneralizedRCNN(RecurrenceLossMixin, GeneralizedRCNN):
    """Mask R-CNN (GeneralizedRCNN) with the same collection of recurrent penalties and stats."""

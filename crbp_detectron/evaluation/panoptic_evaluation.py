"""Evaluators by dataset type, as Detectron2's own train_net chooses them, with PQ per class."""
import json
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators, SemSegEvaluator


def has_compiled_ops() -> bool:
    """True when detectron2's compiled extension is installed (not the pure-Python stand-in)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "IS_STANDIN", False)


class PanopticEvaluatorPerClass(COCOPanopticEvaluator):
    """Detectron2's COCO panoptic evaluator, whose results also hold PQ per category
    (`PQ/<category name>`). panopticapi's pq_compute returns them; Detectron2 0.6 drops them, so
    its call is wrapped for the duration of `evaluate` and the full result kept."""

    def evaluate(self):
        import panopticapi.evaluation as panoptic_evaluation

        compute, full = panoptic_evaluation.pq_compute, {}

        def pq_compute_keeping_classes(*args, **kwargs):
            full.update(compute(*args, **kwargs))
            return full

        panoptic_evaluation.pq_compute = pq_compute_keeping_classes
        try:
            results = super().evaluate()
        finally:
            panoptic_evaluation.pq_compute = compute
        if results is None:  # not the main process
            return results
        with open(self._metadata.panoptic_json) as f:
            names = {c["id"]: c["name"] for c in json.load(f)["categories"]}
        for category_id, metrics in sorted(full.get("per_class", {}).items()):
            results["panoptic_seg"][f"PQ/{names.get(category_id, category_id)}"] = 100 * metrics["pq"]
        return results


def build_evaluator(cfg, dataset_name: str, output_folder: str = None):
    """Evaluators by the dataset's evaluator_type, as Detectron2's own train_net does; COCO's
    fast evaluation needs compiled ops, so it is used only when they are there."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
    evaluators = []
    if evaluator_type in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=has_compiled_ops()))
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(PanopticEvaluatorPerClass(dataset_name, output_folder))
    if not evaluators:
        raise NotImplementedError(f"no evaluator for dataset {dataset_name!r} with evaluator_type {evaluator_type!r}")
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


def final_panoptic_metrics(metrics_json: str) -> dict:
    """The last entry of a training run's metrics.json (Detectron2's JSONWriter) that holds
    panoptic evaluation results."""
    last = None
    with open(metrics_json) as f:
        for line in f:
            entry = json.loads(line)
            if "panoptic_seg/PQ" in entry:
                last = entry
    if last is None:
        raise RuntimeError(f"{metrics_json}: no panoptic evaluation results")
    return last

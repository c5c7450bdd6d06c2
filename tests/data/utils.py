import json
import os

import torch

from crbp_detectron.data.coco_panoptic import read_panoptic_png


def ground_truth_pq(dataset_name, panoptic_json, panoptic_root, out_dir, drop_category=None):
    """Feeds the ground truth of a registered separated dataset as the prediction through
    the project's panoptic evaluator (Detectron2's COCOPanopticEvaluator, panopticapi, plus PQ per
    class); returns its panoptic_seg results. `drop_category`: a dataset category id whose segments
    are left out of the prediction."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from crbp_detectron.evaluation import PanopticEvaluatorPerClass

    meta = MetadataCatalog.get(dataset_name)
    panoptic = json.load(open(panoptic_json))
    categories = {c["id"]: c for c in panoptic["categories"]}
    by_image = {a["image_id"]: a for a in panoptic["annotations"]}
    evaluator = PanopticEvaluatorPerClass(dataset_name, out_dir)
    evaluator.reset()
    for record in DatasetCatalog.get(dataset_name):
        ann = by_image[record["image_id"]]
        ids = read_panoptic_png(os.path.join(panoptic_root, ann["file_name"]))
        segments = []
        for seg in ann["segments_info"]:
            if seg["category_id"] == drop_category:
                ids[ids == seg["id"]] = 0
                continue
            isthing = bool(categories[seg["category_id"]]["isthing"])
            contiguous = (meta.thing_dataset_id_to_contiguous_id if isthing
                          else meta.stuff_dataset_id_to_contiguous_id)[seg["category_id"]]
            segments.append({"id": seg["id"], "category_id": contiguous, "isthing": isthing})
        evaluator.process([record], [{"panoptic_seg": (torch.from_numpy(ids), segments)}])
    return evaluator.evaluate()["panoptic_seg"]

"""Your own COCO-format panoptic data from the command line (datasets/README.md): the two real COCO
images of ../shared/data registered with --dataset, 2 training iterations of tools/train_net.py,
its evaluation (PQ), and tools/predict.py on the trained model with the run's own config. Then
what goes wrong with own data: an instances JSON with stuff categories, RLE masks read as
polygons, class counts that do not fit the data."""
import json
import os
import subprocess
import sys

import pytest

from crbp_detectron.config import load_config
from crbp_detectron.data.coco_panoptic import DatasetError, register_own_datasets

from .modeling.utils import TINY
from .training_utils import REPO

SMALL = [str(o) for o in TINY] + [
    "MODEL.ROI_HEADS.NUM_CLASSES", "80", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "54",
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "160", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001", "SOLVER.MAX_ITER", "2",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0"]


def _sample_paths(coco_sample):
    return [os.path.join(coco_sample, "val2017"), os.path.join(coco_sample, "panoptic_val2017"),
            os.path.join(coco_sample, "panoptic_examples.json")]


def _run(args, env=None):
    proc = subprocess.run([sys.executable] + args, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="2", **(env or {})))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_train_evaluate_and_predict_on_own_data_from_the_command_line(coco_sample, tmp_path):
    out = tmp_path / "run"
    _run([os.path.join(REPO, "tools", "train_net.py"), "--config-file", "panoptic_crbp.yaml",
          "--dataset", "sample", *_sample_paths(coco_sample),
          "DATASETS.TRAIN", "('sample_separated',)", "DATASETS.TEST", "('sample_separated',)",
          "OUTPUT_DIR", str(out), *SMALL])
    # Trained (2 iterations, masks derived as polygons: the config's INPUT.MASK_FORMAT) and evaluated.
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    assert max(r["iteration"] for r in rows if "loss_mask" in r) == 1
    pq = [r["panoptic_seg/PQ"] for r in rows if "panoptic_seg/PQ" in r]
    assert pq and 0 <= pq[-1] <= 100
    assert (out / "datasets" / "sample" / "instances_polygon.json").is_file()
    assert sorted(os.listdir(out / "datasets" / "sample" / "stuff")) == ["000000142238.png", "000000439180.png"]
    # Nothing written beside the user's (read-only) data.
    assert sorted(os.listdir(coco_sample)) == sorted(
        ["README.md", "panoptic_coco_categories.json", "panoptic_detection_format.json", "panoptic_examples.json",
         "panoptic_val2017", "val2017"])

    # Prediction with the run's own config: its dataset registered again for the COCO class names.
    predicted = tmp_path / "predicted"
    log = _run([os.path.join(REPO, "tools", "predict.py"), "--config-file", str(out / "config.yaml"),
                "--input", os.path.join(coco_sample, "val2017"), "--output", str(predicted),
                "MODEL.WEIGHTS", str(out / "model_final.pth")])
    assert "2 predictions written" in log
    result = json.load(open(predicted / "predictions.json"))
    assert len(result["annotations"]) == 2 and not result["errors"]
    names = {c["name"] for c in result["categories"]}
    assert {"person", "dog", "grass-merged"} <= names and len(result["categories"]) == 133
    assert all((predicted / "panoptic" / f"{stem}.png").is_file() for stem in ("000000142238", "000000439180"))


def _own_dataset_cfg(tmp_path, coco_sample, name, instances_json, mask_format):
    image_root, panoptic_root, panoptic_json = _sample_paths(coco_sample)
    return load_config("panoptic_crbp.yaml", SMALL + [
        "OUTPUT_DIR", str(tmp_path), "INPUT.MASK_FORMAT", mask_format, "DATASETS.COCO_PANOPTIC.NAMES", repr([name]),
        "DATASETS.COCO_PANOPTIC.IMAGE_ROOTS", repr([image_root]), "DATASETS.COCO_PANOPTIC.PANOPTIC_ROOTS",
        repr([panoptic_root]), "DATASETS.COCO_PANOPTIC.PANOPTIC_JSONS", repr([panoptic_json]),
        "DATASETS.COCO_PANOPTIC.INSTANCES_JSONS", repr([instances_json])])


def test_instances_json_with_stuff_categories_is_handled_at_registration(coco_sample, tmp_path):
    """COCO's panoptic-to-detection conversion holds stuff too: registration writes a things-only
    copy (Detectron2 would otherwise fail on first load) and says so."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    mixed = os.path.join(coco_sample, "panoptic_detection_format.json")
    cfg = _own_dataset_cfg(tmp_path, coco_sample, "mixed", mixed, "bitmask")
    assert register_own_datasets(cfg) == ["mixed_separated", "mixed_stuffonly"]
    copy = json.load(open(tmp_path / "datasets" / "mixed" / "instances_things.json"))
    panoptic = json.load(open(_sample_paths(coco_sample)[2]))
    things = {c["id"] for c in panoptic["categories"] if c["isthing"]}
    assert len(copy["categories"]) == 80 and {c["id"] for c in copy["categories"]} == things
    records = DatasetCatalog.get("mixed_separated")  # loads: no "thing_classes ... different value"
    assert len(records) == 2 and all(a["category_id"] < 80 for r in records for a in r["annotations"])
    assert len(MetadataCatalog.get("mixed_separated").thing_classes) == 80

    # Its masks are RLE: read as polygons (the COCO configs' INPUT.MASK_FORMAT) they would fail later.
    cfg = _own_dataset_cfg(tmp_path / "p", coco_sample, "mixed_polygon", mixed, "polygon")
    with pytest.raises(DatasetError, match=r"instances_things.json: \d+ non-crowd masks are RLE, which "
                                           r"INPUT.MASK_FORMAT = 'polygon' cannot read: set INPUT.MASK_FORMAT bitmask"):
        register_own_datasets(cfg)


def test_class_counts_must_fit_the_data(coco_sample, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_net_own", os.path.join(REPO, "tools", "train_net.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.parser().parse_args(["--config-file", "panoptic_crbp.yaml", "--dataset", "counts",
                                     *_sample_paths(coco_sample), "DATASETS.TRAIN", "('counts_separated',)",
                                     "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path), *SMALL,
                                     "MODEL.ROI_HEADS.NUM_CLASSES", "5"])
    with pytest.raises(SystemExit) as info:
        tool.main(args)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: MODEL.ROI_HEADS.NUM_CLASSES = 5: the training dataset 'counts_separated' has 80 thing classes; set "
        "MODEL.ROI_HEADS.NUM_CLASSES 80")

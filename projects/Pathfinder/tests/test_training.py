"""Pathfinder on the Detectron2 engine: a tiny run learns and logs the C-RBP statistics, a resumed
run equals an uninterrupted one, checkpoints evaluate in every mode, the penalty schedule acts,
the final report's numbers agree with each other, the memory probe, the command-line tool."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase

from pathfinder.generator import PathfinderDataset
from pathfinder.generator.generator import generate_sample
from pathfinder.config import load_pathfinder_config
from pathfinder.data import dataset_folder, generator_config, split_seed
from pathfinder.engine import PathfinderTrainer, final_report, prepare_datasets, training_memory
from pathfinder.evaluation import PixelCounts
from pathfinder.model import PathfinderModel, pixel_loss

from tests import training_utils

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "study/Base-Pathfinder-32px.yaml"
TINY = ["PATHFINDER.DATA.SIZE", 16, "PATHFINDER.DATA.PADDLE_LENGTH", 2.0, "PATHFINDER.DATA.GAP", 1.5,
        "PATHFINDER.DATA.DISTRACTORS", 1, "PATHFINDER.DATA.DISTRACTOR_LENGTH", 2,
        "PATHFINDER.DATA.LONG_DISTRACTORS", 0, "PATHFINDER.DATA.CLEARANCE", 1.0,
        "PATHFINDER.DATA.TRAIN_LENGTHS", [3], "PATHFINDER.DATA.TEST_LENGTHS", [3, 4],
        "PATHFINDER.DATA.TRAIN_PER_LENGTH", 48, "PATHFINDER.DATA.TEST_PER_LENGTH", 16,
        "PATHFINDER.DATA.WORKERS", 1, "PATHFINDER.MODEL.CHANNELS", 4, "PATHFINDER.EVAL.BATCH_SIZE", 16,
        "PATHFINDER.EVAL.VAL_COUNT", 16, "PATHFINDER.EVAL.SWEEP_MAX_STEPS", 6, "MODEL.CRBP.CELL.KERNEL_SIZE", 3,
        "MODEL.CRBP.STEPS", 3, "SOLVER.IMS_PER_BATCH", 8, "SOLVER.BASE_LR", 0.01, "SOLVER.WARMUP_ITERS", 0,
        "SOLVER.MAX_ITER", 30, "SOLVER.CHECKPOINT_PERIOD", 1000]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pathfinder_data"))


def tiny_cfg(data_root, out_dir, *opts):
    cfg = load_pathfinder_config(CONFIG, TINY + ["PATHFINDER.DATA.ROOT", data_root, "OUTPUT_DIR", str(out_dir)]
                                 + list(opts))
    prepare_datasets(cfg)
    cfg.freeze()
    torch.manual_seed(cfg.SEED)
    return cfg


def train(cfg, *hooks):
    return training_utils.train(cfg, resume=True, hooks=hooks, trainer_class=PathfinderTrainer)


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


class LossLog(HookBase):
    def __init__(self):
        self.losses = []

    def after_step(self):
        latest = self.trainer.storage.latest()  # Detectron2 logs a lone loss as total_loss only
        self.losses.append(latest.get("loss_pixel", latest["total_loss"])[0])


@pytest.mark.parametrize("mode,body,stride", [("crbp", "recurrent", 1), ("bptt", "recurrent", 1), ("crbp", "cnn", 1),
                                              ("crbp", "recurrent", 2)])
def test_training_lowers_the_loss_and_logs_the_recurrent_block(data_root, tmp_path, mode, body, stride):
    cfg = tiny_cfg(data_root, tmp_path, "MODEL.CRBP.MODE", mode, "PATHFINDER.MODEL.BODY", body,
                   "PATHFINDER.AUGMENT", False, "PATHFINDER.MODEL.STRIDE", stride)
    log = LossLog()
    train(cfg, log)
    first, last = sum(log.losses[:5]) / 5, sum(log.losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    logged = [m for m in metrics(str(tmp_path)) if "total_loss" in m][-1]
    if body == "recurrent":
        assert "crbp/body/residual" in logged and "crbp/body/max_column_sum" in logged
        assert ("loss_penalty/body" in logged) == (mode == "crbp")
    else:
        assert not any(k.startswith(("crbp/", "loss_penalty")) for k in logged)


def test_resumed_run_equals_an_uninterrupted_one(data_root, tmp_path):
    """The data stream (indices and augmentation), RNG and optimizer state continue exactly."""
    straight = train(tiny_cfg(data_root, tmp_path / "a", "SOLVER.MAX_ITER", 6))
    cfg = tiny_cfg(data_root, tmp_path / "b", "SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 3)
    train(cfg)
    os.remove(tmp_path / "b" / "model_final.pth")
    with open(tmp_path / "b" / "last_checkpoint", "w") as f:
        f.write("model_0000002.pth")  # as if stopped after 3 of 6 iterations
    torch.manual_seed(123)  # a resume restores the RNG state; whatever it was before must not matter
    resumed = PathfinderTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    resumed.train()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_evaluates_in_every_mode_and_the_report_agrees_with_itself(data_root, tmp_path):
    cfg = tiny_cfg(data_root, tmp_path, "SOLVER.MAX_ITER", 8)
    trainer = train(cfg)
    report = final_report(cfg, trainer.model)
    assert set(report["test"]) == {"3", "4"} and report["mode"] == "crbp"
    assert report["parameters"] == sum(p.numel() for p in trainer.model.parameters())
    # The sweep's entry at the test steps is the evaluation at the test steps.
    sweep = report["sweep"]["4"]
    assert [s["steps"] for s in sweep] == list(range(1, 7))
    assert sweep[cfg.MODEL.CRBP.STEPS - 1]["iou"] == pytest.approx(report["test"]["4"]["iou"])
    assert json.load(open(tmp_path / "results.json"))["test"] == json.loads(json.dumps(report["test"]))
    # The same weights evaluate as a BPTT model, with the same numbers (evaluation has no graph).
    bptt_cfg = tiny_cfg(data_root, tmp_path / "bptt", "MODEL.CRBP.MODE", "bptt")
    model = PathfinderTrainer.build_model(bptt_cfg)
    DetectionCheckpointer(model).load(str(tmp_path / "model_final.pth"))
    assert model.recurrence.mode == "bptt"
    again = final_report(bptt_cfg, model)
    assert again["test"]["4"]["iou"] == pytest.approx(report["test"]["4"]["iou"])


def test_penalty_schedule_delays_and_ramps_the_penalty(data_root, tmp_path):
    cfg = tiny_cfg(data_root, tmp_path, "SOLVER.MAX_ITER", 6, "MODEL.CRBP.PENALTY_WARMUP_DELAY", 2,
                   "MODEL.CRBP.PENALTY_WARMUP_ITERS", 2)

    class Scales(HookBase):
        seen = []

        def after_step(self):
            latest = self.trainer.storage.latest()
            self.seen.append((latest["crbp/penalty_scale"][0], "loss_penalty/body" in latest
                              and latest["loss_penalty/body"][1] == self.trainer.iter))

    train(cfg, Scales())
    assert [s for s, _ in Scales.seen] == [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    # No penalty loss while its scale is 0 (nor its double-backward graph).
    assert [p for _, p in Scales.seen] == [False, False, True, True, True, True]


def test_training_memory_is_flat_in_steps_for_crbp_and_grows_for_bptt(data_root, tmp_path):
    def saved(mode, steps):
        cfg = tiny_cfg(data_root, tmp_path, "MODEL.CRBP.MODE", mode, "MODEL.CRBP.STEPS", steps)
        return training_memory(cfg, PathfinderTrainer.build_model(cfg))["saved_bytes"]

    crbp = [saved("crbp", s) for s in (2, 8)]
    bptt = [saved("bptt", s) for s in (2, 8)]
    assert crbp[0] == crbp[1] > 0
    assert bptt[1] > 3 * bptt[0] / 2 and bptt[1] > crbp[1]


def test_the_tool_trains_evaluates_and_reports(data_root, tmp_path):
    tool = os.path.join(PROJECT, "train_net.py")
    opts = [str(v) if not isinstance(v, list) else json.dumps(v) for v in TINY]
    opts += ["PATHFINDER.DATA.ROOT", data_root, "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "4"]
    env = dict(os.environ, PYTHONPATH=PROJECT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, tool, "--config-file", CONFIG, "--threads", "1"] + opts,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.load(open(tmp_path / "results.json"))
    assert set(res["test"]) == {"3", "4"} and len(res["sweep"]["3"]) == 6
    assert res["memory"]["saved_bytes"] > 0 and any("crbp/body/residual" in e for e in res["curve"])
    # --eval-only with a changed test-time step count evaluates the same weights again.
    run = subprocess.run([sys.executable, tool, "--config-file", CONFIG, "--eval-only", "--threads", "1"] + opts
                         + ["MODEL.WEIGHTS", str(tmp_path / "model_final.pth"), "MODEL.CRBP.TEST_STEPS", "6"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    again = json.load(open(tmp_path / "results.json"))
    assert again["test_steps"] == 6
    assert again["test"]["3"]["iou"] == pytest.approx(res["sweep"]["3"][5]["iou"])


def test_bad_pathfinder_config_values_name_the_key():
    with pytest.raises(ValueError, match="PATHFINDER.DATA.TEST_LENGTHS"):
        load_pathfinder_config(CONFIG, ["PATHFINDER.DATA.TEST_LENGTHS", [0, 3]])
    with pytest.raises(ValueError, match="PATHFINDER.MODEL.BODY"):
        load_pathfinder_config(CONFIG, ["PATHFINDER.MODEL.BODY", "transformer"])
    with pytest.raises(ValueError, match="PATHFINDER.EVAL.SWEEP_LENGTHS"):
        load_pathfinder_config(CONFIG, ["PATHFINDER.EVAL.SWEEP_LENGTHS", [9]])
    with pytest.raises(ValueError, match="PATHFINDER.DATA.TRAIN_LONG_DISTRACTORS"):
        load_pathfinder_config(CONFIG, ["PATHFINDER.DATA.TRAIN_DISTRACTORS", 1, "PATHFINDER.DATA.TRAIN_LONG_DISTRACTORS", 2])
    with pytest.raises(ValueError, match="PATHFINDER.DATA.TRAIN_DISTRACTORS"):
        load_pathfinder_config(CONFIG, ["PATHFINDER.DATA.TRAIN_DISTRACTORS", -2])


def test_training_set_can_have_its_own_distractors_and_the_test_sets_stay_the_same(data_root, tmp_path):
    """TRAIN_DISTRACTORS / TRAIN_LONG_DISTRACTORS change the training images only: every training
    path is then as long as the target, and the test sets are the very folders of the default."""

    usual = tiny_cfg(data_root, tmp_path / "usual")
    long_only = tiny_cfg(data_root, tmp_path / "long", "PATHFINDER.DATA.TRAIN_DISTRACTORS", 2,
                         "PATHFINDER.DATA.TRAIN_LONG_DISTRACTORS", 2)
    gen = generator_config(long_only, 3, "train")
    assert (gen.distractors, gen.long_distractors) == (2, 2)
    assert generator_config(long_only, 3, "test") == generator_config(usual, 3, "test")
    assert generator_config(long_only, 3, "val") == generator_config(usual, 3, "test")  # drawn as test images are
    with pytest.raises(ValueError, match="split must be one of"):
        generator_config(long_only, 3, "holdout")
    assert dataset_folder(long_only, "test", 4) == dataset_folder(usual, "test", 4)
    folder = dataset_folder(long_only, "train", 3)
    assert folder != dataset_folder(usual, "train", 3)
    for i in range(4):
        sample = generate_sample(gen, split_seed(long_only, "train", 3), i, return_parts=True)
        assert np.array_equal(sample["image"], PathfinderDataset(folder).images[i])
        paddles = [sum(1 for _, _, _, path, i in sample["strokes"].items() if path == p and i >= 0) for p in range(3)]
        assert paddles[0] == paddles[1] == paddles[2]  # no short distractor: every path has the target's paddles


def test_validation_during_training_never_sees_a_test_image(data_root, tmp_path):
    """pathfinder_val is its own draw (seed and folder), of VAL_COUNT images, none of them equal to
    an image of any test set."""
    from detectron2.data import DatasetCatalog

    from pathfinder.data import VAL, _arrays, test_name

    cfg = tiny_cfg(data_root, tmp_path, "PATHFINDER.EVAL.VAL_COUNT", 12)
    val = DatasetCatalog.get(VAL)
    assert len(val) == 12 and {r["length"] for r in val} == {3}
    assert split_seed(cfg, "val", 3) not in {split_seed(cfg, s, L) for s in ("train", "test") for L in (3, 4)}
    val_images = _arrays(val[0]["folder"])[0]
    for length in cfg.PATHFINDER.DATA.TEST_LENGTHS:
        test = DatasetCatalog.get(test_name(length))
        assert test[0]["folder"] != val[0]["folder"]
        test_images = _arrays(test[0]["folder"])[0]
        assert not any(np.array_equal(v, t) for v in val_images for t in test_images)


def test_cycles_equal_runs_chained_by_their_weights(data_root, tmp_path):
    """PATHFINDER.CYCLES 2 in one command gives the weights of two runs of the tool, the second
    started from the first's model_final.pth (the warm-restart recipe, run as it was measured);
    --resume after the first cycle continues with the second."""
    tool = os.path.join(PROJECT, "train_net.py")
    opts = [str(v) if not isinstance(v, list) else json.dumps(v) for v in TINY]
    opts += ["PATHFINDER.DATA.ROOT", data_root, "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0",
             "PATHFINDER.EVAL.SWEEP_MAX_STEPS", "1", "PATHFINDER.DATA.TEST_LENGTHS", "[3]"]
    env = dict(os.environ, PYTHONPATH=PROJECT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(out, *more):
        done = subprocess.run([sys.executable, tool, "--config-file", CONFIG, "--threads", "1", "--resume"] + opts
                              + ["OUTPUT_DIR", str(out)] + list(more), env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    def weights(path):
        return torch.load(path, map_location="cpu", weights_only=True)["model"]

    run(tmp_path / "first")
    run(tmp_path / "second", "MODEL.WEIGHTS", str(tmp_path / "first" / "model_final.pth"))
    run(tmp_path / "cycles", "PATHFINDER.CYCLES", "2")
    chained, cycled = weights(tmp_path / "second" / "model_final.pth"), weights(tmp_path / "cycles" / "cycle2" / "model_final.pth")
    first = weights(tmp_path / "first" / "model_final.pth")
    assert any(not torch.equal(first[k], chained[k]) for k in first)  # the second cycle trained
    assert chained.keys() == cycled.keys() and all(torch.equal(chained[k], cycled[k]) for k in chained)
    cycle1 = weights(tmp_path / "cycles" / "cycle1" / "model_final.pth")
    assert all(torch.equal(first[k], cycle1[k]) for k in first)
    res = json.load(open(tmp_path / "cycles" / "results.json"))
    trained = sorted(e["iteration"] for e in res["curve"] if "total_loss" in e)
    assert res["train"]["iterations"] == 6 and trained[0] < 3 and trained[-1] == 5  # both cycles, one count
    # a run killed after its first cycle: --resume keeps that cycle and trains the second
    import shutil

    shutil.copytree(tmp_path / "cycles" / "cycle1", tmp_path / "resumed" / "cycle1")
    run(tmp_path / "resumed", "PATHFINDER.CYCLES", "2")
    resumed = weights(tmp_path / "resumed" / "cycle2" / "model_final.pth")
    assert all(torch.equal(chained[k], resumed[k]) for k in chained)


@pytest.mark.parametrize("name", sorted(os.path.relpath(p, os.path.join(PROJECT, "configs")) for p in
                                        glob.glob(os.path.join(PROJECT, "configs", "**", "*.yaml"), recursive=True)))
def test_every_project_config_merges_with_plain_detectron2_and_builds(name):
    """Detectron2's get_cfg() + add_crbp_config + add_pathfinder_config + merge_from_file, as a
    Detectron2 user reads a project's config; the model builds, recurrent unless it is the CNN."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from crbp_detectron import add_crbp_config
    from crbp_detectron.crbp import recurrent_blocks
    from pathfinder import add_pathfinder_config

    cfg = get_cfg()
    add_crbp_config(cfg)
    add_pathfinder_config(cfg)
    cfg.merge_from_file(os.path.join(PROJECT, "configs", name))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert type(model).__name__ == "PathfinderModel"
    assert bool(recurrent_blocks(model)) == (cfg.PATHFINDER.MODEL.BODY == "recurrent")


def test_model_protocol():
    cfg = load_pathfinder_config(CONFIG, TINY)
    model = PathfinderTrainer.build_model(cfg)
    assert isinstance(model, PathfinderModel)
    inputs = [{"image": torch.zeros(1, 16, 16, dtype=torch.uint8), "mask": torch.zeros(1, 16, 16, dtype=torch.bool)}]
    losses = model(inputs)
    assert set(losses) == {"loss_pixel", "loss_penalty/body"}
    model.eval()
    assert model(inputs)[0]["logits"].shape == (1, 16, 16)


def test_metrics_on_pooled_counts():
    pred = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    target = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    c = PixelCounts().add(pred, target)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 4)
    m = (c + PixelCounts()).metrics()
    assert m["iou"] == pytest.approx(2 / 4) and m["f1"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx(0.5 * (2 / 3 + 4 / 5))


def test_losses_are_class_balanced():
    logits = torch.zeros(1, 1, 4, 4)
    target = torch.zeros(1, 1, 4, 4)
    target[..., 0, 0] = 1
    for kind in ("focal", "balanced_bce", "bce"):
        assert torch.isfinite(pixel_loss(logits, target, kind))
    # balanced BCE: one rare positive weighs as much as all the negatives together.
    up = logits.clone()
    up[..., 0, 0] = 2.0
    assert pixel_loss(up, target, "balanced_bce") < pixel_loss(logits, target, "balanced_bce")
    with pytest.raises(ValueError):
        pixel_loss(logits, target, "nope")

"""Pathfinder models and training: a tiny run learns, modes share weights, checkpoints resume,
metrics and the memory probe behave."""
import json
import os

import pytest
import torch

from crbp_detectron.crbp import collect_recurrence
from crbp_detectron.data.pathfinder import PathfinderConfig, generate_dataset, PathfinderDataset
from crbp_detectron.pathfinder.engine import (PixelCounts, TrainConfig, evaluate, load_checkpoint, pixel_loss,
                                              saved_tensor_bytes, steps_sweep, train)
from crbp_detectron.pathfinder.model import PathfinderCNN, PathfinderHGRU, build_model, count_parameters
from crbp_detectron.pathfinder.runner import load_config, measure_memory, resolve

TINY = dict(size=16, length=3, paddle_length=2.0, gap=1.5, paddle_width=1.0, distractors=1, distractor_length=2,
            marker_radius=1.25, continuity=40.0, clearance=1.0)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("pf") / "tiny")
    generate_dataset(folder, PathfinderConfig(**TINY), n=48, seed=0, workers=1, progress=False)
    return PathfinderDataset(folder).tensors()


def tiny_hgru(mode="crbp", steps=4, **kw):
    torch.manual_seed(0)
    return PathfinderHGRU(channels=4, kernel_size=3, mode=mode, steps=steps, **kw)


def _log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("mode", ["crbp", "bptt"])
def test_tiny_training_reduces_the_loss(tiny_data, tmp_path, mode):
    images, masks = tiny_data
    model = tiny_hgru(mode)
    cfg = TrainConfig(iterations=40, batch_size=16, lr=1e-2, log_every=10, checkpoint_every=40, augment=False)
    summary = train(model, images, masks, cfg, str(tmp_path), val=(images[:16], masks[:16]), echo=False)
    assert summary["finished"] and summary["iterations"] == 40
    log = [e for e in _log(str(tmp_path)) if "task_loss" in e]
    assert log[-1]["task_loss"] < 0.7 * log[0]["task_loss"]
    # The C-RBP statistics reach the log.
    assert "crbp/recurrence/residual" in log[-1] and "crbp/recurrence/max_column_sum" in log[-1]
    if mode == "crbp":
        assert log[-1]["crbp/recurrence/backward_vjps"] >= 1 and log[-1]["penalty_loss"] >= 0
    assert 0.0 <= summary["val"]["iou"] <= 1.0


def test_modes_share_weights_and_checkpoints_cross_modes(tiny_data, tmp_path):
    images, masks = tiny_data
    keys = None
    for mode in ("crbp", "rbp", "bptt", "cbptt"):
        m = tiny_hgru(mode)
        k = {name: p.shape for name, p in m.state_dict().items()}
        assert keys is None or k == keys
        keys = k
    trained = tiny_hgru("crbp", steps=5)
    train(trained, images, masks, TrainConfig(iterations=3, batch_size=8, checkpoint_every=3), str(tmp_path), echo=False)
    # A checkpoint trained with C-RBP loads into a BPTT model ...
    other = tiny_hgru("bptt", steps=2)
    load_checkpoint(os.path.join(tmp_path, "checkpoint.pth"), other)
    other.configure(test_steps=5)
    trained.eval()
    other.eval()
    with torch.no_grad():
        assert torch.equal(trained(images[:8]), other(images[:8]))
    # ... and the same model switches modes in place (evaluation does not depend on the mode).
    with torch.no_grad():
        ref = trained(images[:8])
        for mode in ("rbp", "bptt", "cbptt"):
            trained.configure(mode=mode)
            assert torch.equal(trained(images[:8]), ref)
    # and trains in the new mode.
    trained.configure(mode="bptt", steps=3).train()
    loss = pixel_loss(trained(images[:8]), masks[:8])
    loss.backward()
    assert trained.cell.w_exc.weight.grad is not None
    collect_recurrence(trained)
    with pytest.raises(ValueError):
        trained.configure(mode="nope")


def test_checkpoint_resumes(tiny_data, tmp_path):
    images, masks = tiny_data
    cfg = TrainConfig(iterations=4, batch_size=8, log_every=1, checkpoint_every=2)
    train(tiny_hgru("bptt", 2), images, masks, cfg, str(tmp_path), echo=False)
    cfg.iterations = 6
    model = tiny_hgru("bptt", 2)
    summary = train(model, images, masks, cfg, str(tmp_path), echo=False)
    assert summary["iterations"] == 6
    assert [e["iter"] for e in _log(str(tmp_path)) if "loss" in e] == [1, 2, 3, 4, 5, 6]
    state = torch.load(os.path.join(tmp_path, "checkpoint.pth"), weights_only=False)
    assert state["iteration"] == 6
    # The resumed run is the run that was not interrupted.
    straight = tiny_hgru("bptt", 2)
    train(straight, images, masks, TrainConfig(iterations=6, batch_size=8, checkpoint_every=6), str(tmp_path / "b"),
          echo=False)
    for (k, a), b in zip(model.state_dict().items(), straight.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


def test_metrics_on_pooled_counts():
    pred = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    target = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    c = PixelCounts().add(pred, target)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 4)
    m = c.metrics()
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


def test_sweep_and_evaluate_agree(tiny_data):
    images, masks = tiny_data
    model = tiny_hgru("crbp", steps=3)
    model.configure(test_steps=4)
    sweep = steps_sweep(model, images[:16], masks[:16], 6, batch=16)
    assert [s["steps"] for s in sweep] == list(range(1, 7))
    assert sweep[3]["iou"] == pytest.approx(evaluate(model, images[:16], masks[:16], batch=16)["iou"])


def test_memory_probe_flat_for_crbp_growing_for_bptt(tiny_data):
    images, masks = tiny_data
    x, y = images[:8], masks[:8]
    tc = TrainConfig()
    crbp = [measure_memory(tiny_hgru("crbp", s), x, y, tc)["saved_bytes"] for s in (2, 8)]
    bptt = [measure_memory(tiny_hgru("bptt", s), x, y, tc)["saved_bytes"] for s in (2, 8)]
    assert crbp[0] == crbp[1]
    assert bptt[1] > 3 * bptt[0] / 2 and bptt[1] > crbp[1]
    assert saved_tensor_bytes(lambda: (torch.ones(3, requires_grad=True) * 2).sum())["saved_bytes"] >= 0


def test_cnn_baseline_and_configs():
    hgru = resolve(load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pathfinder", "crbp.yaml")))
    cnn = resolve(load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pathfinder", "cnn.yaml")))
    h, c = build_model(hgru["model"]), build_model(cnn["model"])
    assert isinstance(h, PathfinderHGRU) and isinstance(c, PathfinderCNN)
    assert h.recurrence.mode == "crbp" and c.body[0].kernel_size == h.cell.w_exc.kernel_size
    assert count_parameters(c) >= count_parameters(h)
    out = c(torch.rand(2, 1, 16, 16))
    assert out.shape == (2, 1, 16, 16)
    cls = PathfinderHGRU(channels=4, kernel_size=3, steps=2, outputs=2, task="classification")
    assert cls(torch.rand(2, 1, 16, 16)).shape == (2, 2)
    collect_recurrence(cls)


def test_tool_runs_end_to_end(tmp_path):
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "train_pathfinder.py")
    spec = importlib.util.spec_from_file_location("train_pathfinder", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pathfinder", "crbp.yaml")
    overrides = [f"data.root={tmp_path / 'data'}", "data.generator.size=16", "data.generator.paddle_length=2.0",
                 "data.generator.distractors=1", "data.generator.distractor_length=2",
                 "data.generator.long_distractors=0", "data.generator.clearance=1.0", "data.train_lengths=[2,3]",
                 "data.test_lengths=[2,3,4]", "data.train_per_length=16", "data.test_per_length=8",
                 "data.workers=1", "model.steps=3", "model.channels=4", "train.iterations=3", "train.warmup=0",
                 "train.eval_every=0", "eval.sweep_lengths=[4]", "eval.sweep_max_steps=null"]
    res = tool.main(["--config", cfg, "--output-dir", str(tmp_path / "run")] + overrides)
    assert res["status"] == "done" and set(res["test"]) == {"2", "3", "4"}
    assert len(res["sweep"]["4"]) == 6  # to twice the horizon
    # Evaluate the C-RBP checkpoint as a BPTT model.
    res2 = tool.main(["--config", cfg, "--output-dir", str(tmp_path / "run"), "--eval-only", "model.mode=bptt"]
                     + overrides)
    assert res2["model"]["mode"] == "bptt"
    assert res2["test"]["2"]["iou"] == pytest.approx(res["test"]["2"]["iou"])


def test_nonfinite_losses_skip_updates_then_stop(tiny_data, tmp_path):
    images, masks = tiny_data
    bad = images.clone()
    bad[:, :, 0, 0] = float("nan")
    model = tiny_hgru("bptt", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = train(model, bad, masks, TrainConfig(iterations=10, batch_size=4, max_nonfinite=3), str(tmp_path),
                    echo=False)
    assert summary["diverged"] and summary["finished"] and summary["iterations"] == 3
    assert summary["skipped_nonfinite"] == 3
    assert torch.equal(model.front.conv.weight, before["front.conv.weight"])
    # A rerun does not train a diverged run again.
    again = train(tiny_hgru("bptt", 2), bad, masks, TrainConfig(iterations=10, batch_size=4), str(tmp_path), echo=False)
    assert again["diverged"] and again["iterations"] == 3

"""Checkpoints survive a kill: a writer killed mid-write (a real SIGKILL, and an injected failure)
leaves the previous checkpoint and `last_checkpoint` whole; a resume given a damaged latest
checkpoint says so and falls back to the newest good one; unreadable weights files get our error."""
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from crbp_detectron.checkpoint import Checkpointer, CheckpointError
from crbp_detectron.config import load_config

from .training_utils import REPO, CapturedLog, tiny_opts, train, weights


class Holder(torch.nn.Module):
    def __init__(self, numel=10):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(numel))


def _checkpointer(folder, numel=10):
    return Checkpointer(Holder(numel), str(folder), save_to_disk=True)


def _read(folder, name):
    return torch.load(os.path.join(folder, name), weights_only=True)


WRITER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {repo!r})
    from crbp_detectron.checkpoint import Checkpointer
    from tests.test_checkpoint import Holder
    model = Holder({numel})
    checkpointer = Checkpointer(model, {folder!r}, save_to_disk=True)
    with torch.no_grad():
        model.weight.fill_(1.0)
    checkpointer.save("model_0000005", iteration=5)   # the periodic checkpoint
    print("saved", flush=True)
    sys.stdin.readline()
    with torch.no_grad():
        model.weight.fill_(2.0)
    checkpointer.save("model_0000005", iteration=5)   # rewritten under the same name (a preemption)
    print("rewritten", flush=True)
""")


def test_sigkill_while_rewriting_a_checkpoint_leaves_the_previous_one(tmp_path):
    numel = 64 * 2 ** 20  # 256 MB: a write that takes long enough to be killed in the middle
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=REPO, numel=numel, folder=str(tmp_path))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saved"
        size = os.path.getsize(tmp_path / "model_0000005.pth")
        proc.stdin.write("\n")
        proc.stdin.flush()
        partial = tmp_path / f"model_0000005.pth.partial-{proc.pid}"
        deadline = time.time() + 120
        while time.time() < deadline and not (partial.exists() and 0 < partial.stat().st_size < size // 2):
            time.sleep(0.002)
        assert partial.exists(), "the rewrite never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert 0 < partial.stat().st_size < size  # killed in the middle of the write ...
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000005.pth"
    assert os.path.getsize(tmp_path / "model_0000005.pth") == size  # ... the checkpoint is whole
    checkpointer = _checkpointer(tmp_path, numel)
    extra = checkpointer.resume_or_load("", resume=True)
    assert extra["iteration"] == 5 and bool((checkpointer.model.weight == 1.0).all())
    assert not partial.exists()  # the orphan is removed on resume


def test_failed_write_keeps_previous_files(tmp_path, monkeypatch):
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)
    checkpointer.save("model_0000003", iteration=3)

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    for name in ("model_0000003", "model_0000004"):  # a rewrite, and a new file
        with pytest.raises(OSError, match="No space left"):
            checkpointer.save(name, iteration=4)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "model_0000003.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert _read(tmp_path, "model_0000003.pth")["iteration"] == 3


@pytest.mark.parametrize("damage", ["empty", "truncated", "missing"])
def test_resume_falls_back_past_a_damaged_latest_checkpoint(tmp_path, damage):
    checkpointer = _checkpointer(tmp_path)
    for iteration in (1, 3, 5):
        with torch.no_grad():
            checkpointer.model.weight.fill_(iteration)
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        os.utime(tmp_path / f"model_{iteration:07d}.pth", (iteration, iteration))  # distinct ages
    latest = tmp_path / "model_0000005.pth"
    if damage == "empty":
        latest.write_bytes(b"")
    elif damage == "truncated":
        latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    else:
        latest.unlink()
    resumed = _checkpointer(tmp_path)
    with CapturedLog() as caplog:
        extra = resumed.resume_or_load("", resume=True)
    assert extra["iteration"] == 3 and bool((resumed.model.weight == 3).all())
    said = caplog.text
    assert "model_0000005.pth" in said and "Resuming from" in said and "model_0000003.pth" in said
    assert {"empty": "empty (0 bytes)", "truncated": "truncated PyTorch checkpoint", "missing": "missing"}[damage] in said


def test_resume_with_no_readable_checkpoint_says_so(tmp_path):
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)
    (tmp_path / "model_0000001.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no readable checkpoint to resume from .*model_0000001.pth.*empty"):
        _checkpointer(tmp_path).resume_or_load("", resume=True)


def test_trainer_resumes_from_the_newest_good_checkpoint(demo_root, tmp_path):
    cfg = load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path, SOLVER__MAX_ITER=4, SOLVER__STEPS="(3,)",
                                                                    SOLVER__CHECKPOINT_PERIOD=2))
    train(cfg)
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    (tmp_path / "model_final.pth").write_bytes(b"")
    os.utime(tmp_path / "model_0000001.pth", (1, 1))
    expected = torch.load(tmp_path / "model_0000003.pth", weights_only=True)["model"]
    torch.manual_seed(1)
    from crbp_detectron.engine import Trainer

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 4
    for key, value in weights(trainer).items():
        assert torch.equal(value, expected[key]), key


def _random_bytes(seed, size=4096):
    # Not a pickle (0x80) nor a zip ("PK"): what a damaged or wrong file looks like
    data = bytearray(random.Random(seed).randbytes(size))
    data[0] = data[0] if data[0] not in (0x80, ord("P")) else 0
    return bytes(data)


def test_random_bytes_never_escape_as_a_bare_error(tmp_path):
    """torch.load raises many kinds of errors on random bytes (IndexError ~8% of the time): every
    one must come out as a CheckpointError naming the file."""
    path = tmp_path / "weights.pth"
    checkpointer = _checkpointer(tmp_path / "out")
    for seed in range(300):
        path.write_bytes(_random_bytes(seed, 64 + seed * 7))
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
            checkpointer._load_file(str(path))


@pytest.mark.parametrize("content, message", [
    (_random_bytes(0), "not a PyTorch checkpoint"),
    (b"", "empty"),
    ("pickled", "holds Python objects that a safe load"),
])
def test_unreadable_weights_file_gets_a_clear_error(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if content == "pickled":
        torch.save({"model": {"weight": torch.zeros(10)}, "extra": logging.getLogger("x")}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        _checkpointer(tmp_path / "out").load(str(path))
    assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)

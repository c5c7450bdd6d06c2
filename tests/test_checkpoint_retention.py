"""--keep-only-latest-checkpoint (Checkpointer.keep_only_latest): one checkpoint on disk while
training (what --resume needs), only model_final.pth once training is done, through a preemption
and a resume; other weights files in the folder are never touched."""
import os
import signal

import pytest
from detectron2.engine import HookBase

from crbp_detectron.config import load_config
from crbp_detectron.engine.preemption import Preempted

from .training_utils import SignalAt, tiny_opts, train


class KeepOnlyLatest(HookBase):
    def before_train(self):
        self.trainer.checkpointer.keep_only_latest = True


def checkpoint_files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".pth"))


def test_only_the_latest_checkpoint_stays_through_preemption_and_resume(demo_root, tmp_path):
    out = tmp_path / "run"
    os.makedirs(out)
    (out / "my_weights.pth").write_bytes(b"not a training checkpoint")
    cfg = load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(out, SOLVER__CHECKPOINT_PERIOD=2))
    with pytest.raises(Preempted) as info:
        train(cfg, hooks=[KeepOnlyLatest(), SignalAt(2, signal.SIGTERM)])
    stopped = info.value.iteration
    # The periodic checkpoint(s) before it were replaced by the preemption checkpoint.
    assert stopped >= 2 and checkpoint_files(out) == [f"model_{stopped:07d}.pth", "my_weights.pth"]

    resumed = train(cfg, resume=True, hooks=[KeepOnlyLatest()])
    assert resumed.start_iter == stopped + 1
    assert checkpoint_files(out) == ["model_final.pth", "my_weights.pth"]


def test_by_default_every_checkpoint_stays(demo_root, tmp_path):
    train(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path, SOLVER__CHECKPOINT_PERIOD=2)))
    assert checkpoint_files(tmp_path) == ["model_0000001.pth", "model_0000003.pth", "model_0000005.pth",
                                          "model_final.pth"]

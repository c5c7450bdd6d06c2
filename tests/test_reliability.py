"""Reliability: exact resume after SIGTERM, no step on a NaN loss, divergence events and the
divergence stop, torchrun on CPU matching a single process, bad dataset input."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from detectron2.engine import HookBase

import crbp_detectron  # noqa: F401
from crbp_detectron.config import load_config
from crbp_detectron.data.demo import DemoParams, register_demo_datasets
from crbp_detectron.engine import Preempted, Trainer
from crbp_detectron.modeling import RecurrentBlockDivergence

from .modeling.utils import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = DemoParams(train_images=12, val_images=2, image_size=64, min_object_size=10, max_object_size=24)


def tiny_opts(out, **extra):
    opts = [str(o) for o in TINY]
    for key, value in (("MODEL.ROI_HEADS.NUM_CLASSES", 4), ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", 4)):
        opts[opts.index(key) + 1] = str(value)
    opts += ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.RANDOM_FLIP", "none",
             "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01",
             "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(4,)", "SOLVER.MAX_ITER", "6",
             "SOLVER.CHECKPOINT_PERIOD", "1000", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out), "SEED", "7"]
    for key, value in extra.items():
        opts += [key.replace("__", "."), str(value)]
    return opts


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    register_demo_datasets(root, DEMO, progress=False)
    return root


def train(cfg, resume=False, hooks=()):
    torch.manual_seed(0)  # same initial weights in every run (the CLI's default_setup does this)
    trainer = Trainer(cfg)
    trainer.register_hooks(list(hooks))
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


class SignalAt(HookBase):
    def __init__(self, iteration, signum=signal.SIGTERM):
        self.iteration, self.signum = iteration, signum

    def after_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.signum)


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_preempted_and_resumed_run_ends_with_the_uninterrupted_weights(demo_root, tmp_path, signum):
    reference = weights(train(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path / "a"))))

    cfg = load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path / "b"))
    with pytest.raises(Preempted) as info:
        train(cfg, hooks=[SignalAt(2, signum)])
    stopped = info.value.iteration
    assert info.value.signum == signum and 2 <= stopped < 5
    assert os.path.isfile(tmp_path / "b" / f"model_{stopped:07d}.pth")
    assert signal.getsignal(signum) is not None  # handlers restored
    resumed = train(cfg, resume=True)
    assert resumed.start_iter == stopped + 1
    got = weights(resumed)
    for key, value in reference.items():
        assert torch.allclose(got[key].float(), value.float(), rtol=1e-5, atol=1e-7), key


def _sleep_forever(started):
    import time
    started.set()
    while True:
        time.sleep(1)


def test_preemption_handler_does_not_keep_forked_children_alive():
    """Children forked during training (panopticapi's evaluation pool runs in the final eval)
    inherit the handler; pool.terminate()'s SIGTERM must still end them, or the run hangs."""
    import multiprocessing

    from crbp_detectron.engine import PreemptionHook

    hook = PreemptionHook()
    hook.before_train()
    try:
        context = multiprocessing.get_context("fork")
        started = context.Event()
        child = context.Process(target=_sleep_forever, args=(started,))
        child.start()
        # A signal that lands inside fork() itself is dropped by CPython: signal a running child.
        assert started.wait(timeout=20)
        child.terminate()
        child.join(timeout=20)
        alive = child.is_alive()
        if alive:
            child.kill()
            child.join()
        assert not alive and child.exitcode == -signal.SIGTERM
        assert hook._received == 0  # the child's signal is not the trainer's preemption
    finally:
        hook.after_train()


class NaNLossAt(HookBase):
    def __init__(self, iteration):
        self.iteration, self.snapshot = iteration, None

    def before_step(self):
        if self.trainer.iter == self.iteration:
            self.snapshot = weights(self.trainer)
            model = self.trainer._trainer.model
            forward = model.forward
            model.forward = lambda data: {k: v * float("nan") if k == "loss_mask" else v
                                          for k, v in forward(data).items()}


def test_nan_loss_stops_before_the_weights_move(demo_root, tmp_path):
    cfg = load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path, SOLVER__CHECKPOINT_PERIOD=1))
    hook = NaNLossAt(3)
    with pytest.raises(FloatingPointError, match="iteration 3.*loss_mask.*weights and the checkpoints are intact"):
        train(cfg, hooks=[hook])
    trainer_weights = torch.load(tmp_path / "model_0000002.pth", weights_only=False)["model"]
    for key, value in hook.snapshot.items():
        assert torch.equal(trainer_weights[key], value), key
        assert torch.isfinite(value.float()).all()
    assert not os.path.exists(tmp_path / "model_0000003.pth")


class ScaleCell(HookBase):
    """Makes the mask head's cell non-contractive: lateral kernels and norms scaled up."""

    def before_train(self):
        cell = self.trainer.model.roi_heads.mask_head.recurrence.cell
        with torch.no_grad():
            for p in (cell.w_inh.weight, cell.w_exc.weight, cell.norm_inh.weight, cell.norm_exc.weight):
                p.mul_(5.0)


def test_divergent_block_trains_finite_counts_events_and_can_stop(demo_root, tmp_path):
    opts = dict(MODEL__CRBP__MODE="rbp", MODEL__CRBP__PENALTY="none", MODEL__CRBP__STEPS=10)
    trainer = train(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path / "a", **opts)), hooks=[ScaleCell()])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    lines = [json.loads(line) for line in open(tmp_path / "a" / "metrics.json")]
    events = [m["crbp/roi_heads.mask_head/divergence_events"] for m in lines if "crbp/roi_heads.mask_head/divergence_events" in m]
    assert events and events[-1] >= 3

    cfg = load_config("demo/panoptic_crbp_demo.yaml",
                      tiny_opts(tmp_path / "b", MODEL__CRBP__MAX_CONSECUTIVE_DIVERGENCES=2, **opts))
    with pytest.raises(RecurrentBlockDivergence, match=r"'roi_heads.mask_head'.*2 consecutive.*PENALTY_WEIGHT"):
        train(cfg, hooks=[ScaleCell()])


GROUP_NORM = dict(MODEL__RESNETS__NORM="GN", MODEL__FPN__NORM="GN", MODEL__SEM_SEG_HEAD__NORM="GN",
                  MODEL__ROI_BOX_HEAD__NORM="GN", MODEL__CRBP__MASK_HEAD__OUTPUT_NORM="GN",
                  MODEL__ROI_HEADS__BATCH_SIZE_PER_IMAGE=512, MODEL__RPN__BATCH_SIZE_PER_IMAGE=4096,
                  SOLVER__MAX_ITER=3, SOLVER__IMS_PER_BATCH=4, SOLVER__BASE_LR=0.002, MODEL__CRBP__PENALTY_REDUCTION="mean")


def test_torchrun_two_processes_on_cpu_match_one_process(tmp_path):
    env = dict(os.environ, CRBP_DEMO_DIR=str(tmp_path / "demo"), OMP_NUM_THREADS="1")
    script = os.path.join(REPO, "tools", "train_net.py")

    def run(prefix, out):
        cmd = prefix + [script, "--config-file", "demo/panoptic_crbp_demo.yaml"] + tiny_opts(out, **GROUP_NORM)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return torch.load(out / "model_final.pth", weights_only=False)["model"], proc.stdout + proc.stderr

    single, _ = run([sys.executable], tmp_path / "one")
    double, log = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"],
                      tmp_path / "two")
    assert "Parameters on 2 ranks: max checksum difference 0" in log
    torch.manual_seed(0)
    initial = Trainer.build_model(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path / "x", **GROUP_NORM)))
    keys = [k for k, v in single.items() if v.dtype.is_floating_point]
    a, b = (torch.cat([d[k].reshape(-1).float() for k in keys]) for d in (single, double))
    update = torch.cat([single[k].reshape(-1).float() - initial.state_dict()[k].reshape(-1).float() for k in keys])
    assert update.norm() > 0
    # Same global batch, sharded: the 2-process update equals the 1-process one up to the
    # per-rank averaging of losses normalised by per-rank counts (mask loss over positives).
    assert (a - b).norm() < 0.1 * update.norm()

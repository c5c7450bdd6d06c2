"""Reliability: exact resume after SIGTERM/SIGINT (with and without data workers, one process and
under torchrun), no step on a NaN loss, divergence events and the divergence stop (logged, rows in
order), torchrun on CPU matching a single process."""
import json
import multiprocessing
import os
import signal
import subprocess
import sys

import pytest
import torch
from detectron2.engine import HookBase

import crbp_detectron  # noqa: F401
from crbp_detectron.config import load_config
from crbp_detectron.engine import Trainer
from crbp_detectron.modeling import RecurrentBlockDivergence
from crbp_detectron.engine.preemption import Preempted

from .training_utils import REPO, SignalAt, tiny_opts, train, weights

# Augmentation on (random flip, two sizes), so that an inexact data stream would show.
AUGMENTED = dict(INPUT__RANDOM_FLIP="horizontal", INPUT__MIN_SIZE_TRAIN="(48,64)")


def assert_same_weights(got, expected):
    """Bit-identical: uninterrupted runs of this configuration repeat bit for bit (measured), so the
    tolerance that their repeatability allows is zero."""
    for key, value in expected.items():
        assert torch.equal(got[key], value), (key, float((got[key].float() - value.float()).abs().max()))


@pytest.mark.parametrize("signum, workers", [(signal.SIGTERM, 0), (signal.SIGINT, 0), (signal.SIGTERM, 2)])
def test_preempted_and_resumed_run_ends_with_the_uninterrupted_weights(demo_root, tmp_path, signum, workers):
    opts = dict(DATALOADER__NUM_WORKERS=workers, **AUGMENTED)
    reference = weights(train(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path / "a", **opts))))

    cfg = load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path / "b", **opts))
    with pytest.raises(Preempted) as info:
        train(cfg, hooks=[SignalAt(2, signum)])
    stopped = info.value.iteration
    assert info.value.signum == signum and 2 <= stopped < 5
    assert os.path.isfile(tmp_path / "b" / f"model_{stopped:07d}.pth")
    resumed = train(cfg, resume=True)
    assert resumed.start_iter == stopped + 1
    assert_same_weights(weights(resumed), reference)
    # Training shut its data workers down (they ignore SIGTERM: left alive, the interpreter's exit
    # would wait for them forever).
    assert multiprocessing.active_children() == []
    if workers:  # the data stream does not depend on the workers: the same as with none
        single = weights(train(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(
            tmp_path / "c", **dict(opts, DATALOADER__NUM_WORKERS=0)))))
        assert_same_weights(single, reference)


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
    trainer_weights = torch.load(tmp_path / "model_0000002.pth", weights_only=True)["model"]
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
    # The Neumann solver's guard: on a non-contractive block its terms grow past the bound, given a
    # budget long enough to tell that from the transient growth of a contraction. (GMRES, the
    # default, solves (I - J^T) z = g whenever I - J is invertible: no divergence to report.)
    opts = dict(MODEL__CRBP__MODE="rbp", MODEL__CRBP__PENALTY="none", MODEL__CRBP__STEPS=10,
                MODEL__CRBP__BACKWARD__SOLVER="neumann", MODEL__CRBP__BACKWARD__MAX_VJPS=300)
    trainer = train(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path / "a", **opts)), hooks=[ScaleCell()])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    lines = [json.loads(line) for line in open(tmp_path / "a" / "metrics.json")]
    events = [m["crbp/roi_heads.mask_head/divergence_events"] for m in lines if "crbp/roi_heads.mask_head/divergence_events" in m]
    assert events and events[-1] >= 3

    cfg = load_config("demo/panoptic_crbp_demo.yaml",
                      tiny_opts(tmp_path / "b", MODEL__CRBP__MAX_CONSECUTIVE_DIVERGENCES=2, **opts))
    with pytest.raises(RecurrentBlockDivergence, match=r"'roi_heads.mask_head'.*2 consecutive.*PENALTY_WEIGHT"):
        train(cfg, hooks=[ScaleCell()])
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.json")]
    iterations = [r["iteration"] for r in rows]
    assert iterations == sorted(iterations) and len(set(iterations)) == len(iterations)
    # The count that triggered the stop is logged at the iteration that stopped.
    assert rows[-1]["crbp/roi_heads.mask_head/consecutive_divergences"] == 2



GROUP_NORM = dict(MODEL__RESNETS__NORM="GN", MODEL__FPN__NORM="GN", MODEL__SEM_SEG_HEAD__NORM="GN",
                  MODEL__ROI_BOX_HEAD__NORM="GN", MODEL__CRBP__MASK_HEAD__OUTPUT_NORM="GN",
                  MODEL__ROI_HEADS__BATCH_SIZE_PER_IMAGE=512, MODEL__RPN__BATCH_SIZE_PER_IMAGE=4096,
                  SOLVER__MAX_ITER=3, SOLVER__IMS_PER_BATCH=4, SOLVER__BASE_LR=0.002, MODEL__CRBP__PENALTY_REDUCTION="mean")
TORCHRUN = [sys.executable, "-m", "crbp_detectron.engine.launch", "--nproc_per_node", "2"]


def run_tool(cmd, env, out, expect=0):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, start_new_session=True)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def final_weights(out):
    return torch.load(out / "model_final.pth", weights_only=True)["model"]


def test_torchrun_two_processes_on_cpu_match_one_process(tmp_path):
    env = dict(os.environ, CRBP_DEMO_DIR=str(tmp_path / "demo"), OMP_NUM_THREADS="1")
    script = os.path.join(REPO, "tools", "train_net.py")
    args = [script, "--config-file", "demo/panoptic_crbp_demo.yaml"]
    run_tool([sys.executable] + args + tiny_opts(tmp_path / "one", **GROUP_NORM), env, tmp_path / "one")
    log = run_tool(TORCHRUN + ["--master_port", "29533"] + args + tiny_opts(tmp_path / "two", **GROUP_NORM), env,
                   tmp_path / "two")
    single, double = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert "Parameters on 2 ranks: max checksum difference 0" in log
    torch.manual_seed(0)
    initial = Trainer.build_model(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path / "x", **GROUP_NORM)))
    keys = [k for k, v in single.items() if v.dtype.is_floating_point]
    a, b = (torch.cat([d[k].reshape(-1).float() for k in keys]) for d in (single, double))
    update = torch.cat([single[k].reshape(-1).float() - initial.state_dict()[k].reshape(-1).float() for k in keys])
    assert update.norm() > 0
    # Same global batch, same items, same augmentation, sharded: the 2-process update equals the
    # 1-process one up to the per-rank averaging of losses normalised by per-rank counts.
    assert (a - b).norm() < 0.1 * update.norm()


def test_torchrun_preempted_and_resumed_equals_uninterrupted(tmp_path):
    """Every rank's RNG and data-stream state is checkpointed: a 2-process job preempted (SIGTERM to
    the whole process group, as a scheduler does) and resumed ends with the weights of an
    uninterrupted one, bit for bit: the tolerance that uninterrupted runs' repeatability allows is
    zero (measured: 3 uninterrupted 2-process runs of this configuration, max |difference| 0). The
    launcher exits 143, as a preempted job should."""
    env = dict(os.environ, CRBP_DEMO_DIR=str(tmp_path / "demo"), OMP_NUM_THREADS="1")
    opts = dict(GROUP_NORM, SOLVER__MAX_ITER=6, SOLVER__STEPS="(4,)", **AUGMENTED)
    args = ["--config-file", "demo/panoptic_crbp_demo.yaml"]
    train_net = os.path.join(REPO, "tools", "train_net.py")
    run_tool(TORCHRUN + ["--master_port", "29534", train_net] + args + tiny_opts(tmp_path / "a", **opts), env, None)
    preempted = os.path.join(REPO, "tests", "torchrun_preempted.py")
    log = run_tool(TORCHRUN + ["--master_port", "29535", preempted] + args + tiny_opts(tmp_path / "b", **opts), env,
                   None, expect=128 + signal.SIGTERM)
    assert "Preempted: SIGTERM at iteration" in log and not (tmp_path / "b" / "model_final.pth").exists()
    run_tool(TORCHRUN + ["--master_port", "29536", train_net, "--resume"] + args + tiny_opts(tmp_path / "b", **opts),
             env, None)
    assert_same_weights(final_weights(tmp_path / "b"), final_weights(tmp_path / "a"))

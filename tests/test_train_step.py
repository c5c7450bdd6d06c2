"""The guarded training step: an exploding (or non-finite) gradient is refused before the optimizer
moves and its largest offender is named; refusals in a row stop training; SOLVER.AMP.ENABLED runs
the model under autocast (bfloat16 on CPU; float16 + GradScaler on CUDA)."""
import json
import math
import re

import pytest
import torch
from detectron2.engine import HookBase

from crbp_detectron.config import load_config
from crbp_detectron.engine.train_loop import GradientGuard, GuardedTrainer

from .training_utils import CapturedLog, tiny_opts, train, weights


def test_guard_judges_against_the_running_median_and_names_the_offender():
    guard = GradientGuard(factor=10.0, window=4, min_history=3, max_consecutive_refusals=2)
    big = {"a": 1e6, "b": 2.0}
    assert guard.refusal(big) is None  # no history yet: only non-finite norms are refused
    for total in (1.0, 3.0, 2.0, 100.0):
        guard.accept({"a": total})
    assert guard.limit() == pytest.approx(10.0 * 2.5)  # median of the last 4
    reason = guard.refusal({"a": 3.0, "b": 30.0})
    assert "exceeds 10 x the median 2.5" in reason and "'b' with norm 30" in reason
    assert guard.refusal({"a": 3.0, "b": 24.0}) is None
    reason = guard.refusal({"a": 1.0, "b": float("nan"), "c": float("inf")})
    assert "non-finite" in reason and "2 parameters" in reason and "'b'" in reason
    restored = GradientGuard(factor=10.0, window=4, min_history=3)
    restored.load_state_dict(guard.state_dict())
    assert restored.limit() == guard.limit() and list(restored.history) == list(guard.history)


def _guarded_trainer(guard):
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return GuardedTrainer(model, [torch.zeros(3)], optimizer, gradient_guard=guard)


def test_guarded_trainer_checkpoints_its_guard_beside_the_optimizer():
    trainer = _guarded_trainer(GradientGuard(factor=10.0, window=4, min_history=1))
    trainer.model(torch.ones(2, 3)).sum().backward()
    trainer.optimizer.step()  # momentum buffers: the optimizer's state is not empty
    for total in (1.0, 3.0):
        trainer.gradient_guard.accept({"a": total})
    trainer.gradient_guard.refuse()
    trainer.iter = 7
    state = trainer.state_dict()
    assert {"iteration", "optimizer", "gradient_guard"} <= set(state) and "grad_scaler" not in state  # no AMP

    restored = _guarded_trainer(GradientGuard(factor=10.0, window=4, min_history=1))
    restored.load_state_dict(state)
    assert restored.iter == 7 and list(restored.gradient_guard.history) == [1.0, 3.0]
    assert restored.gradient_guard.refused_steps == 1 and restored.gradient_guard.consecutive_refusals == 1
    assert torch.equal(restored.optimizer.state_dict()["state"][0]["momentum_buffer"],
                       trainer.optimizer.state_dict()["state"][0]["momentum_buffer"])

    # A checkpoint from before the guard existed loads and leaves the guard as it is.
    older = {k: v for k, v in state.items() if k != "gradient_guard"}
    fresh = _guarded_trainer(GradientGuard(factor=10.0, window=4, min_history=1))
    fresh.load_state_dict(older)
    assert fresh.iter == 7 and not fresh.gradient_guard.history and fresh.gradient_guard.refused_steps == 0


class ScaleLossAt(HookBase):
    """Multiplies the mask loss by `scale` at the given iterations (an exploding but finite step),
    and keeps the weights before each of those steps."""

    def __init__(self, iterations, scale=1e8):
        self.iterations, self.scale, self.before = set(iterations), scale, {}

    def before_step(self):
        model = self.trainer._trainer.model
        if self.trainer.iter in self.iterations:
            self.before[self.trainer.iter] = weights(self.trainer)
            forward = type(model).forward.__get__(model)
            model.forward = lambda data: {k: v * self.scale if k == "loss_mask" else v for k, v in forward(data).items()}
        elif "forward" in vars(model):
            del model.forward

    def after_step(self):
        if self.trainer.iter in self.iterations:
            after = weights(self.trainer)
            self.unchanged = getattr(self, "unchanged", True) and all(
                torch.equal(after[k], v) for k, v in self.before[self.trainer.iter].items() if v.is_floating_point()
                and not k.endswith(("running_mean", "running_var")))


GUARD = dict(SOLVER__GRADIENT_GUARD__MIN_HISTORY=4, SOLVER__MAX_ITER=9, SOLVER__STEPS="(8,)")
MASK_LOSS_PATH = r"largest: '(roi_heads\.mask_head|backbone)\.[\w.]+' with norm"  # what the mask loss reaches


def test_exploding_step_is_refused_and_training_goes_on(demo_root, tmp_path):
    hook = ScaleLossAt([6])
    with CapturedLog() as caplog:
        trainer = train(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path, **GUARD)), hooks=[hook])
    assert hook.unchanged  # the refused step left every weight as it was
    assert "Iteration 6: step refused, weights unchanged: gradient norm" in caplog.text
    # The largest offender is named, and it is on the scaled mask loss's gradient path.
    assert re.search(MASK_LOSS_PATH, caplog.text), caplog.text
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert rows[-1]["grad_guard/refused_steps"] == 1 and math.isfinite(rows[-1]["grad_norm"])


def test_refusals_in_a_row_stop_training(demo_root, tmp_path):
    cfg = load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path, SOLVER__GRADIENT_GUARD__MAX_CONSECUTIVE_REFUSALS=2,
                                                                SOLVER__CHECKPOINT_PERIOD=1, **GUARD))
    hook = ScaleLossAt([5, 6, 7])
    with pytest.raises(FloatingPointError, match=r"2 steps in a row refused at iteration 6.*" + MASK_LOSS_PATH):
        train(cfg, hooks=[hook])
    assert hook.unchanged
    saved = torch.load(tmp_path / "model_0000005.pth", weights_only=True)["model"]
    for key, value in hook.before[6].items():  # the checkpoint after the refused step 5 holds step 4's weights
        if value.is_floating_point() and not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(saved[key], hook.before[5][key]), key


class NaNGradientAt(HookBase):
    """Makes one parameter's gradient NaN at one iteration: a finite loss with a broken backward."""

    def __init__(self, iteration, name):
        self.iteration, self.name, self.handle = iteration, name, None

    def before_step(self):
        if self.trainer.iter == self.iteration:
            param = dict(self.trainer.model.named_parameters())[self.name]
            self.handle = param.register_hook(lambda g: g * float("nan"))
        elif self.handle is not None:
            self.handle.remove()
            self.handle = None


def test_non_finite_gradient_is_refused_naming_the_parameter(demo_root, tmp_path):
    name = "roi_heads.box_predictor.cls_score.weight"
    with CapturedLog() as caplog:
        trainer = train(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path)), hooks=[NaNGradientAt(2, name)])
    assert "Iteration 2: step refused, weights unchanged: gradient norm is non-finite" in caplog.text
    assert f"first '{name}'" in caplog.text
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_amp_runs_the_model_under_autocast(demo_root, tmp_path):
    """Fails if SOLVER.AMP.ENABLED is silently dropped: autocast must be on inside the model's forward
    (bfloat16 on CPU, no GradScaler), the stem's output in bfloat16, and the step must train."""
    cfg = load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path, SOLVER__AMP__ENABLED=True, SOLVER__MAX_ITER=3))
    seen = []

    class Probe(HookBase):
        def before_train(self):
            model = self.trainer.model
            self.initial = weights(self.trainer)
            model.register_forward_pre_hook(
                lambda m, a: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
            model.backbone.bottom_up.stem.register_forward_hook(lambda m, a, out: seen.append(out.dtype))

    probe = Probe()
    trainer = train(cfg, hooks=[probe])
    assert trainer._trainer.grad_scaler is None and trainer._trainer.amp_dtype == torch.bfloat16
    assert seen == [(True, torch.bfloat16), torch.bfloat16] * 3
    params = dict(trainer.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    assert any(not torch.equal(params[k], v) for k, v in probe.initial.items() if k in params)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert math.isfinite(rows[-1]["total_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_on_cuda_uses_float16_and_a_grad_scaler(demo_root, tmp_path):
    cfg = load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path, SOLVER__AMP__ENABLED=True, SOLVER__MAX_ITER=3,
                                                                MODEL__DEVICE="cuda"))
    trainer = train(cfg)
    assert trainer._trainer.amp_dtype == torch.float16 and trainer._trainer.grad_scaler is not None
    assert "grad_scaler" in trainer._trainer.state_dict()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

"""Export: the C-RBP model through Detectron2's TracingAdapter to TorchScript (outputs equal to the
eager model's, exactly) and ONNX (within 1e-4, where onnx / onnxruntime are installed:
`pip install crbp-detectron[export]`); the recurrent mask head traces with gradients enabled
(torch's default) and passes torch.export in its default (non-strict) mode."""
import importlib.util
import os

import pytest
import torch
from detectron2.layers import ShapeSpec

import crbp_detectron  # noqa: F401
from crbp_detectron.config import load_config
from crbp_detectron.export import export_model, sample_inputs, traceable
from crbp_detectron.modeling import CRBPMaskHead
from crbp_detectron.modeling.blocks import build_recurrence, default_block_kwargs

from .modeling.utils import tiny_demo_opts
from .training_utils import REPO

TINY_DEMO = tiny_demo_opts() + ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]


class HeadLayers(torch.nn.Module):
    """The mask head's tensor path (RoI features -> mask logits)."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, features):
        return self.head.layers(features)


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    cell_kwargs, recurrence_kwargs = default_block_kwargs()
    cell_kwargs["num_groups"] = 8
    recurrence = build_recurrence(32, cell_kwargs=cell_kwargs, **dict(recurrence_kwargs, steps=6))
    model = HeadLayers(CRBPMaskHead(ShapeSpec(channels=32, width=14, height=14), num_classes=3, deconv_dim=32,
                                    recurrence=recurrence)).eval()
    return model, torch.randn(5, 32, 14, 14)


def test_head_traces_with_gradients_enabled(head):
    model, features = head
    assert torch.is_grad_enabled()
    traced = torch.jit.trace(model, (features,))
    other = torch.randn(3, 32, 14, 14)  # another number of RoIs: the trace is not specialised to 5
    with torch.no_grad():
        assert torch.equal(traced(features), model(features)) and torch.equal(traced(other), model(other))


def test_head_passes_torch_export_in_its_default_mode(head):
    model, features = head
    exported = torch.export.export(model, (features,))  # non-strict: the default
    with torch.no_grad():
        assert torch.equal(exported.module()(features), model(features))


def _model():
    cfg = load_config("demo/panoptic_crbp_demo.yaml", TINY_DEMO)
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def test_torchscript_of_the_whole_model_equals_eager(tmp_path):
    cfg, model = _model()
    inputs = sample_inputs(cfg)
    result = export_model(model, inputs, str(tmp_path), "torchscript")
    assert result["max_abs_difference"] == 0.0 and result["outputs"] >= 5
    # The exported file alone, in a fresh load, gives the eager model's instances and semantic logits.
    adapter = traceable(model, inputs)
    with torch.no_grad():
        eager = adapter(*adapter.flattened_inputs)
        loaded = torch.jit.load(result["path"])(*adapter.flattened_inputs)
    assert len(eager) == len(loaded) and all(torch.equal(a, b) for a, b in zip(eager, loaded))
    assert any(t.dim() == 3 and t.shape[0] == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES for t in eager)  # sem_seg logits


def test_onnx_of_the_whole_model_matches_eager(tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install crbp-detectron[export])")
    onnxruntime = pytest.importorskip("onnxruntime", reason="checking the ONNX export needs onnxruntime")
    cfg, model = _model()
    inputs = sample_inputs(cfg)
    result = export_model(model, inputs, str(tmp_path), "onnx")
    adapter = traceable(model, inputs)
    with torch.no_grad():
        eager = adapter(*adapter.flattened_inputs)
    session = onnxruntime.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), adapter.flattened_inputs)})
    assert len(got) == len(eager)
    for a, b in zip(got, eager):
        torch.testing.assert_close(torch.as_tensor(a), b, rtol=1e-4, atol=1e-4)
    assert result["max_abs_difference"] < 1e-3


def test_export_tool_writes_and_checks(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("export_tool", os.path.join(REPO, "tools", "export_model.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--config-file", "demo/panoptic_crbp_demo.yaml", "--output", str(tmp_path)] + TINY_DEMO) == 0
    assert f"{tmp_path / 'model.ts'}: " in capsys.readouterr().out and (tmp_path / "model.ts").is_file()
    assert tool.main(["--config-file", "demo/panoptic_crbp_demo.yaml", "--output", str(tmp_path),
                      *TINY_DEMO, "MODEL.CRBP.TOL", "0.001"]) == 2
    assert "error: MODEL.CRBP.TOL = 0.001: must be 0 to export" in capsys.readouterr().err

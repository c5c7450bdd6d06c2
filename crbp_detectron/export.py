"""Exporting a trained model the Detectron2 way (detectron2.export.TracingAdapter): TorchScript by
tracing, and ONNX (PyTorch's TorchScript-based exporter; needs the `onnx` package, and
`onnxruntime` to check the result). Every export is run on the sample inputs and compared with the
eager model's outputs. Recurrent blocks run their graph-free iteration when traced or exported
(crbp/recurrence.py), so gradient mode does not matter; MODEL.CRBP.TOL must be 0 (a per-sample
early stop is data-dependent control flow, which tracing would freeze)."""
import os
import warnings
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

FORMATS = ("torchscript", "onnx")


def sample_inputs(cfg, image_rgb: Optional[np.ndarray] = None) -> List[Dict]:
    """One input in the form the model takes (Detectron2's test-time resize and channel order):
    the given RGB image, or a fixed synthetic one of INPUT.MIN_SIZE_TEST."""
    from detectron2.data import transforms as T

    if image_rgb is None:
        size = cfg.INPUT.MIN_SIZE_TEST
        grid = np.add.outer(np.arange(size), np.arange(size))
        image_rgb = np.stack([(grid * k) % 256 for k in (1, 3, 7)], axis=-1).astype(np.uint8)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(image_rgb).apply_image(image_rgb)
    if cfg.INPUT.FORMAT == "BGR":
        image = image[:, :, ::-1]
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
    return [{"image": tensor}]  # tensors only (traced); outputs come at the resized image's size


def traceable(model, inputs):
    """Detectron2's TracingAdapter around the model: flat tensors in and out. As in Detectron2's own
    export_model, R-CNN-style models give their outputs before post-processing: the instances at
    the input's size with RoI masks (a Panoptic FPN: and its semantic logits). The post-processing
    (resize, paste masks, the panoptic combination) is data-dependent Python: apply Detectron2's
    `detector_postprocess`, `sem_seg_postprocess` and `combine_semantic_and_instance_outputs` to
    the exported model's outputs."""
    from detectron2.export import TracingAdapter
    from detectron2.modeling import GeneralizedRCNN, PanopticFPN

    inference: Optional[Callable] = None
    if isinstance(model, PanopticFPN):
        def inference(model, inputs):
            instances, sem_seg = model.inference(inputs, do_postprocess=False)
            return [{"instances": instances[0], "sem_seg": sem_seg[0]}]
    elif isinstance(model, GeneralizedRCNN):
        def inference(model, inputs):
            return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]
    return TracingAdapter(model, inputs, inference).eval()  # a new Module is in training mode: exporters restore it


def _max_difference(a, b) -> float:
    assert len(a) == len(b), (len(a), len(b))
    worst = 0.0
    for x, y in zip(a, b):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            worst = max(worst, float((x.double() - y.double()).abs().max()))
    return worst


def export_model(model, inputs: List[Dict], output_dir: str, fmt: str) -> Dict:
    """Exports `model` (in eval mode) in `fmt`, runs the export on `inputs` and compares it with
    the eager model. Returns {"path", "max_abs_difference" (None if it could not be run: ONNX
    without onnxruntime), "outputs"}."""
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r}: must be one of {FORMATS}")
    model.eval()
    adapter = traceable(model, inputs)
    os.makedirs(output_dir, exist_ok=True)
    with torch.no_grad():
        eager = adapter(*adapter.flattened_inputs)
    if fmt == "torchscript":
        path = os.path.join(output_dir, "model.ts")
        traced = torch.jit.trace(adapter, adapter.flattened_inputs)
        traced.save(path)
        with torch.no_grad():
            exported = torch.jit.load(path)(*adapter.flattened_inputs)
        return {"path": path, "max_abs_difference": _max_difference(exported, eager), "outputs": len(eager)}
    path = os.path.join(output_dir, "model.onnx")
    with warnings.catch_warnings():
        # The TorchScript-based exporter on purpose: it exports the traced graph that the TorchScript
        # export checks; the torch.export-based one needs onnxscript and data-independent code.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export",
                                DeprecationWarning)
        torch.onnx.export(adapter, adapter.flattened_inputs, path, opset_version=17, dynamo=False)
    try:
        import onnxruntime
    except ImportError:
        return {"path": path, "max_abs_difference": None, "outputs": len(eager)}
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), adapter.flattened_inputs)}
    exported = session.run(None, feed)
    return {"path": path, "max_abs_difference": _max_difference(exported, eager), "outputs": len(eager)}

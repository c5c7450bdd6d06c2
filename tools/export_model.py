#!/usr/bin/env python
"""Export a trained model to TorchScript (tracing) or ONNX, the way Detectron2's
tools/deploy/export_model.py does (TracingAdapter), and check the export against the eager model.

    python tools/export_model.py --config-file demo/panoptic_crbp_demo.yaml --format torchscript \
        --output exported/ MODEL.WEIGHTS output/demo/model_final.pth
    python tools/export_model.py --config-file ... --format onnx --sample-image img.jpg --output exported/ ...

Writes <output>/model.ts or model.onnx and prints the largest difference from the eager model's
outputs on the sample image (a synthetic one if none is given). ONNX needs the `onnx` package, and
`onnxruntime` for the check (`pip install crbp-detectron[export]`). The recurrent blocks run their
test-time steps; MODEL.CRBP.TOL must be 0.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spin-wait thrash on shared CPUs

import argparse
import sys

import crbp_detectron  # noqa: F401  (registers the components)
from crbp_detectron.checkpoint import Checkpointer
from crbp_detectron.config import ConfigError, load_config
from crbp_detectron.engine import check_device
from crbp_detectron.export import FORMATS, export_model, sample_inputs
from crbp_detectron.inference import InputImageError, read_image_rgb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="path, packaged config name or model-zoo name")
    parser.add_argument("--format", choices=FORMATS, default="torchscript")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--sample-image", help="an image to trace with and to check the export on")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
        check_device(cfg)
        if cfg.MODEL.CRBP.TOL > 0:
            raise ConfigError(f"MODEL.CRBP.TOL = {cfg.MODEL.CRBP.TOL}: must be 0 to export (a per-sample early "
                              "stop is data-dependent; the export would freeze the traced image's steps)")
        inputs = sample_inputs(cfg, read_image_rgb(args.sample_image) if args.sample_image else None)
        from detectron2.modeling import build_model

        model = build_model(cfg)
        Checkpointer(model).load(cfg.MODEL.WEIGHTS)
        result = export_model(model, inputs, args.output, args.format)
    except (ValueError, InputImageError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    difference = result["max_abs_difference"]
    print(f"{result['path']}: {result['outputs']} outputs; largest difference from the eager model: "
          + ("not checked (onnxruntime is not installed)" if difference is None else f"{difference:.3g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Run a trained model on images or folders; write, per image, a visualization (<name>_vis.png)
and a COCO-format panoptic PNG (panoptic/<name>.png), plus predictions.json for all of them.

    python tools/predict.py --config-file demo/panoptic_crbp_demo.yaml \
        --input photo.jpg folder/ --output out/ MODEL.WEIGHTS output/demo/model_final.pth
    python tools/predict.py --config-file output/mine/config.yaml --input photo.jpg --output out/ \
        MODEL.WEIGHTS output/mine/model_final.pth     # a model trained on your own data (--dataset)

The class names come from the config's first test dataset (its first training dataset if it has
none); a training run's OUTPUT_DIR/config.yaml registers its own datasets again for them.

Any size; grayscale, palette, 16-bit and RGBA images are converted to RGB. Output names are the
input's file stem, made distinct where stems collide (a.jpg and a.png give a.jpg_vis.png and
a.png_vis.png); predictions.json maps each output to its "input".
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spin-wait thrash on shared CPUs

import argparse
import sys

import crbp_detectron  # noqa: F401  (registers the components)
from crbp_detectron.config import load_config
from crbp_detectron.engine import (add_dataset_argument, check_device, check_output_dir, dataset_opts,
                                   register_datasets)
from crbp_detectron.inference import InputImageError, Predictor, list_images, predict_files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="path, packaged config name or model-zoo name")
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--skip-bad-inputs", action="store_true",
                        help="report unreadable images in predictions.json instead of stopping")
    add_dataset_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, dataset_opts(args.dataset) + args.opts)
        check_device(cfg)
        check_output_dir(args.output, "--output")
        register_datasets(cfg, metadata_only=True)  # the class names and colours
        repeated = []
        paths = list_images(args.input, repeated)
        for path in repeated:
            print(f"note: {path} is an input already given; it is predicted once", file=sys.stderr)
        result = predict_files(Predictor(cfg), paths, args.output, on_error="skip" if args.skip_bad_inputs else "raise")
    except (InputImageError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(result['annotations'])} predictions written to {args.output}"
          + (f"; {len(result['errors'])} inputs skipped" if result["errors"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Writes the panoptic_stuff_{train,val}2017 semantic PNGs that Detectron2's "separated" COCO
panoptic loader needs (things -> 0, stuff -> contiguous 1..53, void -> 255).

    python datasets/prepare_coco_panoptic.py                      # both splits under $DETECTRON2_DATASETS/coco
    python datasets/prepare_coco_panoptic.py --splits val2017 --workers 8
    python datasets/prepare_coco_panoptic.py --panoptic-json J --panoptic-root P --out O   # any dataset

Parallel, with a progress bar; resumable (finished PNGs are kept); errors name the file.
"""
import argparse
import os
import sys

from crbp_detectron.data.coco_panoptic import DatasetError, write_stuff_pngs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "coco"),
                        help="COCO root (default: $DETECTRON2_DATASETS/coco)")
    parser.add_argument("--splits", nargs="+", default=["val2017", "train2017"])
    parser.add_argument("--panoptic-json", help="a single dataset: its panoptic JSON (overrides --root/--splits)")
    parser.add_argument("--panoptic-root", help="a single dataset: its panoptic PNG folder")
    parser.add_argument("--out", help="a single dataset: where to write the stuff PNGs")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: min(8, CPUs))")
    args = parser.parse_args(argv)

    if args.panoptic_json or args.panoptic_root or args.out:
        if not (args.panoptic_json and args.panoptic_root and args.out):
            parser.error("--panoptic-json, --panoptic-root and --out go together")
        jobs = [(args.panoptic_json, args.panoptic_root, args.out)]
    else:
        jobs = [(os.path.join(args.root, "annotations", f"panoptic_{s}.json"),
                 os.path.join(args.root, f"panoptic_{s}"),
                 os.path.join(args.root, f"panoptic_stuff_{s}")) for s in args.splits]
    try:
        for panoptic_json, panoptic_root, out in jobs:
            counts = write_stuff_pngs(panoptic_json, panoptic_root, out, workers=args.workers)
            print(f"{out}: {counts['written']} written, {counts['skipped']} already done")
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

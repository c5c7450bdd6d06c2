#!/usr/bin/env python
"""Train and evaluate one Pathfinder model from a plain YAML config.

    python tools/train_pathfinder.py --config configs/pathfinder/crbp.yaml
    python tools/train_pathfinder.py --config configs/pathfinder/bptt.yaml train.iterations=50
    python tools/train_pathfinder.py --config configs/pathfinder/crbp.yaml --eval-only \
        model.mode=bptt eval.test_steps=40       # a C-RBP checkpoint evaluated as BPTT, 40 steps

Trailing `key.sub=value` arguments override the config (values parsed as YAML). The run folder
(`output_dir`) gets config.json, log.jsonl (loss, penalty and the C-RBP statistics of
`collect_recurrence` / `summary_scalars`), checkpoint.pth (rerunning resumes from it) and
results.json (IoU / F1 / balanced accuracy per contour length on pooled pixel counts, and the
IoU-versus-test-steps sweep). Data are generated on first use and cached under `data.root`.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from crbp_detectron.pathfinder.runner import load_config, run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--eval-only", action="store_true", help="evaluate the run folder's checkpoint")
    p.add_argument("--output-dir", help="overrides output_dir")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    results = run(cfg, evaluate_only=args.eval_only)
    print(json.dumps({"name": results["name"], "status": results.get("status"),
                      "parameters": results["parameters"], "train": results.get("train"),
                      "test_steps": results.get("test_steps"),
                      "iou": {k: round(v["iou"], 4) for k, v in results.get("test", {}).items()}}, indent=1))
    return results


if __name__ == "__main__":
    main()

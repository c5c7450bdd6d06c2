#!/usr/bin/env python
"""The main job on any machine (`make demo`): generate the embedded demo dataset, train the C-RBP
Panoptic FPN with Detectron2's trainer (tools/train_net.py), evaluate it with the COCO panoptic
evaluator, and write numbers and pictures to output/demo/:

    metrics.json             Detectron2's training metrics (losses, C-RBP penalties and dynamics)
    pq_table.md              PQ / SQ / RQ for all, things, stuff
    predictions/             overlays of a few val images (Detectron2's Visualizer) + panoptic PNG/JSON
    test_steps/              PQ against test-time recurrent steps (CSV + PNG)
    residuals.png            the recurrent block's residual against step: does it converge?
    model_final.pth          the trained model (the only checkpoint left on disk)

    python tools/run_demo.py --compare   (make demo-compare) trains the feed-forward Panoptic FPN and the
    C-RBP one on the same data and budget, three seeds each, and writes the side-by-side table and
    picture to benchmarks/results/ (benchmarks/demo_compare.py; its --help for seeds, models,
    threads). Measured: one seed of each trained in 10 and 14 min (one thread each, both at once,
    on a 2-core CPU shared with other jobs); three seeds take about three times as long.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spin-wait thrash on shared CPUs

import argparse
import logging
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "demo/panoptic_crbp_demo.yaml"


def pq_table(metrics):
    from crbp_detectron.utils.tables import markdown_table

    rows = [[label] + [f"{metrics[f'panoptic_seg/{k}{suffix}']:.1f}" for k in ("PQ", "SQ", "RQ")]
            for label, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st"))]
    return markdown_table(["", "PQ", "SQ", "RQ"], rows) + "\n"


def residual_curves(predictor, images, steps):
    """Residual after each step of every recurrent block, on the given RGB images."""
    from crbp_detectron.crbp import recurrent_blocks

    blocks = recurrent_blocks(predictor.model)
    for block in blocks.values():
        block.record_trace, block.test_steps = True, steps
    curves = {name: [] for name in blocks}
    for rgb in images:
        predictor(rgb)
        for name, summary in predictor.model.last_recurrence.items():
            # A call on zero RoIs (no detection in the image) has an all-zero trace: skip it.
            curves[name] += [s.residual_trace for s in summary.stats if s.residual_trace and max(s.residual_trace) > 0]
    for block in blocks.values():
        block.record_trace, block.test_steps = False, None
    return curves


def plot_residuals(curves, train_steps, path):
    from crbp_detectron.utils.plotting import saved_figure

    with saved_figure(path, "Does the recurrent block converge?", "recurrent step", "||h_t+1 - h_t|| / ||h_t+1||") as ax:
        for name, traces in curves.items():
            if not traces:
                continue
            arr = np.array(traces)
            steps = np.arange(1, arr.shape[1] + 1)
            ax.fill_between(steps, np.percentile(arr, 10, 0), np.percentile(arr, 90, 0), alpha=0.2)
            ax.plot(steps, np.median(arr, 0), label=f"{name} (median, 10-90%)")
        ax.axvline(train_steps, color="gray", linestyle="--", linewidth=1, label=f"training steps ({train_steps})")
        ax.set_yscale("log")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "demo"))
    parser.add_argument("--test-steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 24])
    parser.add_argument("--overlays", type=int, default=6, help="val images to draw")
    parser.add_argument("--compare", action="store_true",
                        help="instead: feed-forward against C-RBP, 3 seeds each (benchmarks/demo_compare.py)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for training, KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.compare:
        cmd = [sys.executable, os.path.join(REPO, "benchmarks", "demo_compare.py")] + args.opts
        print("$ " + " ".join(cmd), flush=True)
        return subprocess.run(cmd).returncode
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    timings = {}

    import crbp_detectron  # noqa: F401
    from detectron2.utils.logger import setup_logger

    from crbp_detectron.config import load_config
    from crbp_detectron.data.demo import generate_demo_dataset
    from crbp_detectron.engine import register_datasets
    from crbp_detectron.evaluation import final_panoptic_metrics
    from crbp_detectron.evaluation.test_steps import sweep_test_steps
    from crbp_detectron.inference import Predictor, predict_files, read_image_rgb

    t = time.time()
    print("== 1/4 demo dataset", flush=True)
    paths = generate_demo_dataset()
    timings["data"] = time.time() - t

    t = time.time()
    print("== 2/4 training (tools/train_net.py) and COCO panoptic evaluation", flush=True)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", CONFIG,
           "--keep-only-latest-checkpoint", "OUTPUT_DIR", out] + args.opts
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    timings["training + evaluation"] = time.time() - t
    metrics = final_panoptic_metrics(os.path.join(out, "metrics.json"))
    with open(os.path.join(out, "pq_table.md"), "w") as f:
        f.write(pq_table(metrics))

    t = time.time()
    print("== 3/4 PQ against test-time steps", flush=True)
    setup_logger()  # Detectron2's logger: the evaluation below reports progress
    cfg = load_config(CONFIG, ["OUTPUT_DIR", out, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")] + args.opts)
    register_datasets(cfg)
    predictor = Predictor(cfg)
    sweep = sweep_test_steps(cfg, predictor.model, args.test_steps, os.path.join(out, "test_steps"))
    timings["test-steps sweep"] = time.time() - t

    t = time.time()
    print("== 4/4 pictures", flush=True)
    val_images = sorted(os.path.join(paths["val"]["image_root"], f) for f in os.listdir(paths["val"]["image_root"]))
    predict_files(predictor, val_images[: args.overlays], os.path.join(out, "predictions"))
    curves = residual_curves(predictor, [read_image_rgb(p) for p in val_images[:8]], 3 * cfg.MODEL.CRBP.STEPS)
    plot_residuals(curves, cfg.MODEL.CRBP.STEPS, os.path.join(out, "residuals.png"))
    timings["pictures"] = time.time() - t

    logging.shutdown()
    print("\n== crbp-detectron demo: done")
    print(pq_table(metrics))
    print("PQ against test-time steps (trained with %d): %s" % (
        cfg.MODEL.CRBP.STEPS, ", ".join(f"{r['test_steps']}: {r.get('panoptic_seg/PQ', float('nan')):.1f}" for r in sweep)))
    print("Wall-clock: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"Outputs in {out}:")
    for name in ("metrics.json", "pq_table.md", "predictions/", "test_steps/test_steps.png", "test_steps/test_steps.csv",
                 "residuals.png", "model_final.pth"):
        print(f"  {os.path.join(out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Is a trained Pathfinder hGRU at its equilibrium when its readout is trained? Runs seed 0's
weights of an experiment model far past its training horizon on test contours and reports, per
step: the IoU, the relative step size ||h_t - h_(t-1)|| / ||h_t|| (what the forward's residual
test sees), the distance to the state after many more steps ||h_t - h_T|| / ||h_T||, and a
power-iteration estimate of the spectral radius of J = dF/dh at the horizon and at step T (the
Neumann/RBP gradient is that of the fixed point only if the state is there and rho(J) < 1). Also
the IoU at the horizon when the same images are evaluated in smaller batches (the cell's
BatchNorm normalises with the test batch's statistics).

    python -m experiments.equilibrium --models crbp rbp --length 14

Writes projects/Pathfinder/results/pathfinder_equilibrium.md and .png (needs the experiment's seed-0
weights: python -m experiments.experiment).
"""
import argparse
import os
import shlex
import sys
import tempfile

import torch

from pathfinder.config import load_pathfinder_config
from pathfinder.data import test_name, test_tensors
from pathfinder.evaluation import PixelCounts
from pathfinder.engine import PathfinderTrainer, prepare_datasets
from crbp_detectron.crbp import relative_distance, spectral_radius
from crbp_detectron.utils.plotting import saved_panels
from crbp_detectron.utils.tables import markdown_table

from .experiment import EXPERIMENT, FEED_FORWARD, MODELS, Setting
from .report import model_color
from .runs import RESULTS_DIR, experiment_dir, load_experiment


def _iou(logits, masks):
    return PixelCounts().add(logits > 0, masks).metrics()["iou"]  # pooled over images, as the evaluator


def run_config(result: dict, data_root: str = "", opts=()):
    """The config a run was trained with (its results hold the dump), its data read from
    `data_root` when given, `opts` (KEY VALUE ...) applied: keys that change no trained weight."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(result["config"])
    try:
        return load_pathfinder_config(f.name, (["PATHFINDER.DATA.ROOT", data_root] if data_root else []) + list(opts))
    finally:
        os.unlink(f.name)


def trained_model(result: dict, weights: str, data_root: str = "", opts=(), datasets: bool = True):
    """(the model of a committed run with its weights loaded, in evaluation mode; its config);
    `datasets`: also generate and register the run's data sets (not needed to draw one's own)."""
    cfg = run_config(result, data_root, opts)
    if datasets:
        prepare_datasets(cfg)
    model = PathfinderTrainer.build_model(cfg)
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval(), cfg


@torch.no_grad()
def trace(model, images, masks, far: int):
    x = model.front(images)
    h = model.recurrence.initial_state(x)
    states, ious, steps = [], [], []
    for _ in range(far):
        h_next = model.recurrence.cell(x, h)
        steps.append(relative_distance(h, h_next))
        h = h_next
        states.append(h)
        ious.append(_iou(model.readout(h, images), masks))
    distance = [relative_distance(s, h) for s in states]
    return x, states, ious, steps, distance


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["crbp_continued_twice_steps64", "rbp"], choices=[m for m in MODELS if m not in FEED_FORWARD])
    p.add_argument("--length", type=int, default=14)
    p.add_argument("--count", type=int, default=64, help="test images")
    p.add_argument("--far", type=int, default=200, help="steps run (the 'far' state h_T)")
    p.add_argument("--results", default=RESULTS_DIR)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    setting = Setting(args.results, os.environ.get("CRBP_PATHFINDER_DIR", ""))
    found = load_experiment(EXPERIMENT, args.results)
    rows, curves = [], {}
    for name in args.models:
        runs = found.get(name, {})
        weights = os.path.join(experiment_dir(args.results, EXPERIMENT), name, "seed0_model.pth")
        if 0 not in runs or not os.path.exists(weights):
            print(f"skipping {name}: no seed-0 result and weights ({weights})")
            continue
        horizon = runs[0]["steps"]
        model, cfg = trained_model(runs[0], weights, setting.data_root)
        images, masks = test_tensors(cfg, test_name(args.length), args.count)
        x, states, ious, steps, distance = trace(model, images, masks, args.far)
        rho_h = spectral_radius(model.recurrence.cell, x, states[horizon - 1])
        rho_far = spectral_radius(model.recurrence.cell, x, states[-1])
        with torch.no_grad():
            small = [model.readout(model.recurrence.cell(xb, sb), ib) for xb, sb, ib in  # one more step, batches of 4
                     zip(x.split(4), states[horizon - 2].split(4), images.split(4))] if horizon > 1 else []
        small_iou = _iou(torch.cat(small), masks) if small else float("nan")
        rows.append([MODELS[name][0], horizon, f"{ious[horizon - 1]:.3f}", f"{ious[2 * horizon - 1]:.3f}",
                     f"{ious[-1]:.3f}", f"{max(ious):.3f} (step {ious.index(max(ious)) + 1})",
                     f"{steps[horizon - 1]:.4f}", f"{distance[horizon - 1]:.3f}", f"{rho_h:.3f}", f"{rho_far:.3f}",
                     f"{small_iou:.3f}"])
        curves[MODELS[name][0]] = (ious, steps, distance, horizon)
        print(rows[-1], flush=True)
    table = markdown_table(["model", "horizon", "IoU at horizon", "at 2x", f"at step {args.far}", "best",
                            "step size at horizon", "distance to h_T at horizon", "rho(J) at horizon",
                            f"rho(J) at step {args.far}", "IoU at horizon, batches of 4"], rows)
    png = os.path.join(args.results, "pathfinder_equilibrium.png")
    with saved_panels(png, f"Seed 0 on {args.count} test contours of {args.length} paddles, run to step {args.far}",
                      [("step", "IoU"), ("step", "relative step size"), ("step", "distance to h_T")]) as axes:
        for i, (label, (ious, steps, distance, horizon)) in enumerate(curves.items()):
            t, color = range(1, len(ious) + 1), model_color(i, len(curves))
            axes[0].plot(t, ious, label=label, color=color)
            axes[1].semilogy(t, steps, color=color)
            axes[2].semilogy(t, [max(d, 1e-8) for d in distance], color=color)
            for ax in axes:
                ax.axvline(horizon, color=color, ls="--", lw=0.8)
    command = "python -m experiments.equilibrium " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    md = os.path.join(args.results, "pathfinder_equilibrium.md")
    with open(md, "w") as f:
        f.write(f"# Pathfinder: is the trained hGRU at its equilibrium?\n\nProduced by:\n\n```\n{command}\n```\n\n"
                f"{__doc__.split(chr(10) + chr(10))[0]}\n\n{table}\n\n![equilibrium](pathfinder_equilibrium.png)\n")
    print(f"wrote {md}\n{table}")


if __name__ == "__main__":
    main()

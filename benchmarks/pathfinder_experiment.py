#!/usr/bin/env python
"""The Pathfinder experiment at CPU scale: hGRU trained with C-RBP against BPTT at the same
training memory, C-BPTT, RBP without the penalty and a feed-forward CNN; IoU per contour length
(one length out of distribution), IoU against test-time steps to twice the horizon, and one
sample's segmentation evolving over the steps. Not a test.

    python benchmarks/pathfinder_experiment.py                  # everything (~30 min, 1 core)
    python benchmarks/pathfinder_experiment.py --report-only    # rewrite the report from results

Resumable: each model's run folder under --out keeps its checkpoint (training resumes from it)
and its results.json (a finished model is not run again); the memory probe is cached too. The
configs are configs/pathfinder/*.yaml; this script only sets the memory-matched BPTT steps and
the output folders. Writes benchmarks/results/pathfinder.md, pathfinder_steps.png and
pathfinder_evolution.png.
"""
import argparse
import json
import os
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from crbp_detectron.pathfinder.engine import TrainConfig  # noqa: E402
from crbp_detectron.pathfinder.model import build_model  # noqa: E402
from crbp_detectron.pathfinder.runner import (load_config, measure_memory, resolve, run,  # noqa: E402
                                              test_tensors, train_tensors)

CONFIG_DIR = os.path.join(ROOT, "crbp_detectron", "configs", "pathfinder")
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
MODELS = ("crbp", "bptt", "cbptt", "rbp", "cnn")
LABELS = {"crbp": "hGRU C-RBP", "bptt": "hGRU BPTT", "cbptt": "hGRU C-BPTT", "rbp": "hGRU RBP (no LCP)",
          "cnn": "6-layer CNN"}
PAPER = {  # facts section 3, PF-14 / PF-20 / PF-25 IoU
    "crbp": "0.962 / 0.947 / 0.938", "bptt": "0.986 / 0.886 / 0.724", "cbptt": "0.984 / 0.842 / 0.735",
    "rbp": "0.714 / 0.625 / 0.590", "cnn": "0.790 / 0.635 / 0.564"}


def config_for(name: str, args, bptt_steps: int = None) -> dict:
    cfg = load_config(os.path.join(CONFIG_DIR, f"{name}.yaml"), args.override)
    cfg["output_dir"] = os.path.join(args.out, name)
    cfg["data"]["root"] = os.path.join(args.out, "data")
    if args.iterations:
        cfg["train"]["iterations"] = args.iterations
    if name in ("bptt", "cbptt") and bptt_steps:
        cfg["model"]["steps"] = bptt_steps
    if args.quick:
        cfg["data"].update(train_per_length=64, test_per_length=32, test_lengths=cfg["data"]["train_lengths"])
        cfg["train"].update(iterations=6, log_every=3, eval_every=0, checkpoint_every=3, warmup=0)
        cfg["eval"]["sweep_max_steps"] = 6
        if cfg["model"].get("type", "hgru") == "hgru":
            cfg["model"]["steps"] = min(cfg["model"]["steps"], 3)
    return resolve(cfg)


def memory_probe(args) -> dict:
    """Saved-for-backward bytes of one training iteration (same batch) for C-RBP at its steps and
    for BPTT at 1..max steps; the memory-matched BPTT has the most steps that fit in C-RBP's."""
    path = os.path.join(args.out, "memory.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    cfg = config_for("crbp", args)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    images, masks = train_tensors(cfg["data"])
    batch = cfg["train"].get("batch_size", 32)
    x, y = images[:batch], masks[:batch]
    tc = TrainConfig(**{k: v for k, v in cfg["train"].items() if k in TrainConfig.__dataclass_fields__})
    out = {"batch": batch, "size": cfg["data"]["generator"]["size"], "crbp_steps": cfg["model"]["steps"]}
    model = build_model(cfg["model"])
    out["crbp"] = measure_memory(model, x, y, tc)["saved_bytes"]
    model.configure(mode="rbp")
    out["rbp"] = measure_memory(model, x, y, tc)["saved_bytes"]
    model.configure(mode="crbp", steps=2 * cfg["model"]["steps"])
    out["crbp_2x_steps"] = measure_memory(model, x, y, tc)["saved_bytes"]
    out["bptt"], out["cbptt"] = {}, {}
    for k in range(1, 11):
        model.configure(mode="bptt", steps=k)
        out["bptt"][str(k)] = measure_memory(model, x, y, tc)["saved_bytes"]
        model.configure(mode="cbptt", steps=k)
        out["cbptt"][str(k)] = measure_memory(model, x, y, tc)["saved_bytes"]
    fits = [k for k in range(1, 11) if out["bptt"][str(k)] <= out["crbp"]]
    out["bptt_steps_same_memory"] = max(fits) if fits else 1
    cnn_cfg = config_for("cnn", args)
    out["cnn"] = measure_memory(build_model(cnn_cfg["model"]), x, y, tc)["saved_bytes"]
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out


def finished_result(output_dir):
    """The results of a run that completed earlier in `output_dir` (resumable experiment), or None."""
    path = os.path.join(output_dir, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            res = json.load(f)
        if res.get("status") == "done":
            return res
    return None


def run_models(args, memory) -> dict:
    results = {}
    for name in args.models:
        cfg = config_for(name, args, memory["bptt_steps_same_memory"])
        done = finished_result(cfg["output_dir"])
        if done is not None:
            results[name] = done
            print(f"[{name}] done already", flush=True)
            continue
        print(f"[{name}] training {cfg['model']}", flush=True)
        t0 = time.time()
        res = run(cfg, echo=not args.quiet)
        print(f"[{name}] {res.get('status')} in {time.time() - t0:.0f}s", flush=True)
        results[name] = res
        if res.get("status") != "done":
            break
    return results


# ------------------------------------------------------------------------ investigation
# Short runs (same data, same schedule shape, fewer iterations) that ask why C-RBP does or does
# not beat the memory-matched BPTT: is it the gradient / penalty (BPTT through all 20 steps),
# the contraction target lambda, the learning rate, the number of steps?
INVESTIGATIONS = {
    "crbp": ("crbp", {}),
    "bptt_same_memory": ("bptt", {}),
    "bptt_20_steps": ("bptt", {"model": {"steps": 20}}),
    "crbp_lambda_0.99": ("crbp", {"model": {"lcp_lambda": 0.99}}),
    "crbp_penalty_weight_1": ("crbp", {"model": {"penalty_weight": 1.0}}),
    "crbp_lr_0.005": ("crbp", {"train": {"lr": 0.005}}),
    "crbp_10_steps": ("crbp", {"model": {"steps": 10}}),
}


def investigate(args, memory) -> dict:
    from crbp_detectron.pathfinder.runner import merge

    results = {}
    for key in args.investigate:
        base, override = INVESTIGATIONS[key]
        cfg = config_for(base, args, memory["bptt_steps_same_memory"])
        cfg = merge(cfg, override)
        cfg["output_dir"] = os.path.join(args.out, "investigate", key)
        cfg["train"].update(iterations=args.investigate_iterations, eval_every=0)
        cfg["eval"].update(sweep_lengths=[max(cfg["data"]["train_lengths"])], sweep_max_steps=40)
        cfg["data"]["test_lengths"] = [max(cfg["data"]["train_lengths"])]
        done = finished_result(cfg["output_dir"])
        if done is not None:
            results[key] = done
            continue
        print(f"[investigate {key}] {cfg['model']} {cfg['train'].get('lr')}", flush=True)
        results[key] = run(cfg, echo=not args.quiet)
    return results


def load_investigation(args) -> dict:
    found = {key: finished_result(os.path.join(args.out, "investigate", key)) for key in INVESTIGATIONS}
    return {key: res for key, res in found.items() if res is not None}


def _final_task_loss(out_dir, last=4):
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.exists(path):
        return float("nan")
    with open(path) as f:
        entries = [json.loads(line) for line in f if '"task_loss"' in line]
    return float(np.mean([e["task_loss"] for e in entries[-last:]])) if entries else float("nan")


# ------------------------------------------------------------------------------- report
def _load_results(args):
    found = {name: finished_result(os.path.join(args.out, name)) for name in MODELS}
    return {name: res for name, res in found.items() if res is not None}


def _sweep_iou(res, length, steps):
    sweep = res.get("sweep", {}).get(str(length))
    if not sweep or steps > len(sweep):
        return float("nan")
    return sweep[steps - 1]["iou"]


def plot_steps(results, lengths, path, horizon_2x):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), sharey=True, squeeze=False)
    colors = {"crbp": "tab:blue", "bptt": "tab:red", "cbptt": "tab:orange", "rbp": "tab:green", "cnn": "tab:gray"}
    for ax, length in zip(axes[0], lengths):
        for name, res in results.items():
            if name == "cnn":
                ax.axhline(res["test"][str(length)]["iou"], color=colors[name], ls=":", label=LABELS[name])
                continue
            sweep = res.get("sweep", {}).get(str(length))
            if not sweep:
                continue
            steps = [s["steps"] for s in sweep]
            ax.plot(steps, [s["iou"] for s in sweep], color=colors[name],
                    label=f"{LABELS[name]} ({res['model']['steps']} steps)")
            ax.axvline(res["model"]["steps"], color=colors[name], ls="--", lw=0.8, alpha=0.6)
        ax.set_title(f"contour length {length}")
        ax.set_xlabel("test-time steps")
        ax.set_xlim(1, horizon_2x)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("IoU (pooled pixels)")
    axes[0][0].set_ylim(0, 1)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Pathfinder (32 px): IoU against test-time steps; dashed lines = training horizon", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_evolution(args, results, length, path, max_steps):
    """One test sample of the longest length: the predicted probability after each of a few
    steps, for C-RBP and BPTT (same batch as in the evaluation: the cell's BatchNorm uses batch
    statistics)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("crbp", "bptt", "cbptt", "rbp") if n in results]
    if not names:
        return
    cfg0 = config_for(names[0], args)
    x, y = test_tensors(cfg0["data"], length)
    batch = cfg0["eval"]["batch_size"]
    x, y = x[:batch], y[:batch]
    # The sample: the one whose C-RBP IoU at its horizon is the median of the batch's.
    cols = sorted({1, 2, 3, 5, 10, 15, 20, 30, max_steps} | {results[n]["model"]["steps"] for n in names})
    cols = [c for c in cols if c <= max_steps]
    outputs = {}
    for name in names:
        cfg = config_for(name, args)
        model = build_model(results[name]["model"])  # the model as trained (memory-matched steps)
        state = torch.load(os.path.join(cfg["output_dir"], "checkpoint.pth"), map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        model.eval()
        outputs[name] = [torch.sigmoid(o) for o in model.step_outputs(x, max_steps)]
    ref = outputs[names[0]][results[names[0]]["model"]["steps"] - 1] > 0.5
    inter = (ref & (y > 0.5)).flatten(1).sum(1).float()
    union = (ref | (y > 0.5)).flatten(1).sum(1).float().clamp_min(1)
    ious = (inter / union).numpy()
    i = int(np.argsort(ious)[len(ious) // 2])
    fig, axes = plt.subplots(len(names), len(cols) + 2, figsize=(1.5 * (len(cols) + 2), 1.65 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        axes[r, 0].imshow(x[i, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[r, 1].imshow(y[i, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[r, 0].set_ylabel(f"{LABELS[name]}\n({results[name]['model']['steps']} steps)", fontsize=7)
        if r == 0:
            axes[r, 0].set_title("image", fontsize=8)
            axes[r, 1].set_title("label", fontsize=8)
        for c, t in enumerate(cols):
            axes[r, c + 2].imshow(outputs[name][t - 1][i, 0], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                axes[r, c + 2].set_title(f"step {t}", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"One contour of length {length}: predicted probability after each step", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(args, lengths, path, per_length=6):
    """Test samples of every length (image above label), one row pair per length."""
    from crbp_detectron.data.pathfinder import save_preview
    from crbp_detectron.pathfinder.runner import dataset_for

    cfg = config_for("crbp", args)
    samples = []
    for length in lengths:
        ds = dataset_for(cfg["data"], "test", length)
        for i in range(per_length):
            samples.append({"image": np.asarray(ds.images[i]), "mask": ds.mask(i), "class": None})
    save_preview(path, samples, columns=per_length,
                 title="Test samples, lengths " + ", ".join(map(str, lengths)) + " (rows); label in red")


def _fmt(v, digits=3):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def write_report(args, memory, results, command, wall):
    cfg = config_for("crbp", args)
    data = cfg["data"]
    train_lengths = data["train_lengths"]
    lengths = data["test_lengths"]
    horizon = cfg["model"]["steps"]
    max_steps = int(cfg["eval"]["sweep_max_steps"] or 2 * horizon)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    steps_png = os.path.join(RESULTS_DIR, "pathfinder_steps.png")
    evo_png = os.path.join(RESULTS_DIR, "pathfinder_evolution.png")
    plot_steps(results, lengths, steps_png, max_steps)
    plot_evolution(args, results, max(train_lengths), evo_png, max_steps)
    plot_samples(args, lengths, os.path.join(RESULTS_DIR, "pathfinder_samples.png"))

    mib = lambda b: b / 2 ** 20  # noqa: E731
    lines = [
        "# Pathfinder at CPU scale: C-RBP against BPTT at equal training memory",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        "(it skips what its output folder already holds, so an interrupted run continues; "
        "`--report-only` rewrites this file from the stored results). "
        f"Training time of the five models: {sum(r['train']['seconds'] for r in results.values()) / 60:.1f} min, "
        f"evaluation {sum(r.get('eval_seconds', 0) for r in results.values()) / 60:.1f} min (test data generation "
        "included); one CPU thread per run on a shared 2-core machine, so times are indicative.",
        "",
        "## Set-up",
        "",
        f"- Data (`crbp_detectron/data/pathfinder.py`): {data['generator']['size']}x{data['generator']['size']} "
        f"canvas, dashed contours of {', '.join(map(str, train_lengths))} paddles "
        f"({data['generator']['paddle_length']} px paddles, {data['generator']['gap']} px gaps, turns up to "
        f"±{data['generator']['continuity']:.0f}°), {data['generator']['distractors']} distractor paths "
        f"({data['generator'].get('long_distractors', 0)} as long as the target, the others of "
        f"{data['generator']['distractor_length']} paddles) that keep {data['generator']['clearance']} blank px "
        f"from the target; marker dot at one end. Training: {data['train_per_length']} images per length, "
        f"mixed; test: {data['test_per_length']} images per length"
        + (f", and length {', '.join(str(l) for l in lengths if l not in train_lengths)} never seen in training "
           "(out of distribution)." if any(l not in train_lengths for l in lengths) else "."),
        f"- hGRU (`crbp_detectron/pathfinder/model.py`): {cfg['model']['channels']} channels, "
        f"{cfg['model']['kernel_size']}x{cfg['model']['kernel_size']} recurrent kernels, 7x7 squared front-end, "
        "BatchNorm (batch statistics in the cell, in training and at test), readout Norm -> 1x1 conv to one logit; "
        f"{results.get('crbp', {}).get('parameters', '–')} parameters. CNN: same front-end and readout, six "
        f"5x5 conv layers, {results.get('cnn', {}).get('parameters', '–')} parameters.",
        f"- Training (`configs/pathfinder/*.yaml`): Adam, lr {cfg['train']['lr']} with {cfg['train'].get('warmup', 0)}"
        f" warm-up iterations and cosine decay, batch {cfg['train']['batch_size']}, "
        f"{cfg['train']['iterations']} iterations, focal loss (alpha {cfg['train']['focal_alpha']}, gamma "
        f"{cfg['train']['focal_gamma']}), random flips/transposes. C-RBP: {horizon} steps, "
        f"{cfg['model']['neumann_steps']} Neumann terms, LCP lambda {cfg['model']['lcp_lambda']} "
        f"(mean, weight {cfg['model']['penalty_weight']}). Metrics on pooled pixel counts, threshold 0.5.",
        "",
        "![test samples](pathfinder_samples.png)",
        "",
        "## Memory: bytes saved for the backward pass (one training iteration, "
        f"batch {memory['batch']}, torch.autograd.graph.saved_tensors_hooks)",
        "",
        "| model | steps | saved for backward (MiB) |",
        "|---|---|---|",
        f"| C-RBP | {memory['crbp_steps']} | {mib(memory['crbp']):.1f} |",
        f"| C-RBP | {2 * memory['crbp_steps']} | {mib(memory['crbp_2x_steps']):.1f} |",
        f"| RBP (no LCP) | {memory['crbp_steps']} | {mib(memory['rbp']):.1f} |",
    ]
    for k in (1, 2, 3, 4, 6, 10):
        lines.append(f"| BPTT | {k} | {mib(memory['bptt'][str(k)]):.1f} |")
    k_eq = memory["bptt_steps_same_memory"]
    lines += [
        f"| C-BPTT | {k_eq} | {mib(memory['cbptt'][str(k_eq)]):.1f} |",
        f"| CNN | – | {mib(memory['cnn']):.1f} |",
        "",
        f"C-RBP's memory does not grow with its steps; BPTT's grows by "
        f"{mib(memory['bptt']['2'] - memory['bptt']['1']):.1f} MiB per step. The BPTT with the same memory as "
        f"C-RBP-{memory['crbp_steps']} has **{k_eq} steps** (the most whose bytes are <= C-RBP's): that is the "
        "BPTT trained here (C-BPTT uses the same steps).",
        "",
        "## IoU per contour length (the paper's table shape)",
        "",
        "| model | train steps | train memory (MiB) | " + " | ".join(
            f"L={l}" + ("" if l in train_lengths else " (OOD)") for l in lengths)
        + " | train time (min) | s / iteration | paper PF-14 / 20 / 25 |",
        "|---|---|---|" + "---|" * len(lengths) + "---|---|---|",
    ]
    for name in MODELS:
        if name not in results:
            lines.append(f"| {LABELS[name]} | not run | | " + " | " * len(lengths) + " | |")
            continue
        res = results[name]
        steps = res["model"].get("steps", "–")
        mem = {"crbp": memory["crbp"], "rbp": memory["rbp"], "cnn": memory["cnn"]}.get(name)
        if name in ("bptt", "cbptt"):
            mem = memory[name].get(str(steps))
        ious = " | ".join(_fmt(res["test"][str(l)]["iou"]) for l in lengths)
        tr = res["train"]
        lines.append(f"| {LABELS[name]} | {steps} | {_fmt(mib(mem) if mem else None, 1)} | {ious} | "
                     f"{tr['seconds'] / 60:.1f} | {tr['seconds_per_iteration']:.2f} | {PAPER[name]} |")
    lines += ["", "F1 and balanced accuracy at the training horizon:", "",
              "| model | " + " | ".join(f"L={l} F1 / bal. acc." for l in lengths) + " |",
              "|---|" + "---|" * len(lengths)]
    for name in MODELS:
        if name in results:
            t = results[name]["test"]
            lines.append(f"| {LABELS[name]} | " + " | ".join(
                f"{_fmt(t[str(l)]['f1'])} / {_fmt(t[str(l)]['balanced_accuracy'])}" for l in lengths) + " |")

    # Learning curves: validation IoU (first val_count test images of the longest training length)
    # and the training loss during training.
    curves = {}
    for name in MODELS:
        path = os.path.join(args.out, name, "log.jsonl")
        if name in results and os.path.exists(path):
            with open(path) as f:
                curves[name] = [json.loads(line) for line in f]
    if curves:
        its = sorted({e["iter"] for c in curves.values() for e in c if "val_iou" in e})
        lines += ["", f"Learning curves (validation IoU on {cfg['eval']['val_count']} images of length "
                  f"{max(train_lengths)}, focal training loss averaged over the preceding {cfg['train']['log_every']}"
                  " iterations):", "",
                  "| model | " + " | ".join(f"it {i}" for i in its) + " |", "|---|" + "---|" * len(its)]
        for name, entries in curves.items():
            val = {e["iter"]: e["val_iou"] for e in entries if "val_iou" in e}
            loss = {e["iter"]: e["task_loss"] for e in entries if "task_loss" in e}
            lines.append(f"| {LABELS[name]} | " + " | ".join(
                f"{_fmt(val.get(i))} ({loss[i]:.4f})" if i in loss else _fmt(val.get(i)) for i in its) + " |")

    lines += ["", f"## Beyond the horizon: IoU against test-time steps (to {max_steps} steps)", "",
              "![IoU against test-time steps](pathfinder_steps.png)", "",
              "| model | length | IoU at horizon | IoU at 2x horizon | ratio | IoU at step "
              f"{max_steps} | best IoU (step) |", "|---|---|---|---|---|---|---|"]
    for name in ("crbp", "bptt", "cbptt", "rbp"):
        if name not in results:
            continue
        res = results[name]
        h = res["model"]["steps"]
        for l in lengths:
            at_h, at_2h, at_max = _sweep_iou(res, l, h), _sweep_iou(res, l, 2 * h), _sweep_iou(res, l, max_steps)
            sweep = res["sweep"][str(l)]
            best = max(sweep, key=lambda s: s["iou"])
            ratio = at_2h / at_h if at_h and np.isfinite(at_h) and at_h > 0 else float("nan")
            lines.append(f"| {LABELS[name]} ({h}) | {l} | {_fmt(at_h)} | {_fmt(at_2h)} | {_fmt(ratio, 2)} | "
                         f"{_fmt(at_max)} | {_fmt(best['iou'])} ({best['steps']}) |")
    lines += ["", "## One sample over the steps", "", "![segmentation over steps](pathfinder_evolution.png)", ""]
    inv = load_investigation(args)
    if inv:
        any_res = next(iter(inv.values()))
        length = next(iter(any_res["test"]))
        iters = any_res["train"]["iterations"]
        lines += ["## Investigation: short runs", "",
                  f"Same data and recipe, {iters} iterations each (cosine schedule over those {iters}), "
                  f"evaluated on length {length}. Command: `python benchmarks/pathfinder_experiment.py "
                  f"--investigate {' '.join(inv)} --investigate-iterations {iters}`.", "",
                  f"| run | mode | steps | lambda | penalty weight | lr | final train loss | IoU L={length} at "
                  f"horizon | best IoU (step) | IoU at step {max_steps} | train memory (MiB) | s / iteration |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, res in inv.items():
            m = res["model"]
            sweep = res["sweep"][length]
            best = max(sweep, key=lambda s: s["iou"])
            mem, approx = None, ""
            if m["mode"] in ("bptt", "cbptt"):
                table = memory[m["mode"]]
                mem = table.get(str(m["steps"]))
                if mem is None:  # beyond the probe: BPTT's bytes are linear in the steps
                    mem = table["1"] + (table["2"] - table["1"]) * (m["steps"] - 1)
                    approx = "≈ "
            elif m["mode"] in ("crbp", "rbp"):
                mem = memory[m["mode"]]
            cfg_k = json.load(open(os.path.join(args.out, "investigate", key, "config.json")))
            lines.append(
                f"| {key} | {m['mode']} | {m['steps']} | "
                + (f"{m.get('lcp_lambda')} | {m.get('penalty_weight')} | " if m["mode"] in ("crbp", "cbptt") else "– | – | ")
                + f"{cfg_k['train']['lr']} | "
                f"{_final_task_loss(os.path.join(args.out, 'investigate', key)):.4f} | "
                f"{_fmt(res['test'][length]['iou'])} | {_fmt(best['iou'])} ({best['steps']}) | "
                f"{_fmt(sweep[-1]['iou'])} | {approx}{_fmt(mib(mem) if mem else None, 1)} | "
                f"{res['train']['seconds_per_iteration']:.2f} |")
        lines.append("")
    notes = os.path.join(args.out, "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += [f.read().rstrip(), ""]
    with open(os.path.join(RESULTS_DIR, "pathfinder.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.join(RESULTS_DIR, "pathfinder.md"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "output", "pathfinder_experiment"))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--iterations", type=int, default=0, help="override train.iterations for every model")
    p.add_argument("--override", nargs="*", default=[], help="key.sub=value applied to every config")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds); not a result")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--investigate", nargs="*", default=[], choices=list(INVESTIGATIONS),
                   help="also run these short investigation runs (after the models)")
    p.add_argument("--investigate-iterations", type=int, default=300)
    args = p.parse_args(argv)
    command = "python benchmarks/pathfinder_experiment.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.report_only:  # the command that produces the stored results
        inv = load_investigation(args)
        command = "python benchmarks/pathfinder_experiment.py"
        if inv:
            iters = next(iter(inv.values()))["train"]["iterations"]
            command += f" --investigate {' '.join(inv)} --investigate-iterations {iters}"
    t0 = time.time()
    memory = memory_probe(args)
    print(f"memory: C-RBP {memory['crbp'] / 2**20:.1f} MiB; BPTT steps at the same memory: "
          f"{memory['bptt_steps_same_memory']}", flush=True)
    if not args.report_only:
        run_models(args, memory)  # finished models are skipped
        investigate(args, memory)
    results = _load_results(args)
    if not args.no_report and results:
        if args.quick:
            global RESULTS_DIR
            RESULTS_DIR = os.path.join(args.out, "report")
        write_report(args, memory, results, command.strip(), time.time() - t0)


if __name__ == "__main__":
    main()

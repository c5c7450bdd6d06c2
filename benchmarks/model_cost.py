"""Whole-model cost of C-RBP: Panoptic FPN R-50, model-zoo feed-forward against the recurrent
mask head (C-RBP at 5/10/20/40 steps, with the recompute and the recorded implicit step), BPTT-5/20
and the recurrent FPN (issue 12).

    python -m benchmarks.model_cost --threads 1                                  # everything
    python -m benchmarks.model_cost --workloads train --rois 4 32 128 --threads 1
    python -m benchmarks.model_cost --workloads infer --sizes 256x256 800x1333 --detections 5 20 100
    python -m benchmarks.model_cost --device cuda --workloads train infer       # GPU suite

train: one training step (forward, summed losses incl. penalties, backward) on one image of
       --train-size^2 with N ground-truth boxes, N RoIs forced into the mask head (see
       model_cost_cases). Saved-for-backward bytes (each storage once, parameters and the image
       left out; split by module), and the peak memory: on a CPU the peak RSS increase of the step
       in a fresh subprocess per configuration (benchmarks.memory.peak_rss_in_subprocess, after a
       warm-up step at 1 recurrent step and 1 VJP); on a GPU torch.cuda.max_memory_allocated.
infer: eval-mode forward of one image per size, K detections forced: FLOPs by fvcore's
       FlopCountAnalysis (Detectron2's wrapper; deterministic), wall time (median, round-robin with
       the feed-forward model, ratios paired per round). The per-sample-stop row uses MODEL.CRBP.TOL
       = --tol; its steps depend on the data and the (here random) weights.
Each workload's table is written as soon as it is done (a time-out keeps finished work).
"""
import argparse
import os
import sys
from typing import Dict

import torch

from crbp_detectron.utils.tables import markdown_table

from . import model_cost_cases as cases
from .machine import machine_info, machine_line
from .memory import MIB, REPO_ROOT, cuda_peak_bytes, peak_rss_in_subprocess
from .report import command_line, print_parent_peak
from .timing import paired_ratio
FF = "feed-forward (model zoo)"


def run_train(args, results: Dict, write):
    for rois in args.rois:
        rows = results.setdefault("train", {}).setdefault(rois, {})
        for name in args.train_configs:
            if f"{name}@{rois}" in args.skip:
                rows[name] = {"error": "skipped (--skip)"}
                continue
            case = {"config": name, "rois": rois, "size": args.train_size, "device": args.device}
            print(f"== train {name}, {rois} RoIs", flush=True)
            if args.device.startswith("cuda"):
                built = cases.build_train_case(case)
                built.step()  # warm-up
                for param in built.inputs:  # as in a CPU child: no gradients held before the step
                    param.grad = None
                rows[name] = dict(peak=cuda_peak_bytes(built.step, args.device), **built.report())
                del built
                torch.cuda.empty_cache()
            else:
                r = peak_rss_in_subprocess(cases.FACTORY, case, timeout=args.timeout)
                rows[name] = dict(r, peak=r.get("peak_rss_increase_bytes"))
            print(f"   {rows[name].get('saved_bytes', 0) / MIB:.1f} MiB saved, peak "
                  f"{(rows[name].get('peak') or 0) / MIB:.1f} MiB, {rows[name].get('error', '')}", flush=True)
        write()


def run_infer(args, results: Dict, write):
    for size in args.sizes:
        large = size[0] * size[1] > 500_000 and not args.device.startswith("cuda")
        for k in args.detections:
            names = [n for n in args.infer_configs if not (large and n in cases.EXPENSIVE)]
            print(f"== infer {size[0]}x{size[1]}, {k} detections: {names}", flush=True)
            rows = cases.measure_inference(names, size, k, args.repeats, args.device, args.tol)
            results.setdefault("infer", {}).setdefault(tuple(size), {})[k] = rows
            write()
        expensive = [n for n in args.infer_configs if large and n in cases.EXPENSIVE]
        if expensive:  # one run at the largest detection count
            k = max(args.detections)
            print(f"== infer {size[0]}x{size[1]}, {k} detections: {expensive} (1 run)", flush=True)
            rows = cases.measure_inference([FF] + expensive, size, k, 1, args.device, args.tol)
            results["infer"][tuple(size)][k].update({n: rows[n] for n in expensive})
            write()


# ----------------------------------------------------------------------------------- output
def _ratio(a, b):
    return a / b if a is not None and b else None


def train_tables(results) -> list:
    lines = []
    for rois, rows in results.get("train", {}).items():
        ff = rows.get(FF, {})
        table = []
        for name, r in rows.items():
            mask = (r.get("saved_by_module") or {}).get("roi_heads.mask_head")
            table.append([name, ",".join(map(str, r.get("rois_seen", []))) or r.get("error", "–"),
                          _mib(r.get("saved_bytes")), _ratio(r.get("saved_bytes"), ff.get("saved_bytes")),
                          _mib(mask), _mib(r.get("peak")), _ratio(r.get("peak"), ff.get("peak")), r.get("seconds")])
        lines += [f"### Training, {rois} RoIs per image", "", markdown_table(
            ["config", "RoIs in the mask head", "saved for backward (MiB)", "÷ feed-forward",
             "mask head's share (MiB)", "peak memory (MiB)", "÷ feed-forward", "step (s)"], table), ""]
    return lines


def infer_tables(results) -> list:
    lines = []
    for size, by_k in results.get("infer", {}).items():
        table = []
        for k, rows in by_k.items():
            ff = rows.get(FF, {})
            for name, r in rows.items():
                paired = paired_ratio(r.get("times", []), ff.get("times", [])) if name != FF else 1.0
                table.append([k, name, ",".join(map(str, r.get("rois_seen", []))), r["flops"] / 1e9,
                              _ratio(r["flops"], ff.get("flops")), r["mask_head_flops"] / 1e9,
                              r.get("mean_steps"), r["time"] * 1e3, paired])
        lines += [f"### Inference, {size[0]}x{size[1]}", "", markdown_table(
            ["detections", "config", "RoIs in the mask head", "GFLOPs (fvcore)", "÷ feed-forward",
             "mask head GFLOPs", "mask-head steps per RoI", "time (ms, median)", "÷ feed-forward (paired)"],
            table), ""]
    return lines


def goals(results) -> list:
    out = []
    train = results.get("train", {})
    for rois in (32, 128):
        rows = train.get(rois, {})
        for name in ("crbp-20", "crbp-20 (recorded step)"):
            r = _ratio(rows.get(name, {}).get("saved_bytes"), rows.get(FF, {}).get("saved_bytes"))
            if r is not None:
                out.append(f"- {name} training memory ÷ feed-forward at {rois} RoIs (saved bytes): **{r:.3f}** (target <= 1.05)")
    for rois in (32, 128):  # the whole iteration's peak (issue 27), not only what the forward saves
        rows = train.get(rois, {})
        for name in [n for n in rows if n.startswith("crbp-20")]:
            r = _ratio(rows[name].get("peak"), rows.get(FF, {}).get("peak"))
            if r is not None:
                out.append(f"- {name} peak memory of a training iteration ÷ feed-forward at {rois} RoIs: "
                           f"**{r:.3f}** (target <= 1.10)")
    for rois, rows in train.items():
        r = _ratio(rows.get("crbp-40", {}).get("saved_bytes"), rows.get("crbp-5", {}).get("saved_bytes"))
        if r is not None:
            out.append(f"- crbp memory at 40 steps ÷ at 5 steps, {rois} RoIs (saved bytes): **{r:.3f}** (target <= 1.01)")
    for size, by_k in results.get("infer", {}).items():
        rows = by_k.get(100, {})
        for name in rows:
            if name == FF:
                continue
            flops = _ratio(rows[name]["flops"], rows[FF]["flops"])
            time_ratio = paired_ratio(rows[name].get("times", []), rows[FF].get("times", []))
            out.append(f"- {name} ÷ feed-forward at 100 detections, {size[0]}x{size[1]}: FLOPs **{flops:.2f}** "
                       f"(target <= 1.38 at 800x1333), wall time {time_ratio:.2f}")
    return out


def _mib(v):
    return v / MIB if v is not None else None


def write_markdown(args, argv, info, results, path):
    lines = ["# Whole-model cost: Panoptic FPN R-50, feed-forward vs C-RBP", "", "Command (from the repository root):",
             "", "```", command_line("benchmarks.model_cost", argv), "```", "",
             "Machine: " + machine_line(info) + " (CPU shared with other jobs: times are indicative).", "",
             __doc__.split("\n\n", 2)[2].strip(), "", cases.__doc__.split("\n\n", 1)[1].strip(), "",
             f"Training image: {args.train_size}x{args.train_size}. Per-sample stop: MODEL.CRBP.TOL = {args.tol}.", "",
             "## Goals", ""] + goals(results) + ["", "## Tables", ""] + train_tables(results) + infer_tables(results)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path}", flush=True)


def plot(results, out_dir):
    from crbp_detectron.utils.plotting import saved_figure

    train = {k: rows for k, rows in results.get("train", {}).items() if rows.get(FF, {}).get("saved_bytes")}
    if train:
        with saved_figure(os.path.join(out_dir, "model_cost_train.png"), "training: saved bytes ÷ feed-forward",
                          "RoIs per image", "ratio", figsize=(6, 4)) as ax:
            for name in [n for n in next(iter(train.values())) if n != FF]:
                xs = [k for k in train if train[k].get(name, {}).get("saved_bytes")]
                ax.plot(xs, [train[k][name]["saved_bytes"] / train[k][FF]["saved_bytes"] for k in xs],
                        marker="o", label=name)
            ax.axhline(1.05, color="k", ls="--", lw=0.8, label="target 1.05")
            if len(train) > 1:
                ax.set_xscale("log", base=2)
    infer = {size: {k: rows for k, rows in by_k.items() if FF in rows}
             for size, by_k in results.get("infer", {}).items()}
    infer = {size: by_k for size, by_k in infer.items() if by_k}
    if infer:
        with saved_figure(os.path.join(out_dir, "model_cost_infer.png"), "inference: FLOPs ÷ feed-forward",
                          "detections per image", "ratio", figsize=(6, 4)) as ax:
            for size, by_k in infer.items():
                for name in [n for n in next(iter(by_k.values())) if n != FF]:
                    ks = [k for k in by_k if name in by_k[k]]
                    ax.plot(ks, [by_k[k][name]["flops"] / by_k[k][FF]["flops"] for k in ks], marker="o",
                            label=f"{name}, {size[0]}x{size[1]}")
            ax.axhline(1.38, color="k", ls="--", lw=0.8, label="target 1.38")


def parse_size(text: str):
    h, _, w = text.partition("x")
    return (int(h), int(w or h))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--rois", type=int, nargs="+", default=[4, 32, 128])
    p.add_argument("--train-size", type=int, default=256)
    p.add_argument("--train-configs", nargs="+", default=list(cases.TRAIN_CONFIGS), choices=list(cases.TRAIN_CONFIGS))
    p.add_argument("--skip", nargs="*", default=[], metavar="CONFIG@ROIS",
                   help="training configurations not to run, e.g. 'bptt-20@128' (memory of a shared machine)")
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(256, 256), (800, 1333)])
    p.add_argument("--detections", type=int, nargs="+", default=[5, 20, 100])
    p.add_argument("--infer-configs", nargs="+", default=[n for n in cases.INFER_CONFIGS if n != cases.EARLY_STOP],
                   choices=list(cases.INFER_CONFIGS))
    p.add_argument("--tol", type=float, default=1e-3, help="MODEL.CRBP.TOL of the per-sample-stop row")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per training subprocess")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    info = machine_info(args.device)
    results: Dict = {}
    path = os.path.join(args.out, "model_cost.md")

    def write():
        write_markdown(args, argv, info, results, path)
        plot(results, args.out)

    if "train" in args.workloads:
        run_train(args, results, write)
    if "infer" in args.workloads:
        run_infer(args, results, write)
    print_parent_peak()
    return results


if __name__ == "__main__":
    main()

"""Pathfinder where contour length matters: the hGRU trained with C-RBP against the hGRU trained
with BPTT at the same training memory, C-BPTT, RBP without the penalty and a parameter-matched
CNN; IoU per contour length (the longest out of distribution), IoU against test-time steps to
twice the horizon, and one contour's segmentation over the steps. Several seeds per model.

    python -m benchmarks.pathfinder.experiment                    # every model, 3 seeds (resumable)
    python -m benchmarks.pathfinder.experiment --report-only      # tables and plots from the results

The configs are configs/pathfinder/*.yaml; this script measures the training memory of every
model (memory.json), sets the BPTT steps that fit in C-RBP's memory, runs the models
(benchmarks/results/pathfinder/experiment/<model>/seed<k>.json, with each run's weights beside it:
70 kB at 16 channels, for the pictures and benchmarks.pathfinder.selection) and writes
benchmarks/results/pathfinder.md with pathfinder_*.png.
"""
import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import torch

from crbp_detectron.pathfinder.config import load_pathfinder_config
from crbp_detectron.pathfinder.data import generator_config, test_name, test_tensors
from crbp_detectron.pathfinder.engine import PathfinderTrainer, prepare_datasets, training_memory
from crbp_detectron.tables import markdown_table

from . import report
from .runs import REPO, RESULTS_DIR, Run, execute_all, experiment_dir, load_experiment

EXPERIMENT = "experiment"
# model: (label, config)
MODELS = {
    "crbp": ("hGRU C-RBP", "pathfinder/crbp.yaml"),
    "bptt": ("hGRU BPTT, same memory", "pathfinder/bptt.yaml"),
    "cbptt": ("hGRU C-BPTT, same steps as BPTT", "pathfinder/cbptt.yaml"),
    "rbp": ("hGRU RBP (no penalty)", "pathfinder/rbp.yaml"),
    "cnn": ("CNN, parameter-matched", "pathfinder/cnn.yaml"),
    "bptt_full": ("hGRU BPTT, C-RBP's steps", "pathfinder/bptt.yaml"),
    # the recipe's alternatives (configs/pathfinder/crbp*.yaml)
    "crbp_steps64": ("hGRU C-RBP, 64 steps", "pathfinder/crbp_steps64.yaml"),
    "crbp_lambda095_steps64": ("hGRU C-RBP, 64 steps, LCP lambda 0.95", "pathfinder/crbp_lambda095_steps64.yaml"),
    "crbp_lambda099_steps64": ("hGRU C-RBP, 64 steps, LCP lambda 0.99", "pathfinder/crbp_lambda099_steps64.yaml"),
    # trained with two distractors as long as the target and no short ones (tested as the others)
    "crbp_long_distractors_steps64": ("hGRU C-RBP, 64 steps, trained on long distractors only",
                                      "pathfinder/crbp_long_distractors_steps64.yaml"),
    "bptt_long_distractors": ("hGRU BPTT-1, trained on long distractors only", "pathfinder/bptt_long_distractors.yaml"),
    # another cycle of 1000 iterations from a model's final weights, seed by seed (CONTINUES)
    "crbp_continued_steps64": ("hGRU C-RBP, 64 steps, 2000 iterations (1000 more)",
                               "pathfinder/crbp_continued_steps64.yaml"),
    "bptt_continued": ("hGRU BPTT, same memory, 2000 iterations (1000 more)", "pathfinder/bptt_continued.yaml"),
    "cnn_continued": ("CNN, parameter-matched, 2000 iterations (1000 more)", "pathfinder/cnn_continued.yaml"),
    "crbp_continued_twice_steps64": ("hGRU C-RBP, 64 steps, 3000 iterations (2000 more)",
                                     "pathfinder/crbp_continued_twice_steps64.yaml"),
    "bptt_continued_twice": ("hGRU BPTT, same memory, 3000 iterations (2000 more)",
                             "pathfinder/bptt_continued_twice.yaml"),
    # the tracing recipe with the accelerated forward (Anderson, MODEL.CRBP.FORWARD), cycle by cycle
    "crbp_anderson_steps64": ("hGRU C-RBP, 64 steps, Anderson forward", "pathfinder/crbp_anderson_steps64.yaml"),
    "crbp_anderson_continued_steps64": ("hGRU C-RBP, 64 steps, Anderson forward, 2000 iterations (1000 more)",
                                        "pathfinder/crbp_anderson_continued_steps64.yaml"),
    "crbp_anderson_continued_twice_steps64": ("hGRU C-RBP, 64 steps, Anderson forward, 3000 iterations (2000 more)",
                                              "pathfinder/crbp_anderson_continued_twice_steps64.yaml"),
    # the models at 10 channels, the experiment's width before 16, and the recipes tried there
    "crbp_channels10": ("hGRU C-RBP, 10 ch", "pathfinder/crbp_channels10.yaml"),
    "bptt_channels10": ("hGRU BPTT-1, 10 ch", "pathfinder/bptt_channels10.yaml"),
    "cbptt_channels10": ("hGRU C-BPTT-1, 10 ch", "pathfinder/cbptt_channels10.yaml"),
    "rbp_channels10": ("hGRU RBP (no penalty), 10 ch", "pathfinder/rbp_channels10.yaml"),
    "cnn_channels10": ("CNN, parameter-matched, 10 ch", "pathfinder/cnn_channels10.yaml"),
    "crbp_steps24_channels10": ("hGRU C-RBP, 24 steps, 10 ch", "pathfinder/crbp_steps24_channels10.yaml"),
    "rbp_steps24_channels10": ("hGRU RBP (no penalty), 24 steps, 10 ch", "pathfinder/rbp_steps24_channels10.yaml"),
    "crbp_weight10_steps24_channels10": ("hGRU C-RBP, 24 steps, penalty weight 10, 10 ch",
                                         "pathfinder/crbp_weight10_steps24_channels10.yaml"),
    "crbp_weight3_channels10": ("hGRU C-RBP, penalty weight 3, 10 ch", "pathfinder/crbp_weight3_channels10.yaml"),
    "crbp_weight10_channels10": ("hGRU C-RBP, penalty weight 10, 10 ch", "pathfinder/crbp_weight10_channels10.yaml"),
    "crbp_delayed_channels10": ("hGRU C-RBP, penalty from iteration 400, 10 ch",
                                "pathfinder/crbp_delayed_channels10.yaml"),
}
# model: the model whose final weights (same seed) it starts from
CONTINUES = {"crbp_continued_steps64": "crbp_steps64", "bptt_continued": "bptt", "cnn_continued": "cnn",
             "crbp_continued_twice_steps64": "crbp_continued_steps64", "bptt_continued_twice": "bptt_continued",
             "crbp_anderson_continued_steps64": "crbp_anderson_steps64",
             "crbp_anderson_continued_twice_steps64": "crbp_anderson_continued_steps64"}
DEFAULT_MODELS = ("crbp", "bptt", "cbptt", "rbp", "cnn")
FEED_FORWARD = ("cnn", "cnn_channels10", "cnn_continued")  # no recurrence: no steps, no evolution, no equilibrium
# the pictures' models (every model is in the tables)
PICTURED = DEFAULT_MODELS + ("crbp_steps64", "crbp_continued_steps64", "crbp_continued_twice_steps64")
MAX_BPTT_STEPS = 12


class Setting:
    """Where results go, where data are cached, and overrides applied to every model (e.g. a
    short smoke run: --opts SOLVER.MAX_ITER 4)."""

    def __init__(self, results_dir: str = RESULTS_DIR, data_root: str = "", opts=()):
        self.results_dir, self.data_root, self.opts = results_dir, data_root, list(opts)

    @property
    def memory_json(self):
        return os.path.join(experiment_dir(self.results_dir, EXPERIMENT), "memory.json")

    def run_opts(self, opts=()):
        return self.opts + list(opts) + (["PATHFINDER.DATA.ROOT", self.data_root] if self.data_root else [])

    def cfg(self, name: str, opts=()):
        cfg = load_pathfinder_config(MODELS[name][1], self.run_opts(opts))
        prepare_datasets(cfg)
        return cfg


def memory_probe(setting: Setting) -> dict:
    """Bytes saved for the backward of one training iteration (parameters not counted), for
    C-RBP at its steps and twice that, RBP, BPTT and C-BPTT at 1..MAX_BPTT_STEPS, the CNN; the
    memory-matched BPTT has the most steps whose bytes fit in C-RBP's."""
    if os.path.exists(setting.memory_json):
        with open(setting.memory_json) as f:
            return json.load(f)
    torch.manual_seed(0)
    crbp = setting.cfg("crbp")
    steps = crbp.MODEL.CRBP.STEPS

    def saved(name, *opts):
        cfg = setting.cfg(name, opts)
        return training_memory(cfg, PathfinderTrainer.build_model(cfg))["saved_bytes"]

    out = {"batch": crbp.PATHFINDER.EVAL.MEMORY_BATCH or crbp.SOLVER.IMS_PER_BATCH, "crbp_steps": steps,
           "crbp": saved("crbp"), "crbp_2x_steps": saved("crbp", "MODEL.CRBP.STEPS", 2 * steps), "rbp": saved("rbp"),
           "cnn": saved("cnn"), "bptt": {}, "cbptt": {}}
    for k in range(1, MAX_BPTT_STEPS + 1):
        out["bptt"][str(k)] = saved("bptt", "MODEL.CRBP.STEPS", k)
        out["cbptt"][str(k)] = saved("cbptt", "MODEL.CRBP.STEPS", k)
    fits = [k for k in range(1, MAX_BPTT_STEPS + 1) if out["bptt"][str(k)] <= out["crbp"]]
    out["bptt_steps_same_memory"] = max(fits) if fits else 1
    os.makedirs(os.path.dirname(setting.memory_json), exist_ok=True)
    with open(setting.memory_json, "w") as f:
        json.dump(out, f, indent=1)
    return out


def runs_for(models, seeds, memory, setting: Setting) -> list:
    runs = []
    for name in models:
        opts = []
        if first_run(name) in ("bptt", "cbptt"):
            opts = ["MODEL.CRBP.STEPS", memory["bptt_steps_same_memory"]]
        elif name == "bptt_full":
            opts = ["MODEL.CRBP.STEPS", memory["crbp_steps"]]
        for seed in seeds:
            seed_opts = opts + (["MODEL.WEIGHTS", start_weights(name, seed, setting)] if name in CONTINUES else [])
            runs.append(Run(EXPERIMENT, name, seed, MODELS[name][1], setting.run_opts(seed_opts), setting.results_dir))
    return runs


def first_run(name: str) -> str:
    """The model whose training a model continues, through every CONTINUES link (itself if none)."""
    while name in CONTINUES:
        name = CONTINUES[name]
    return name


def start_weights(name: str, seed: int, setting: Setting) -> str:
    """The final weights of the model `name` continues, same seed; relative to the repository when
    inside it (the runs work there), so that the recorded config does not depend on the clone."""
    source = CONTINUES[name]
    path = Run(EXPERIMENT, source, seed, MODELS[source][1], results_dir=setting.results_dir).weights_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} seed {seed} starts from {source}'s weights of that seed, {path}, "
                                f"which are missing: run --models {source} --seeds {seed} first")
    inside = os.path.commonpath([os.path.abspath(path), REPO]) == REPO
    return os.path.relpath(path, REPO) if inside else os.path.abspath(path)


# ------------------------------------------------------------------------------ pictures
def plot_samples(cfg, path, per_length=6):
    from crbp_detectron.data.pathfinder import save_preview

    samples = []
    for length in cfg.PATHFINDER.DATA.TEST_LENGTHS:
        images, masks = test_tensors(cfg, test_name(length), per_length)
        samples += [{"image": (im[0].numpy() * 255).astype(np.uint8), "mask": m[0].numpy()}
                    for im, m in zip(images, masks)]
    lengths = ", ".join(map(str, cfg.PATHFINDER.DATA.TEST_LENGTHS))
    save_preview(path, samples, columns=per_length, title=f"Test contours of {lengths} paddles (rows); label in red")


def horizon_of(runs: dict) -> int:
    """The training steps of a model's runs (its first seed's)."""
    return runs[min(runs)]["steps"]


def plot_evolution(groups, path, length, max_steps, setting: Setting):
    """One test contour of `length` paddles (the one whose C-RBP IoU is the batch median): each
    recurrent model's predicted probability after a few steps (seed 0's weights)."""
    def weights(name):
        return Run(EXPERIMENT, name, 0, MODELS[name][1], results_dir=setting.results_dir).weights_path()

    names = [n for n in MODELS if n not in FEED_FORWARD and n in groups and os.path.exists(weights(n))]
    if not names:
        return
    # past every model's horizon: twice the longest one
    horizons = {n: horizon_of(groups[n]) for n in names}
    max_steps = max([max_steps] + [2 * h for h in horizons.values()])
    cfg = setting.cfg(names[0])
    images, masks = test_tensors(cfg, test_name(length), 32)
    probs = {}
    for name in names:
        steps = horizons[name]
        model = PathfinderTrainer.build_model(setting.cfg(name, ["MODEL.CRBP.STEPS", steps]))
        model.load_state_dict(torch.load(weights(name), weights_only=True))
        model.eval()
        probs[name] = [torch.sigmoid(o) for o in model.step_outputs(images, max_steps)]
    pred = probs[names[0]][horizons[names[0]] - 1] > 0.5
    target = masks.bool()
    iou = ((pred & target).flatten(1).sum(1) / (pred | target).flatten(1).sum(1).clamp_min(1)).numpy()
    i = int(np.argsort(iou)[len(iou) // 2])
    cols = sorted({1, 2, 4, 8, 12, 16, 24, 32, 48, max_steps} | set(horizons.values())
                  | {2 * h for h in horizons.values()})
    cols = [c for c in cols if c <= max_steps]
    from crbp_detectron.plotting import headless_pyplot

    plt = headless_pyplot()

    fig, axes = plt.subplots(len(names), len(cols) + 2, figsize=(1.45 * (len(cols) + 2), 1.6 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        axes[r, 0].imshow(images[i, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[r, 1].imshow(masks[i, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        label = MODELS[name][0].replace(", ", ",\n")  # long labels on several lines
        axes[r, 0].set_ylabel(f"{label}\n({horizons[name]} steps)", fontsize=6)
        for c, t in enumerate(cols):
            axes[r, c + 2].imshow(probs[name][t - 1][i, 0], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                axes[r, c + 2].set_title(f"step {t}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=7)
    axes[0, 1].set_title("label", fontsize=7)
    fig.suptitle(f"One contour of {length} paddles: predicted probability after each step (seed 0)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the title above the columns' titles
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ report
def bptt_memory_sentence(memory: dict) -> str:
    k = memory["bptt_steps_same_memory"]
    ratio = memory["bptt"][str(k)] / memory["crbp"]
    if ratio <= 1:
        return (f"The BPTT whose memory fits in C-RBP's has **{k} step(s)** ({ratio:.2f}x C-RBP's bytes); "
                "C-BPTT uses the same steps.")
    return (f"**No BPTT fits in C-RBP's memory**: one step already saves {ratio:.2f}x C-RBP's bytes (C-RBP keeps "
            "only the drive, the equilibrium and the parameters for its backward). The comparison uses the "
            "smallest BPTT, **1 step**; C-BPTT uses the same.")


def write_report(command: str, memory: dict, setting: Setting):
    found = load_experiment(EXPERIMENT, setting.results_dir)
    groups = {name: found[name] for name in MODELS if name in found}
    if not groups:
        print("no experiment results yet")
        return
    cfg = setting.cfg("crbp")
    d = cfg.PATHFINDER.DATA
    lengths, trained = list(d.TEST_LENGTHS), list(d.TRAIN_LENGTHS)
    longest, ood = max(trained), max(lengths)
    horizon = memory["crbp_steps"]
    max_steps = cfg.PATHFINDER.EVAL.SWEEP_MAX_STEPS or 2 * horizon
    mib = 2.0 ** 20

    def saved_mib(name, result):
        return result["memory"]["saved_bytes"] / mib

    rows = []
    for name, runs in groups.items():
        results = list(runs.values())
        first = results[0]
        rows.append([MODELS[name][0], first.get("steps") or "–", f"{saved_mib(name, first):.1f}", first["parameters"],
                     len(results)] + [report.pm([report.test_metric(r, L) for r in results]) for L in lengths]
                    + [report.pm([r["train"]["seconds_per_iteration"] for r in results], 2)])
    iou_table = markdown_table(
        ["model", "train steps", "train memory (MiB)", "parameters", "seeds"]
        + [f"IoU L={L}" + (" (OOD)" if L not in trained else "") for L in lengths] + ["s / iteration"], rows)
    f1_rows = [[MODELS[n][0]] + [report.pm([report.test_metric(r, L, "f1") for r in runs.values()]) + " / "
                                 + report.pm([report.test_metric(r, L, "balanced_accuracy") for r in runs.values()])
                                 for L in lengths] for n, runs in groups.items()]
    f1_table = markdown_table(["model"] + [f"L={L} F1 / balanced accuracy" for L in lengths], f1_rows)
    beyond = []
    for name, runs in groups.items():
        if name in FEED_FORWARD:
            continue
        results = list(runs.values())
        h = results[0]["steps"]
        for L in (longest, ood):
            at_h = [report.sweep_metric(r, L, h) for r in results]
            at_2h = [report.sweep_metric(r, L, 2 * h) for r in results]
            at_max = [report.sweep_metric(r, L, max_steps) for r in results]
            beyond.append([MODELS[name][0], h, L, report.pm(at_h), report.pm(at_2h),
                           report.pm([b / a for a, b in zip(at_h, at_2h) if a > 0], 2), report.pm(at_max)])
    beyond_table = markdown_table(["model", "horizon", "length", "IoU at horizon", "at 2x horizon", "ratio",
                                   f"at step {max_steps}"], beyond)
    mem_rows = [["C-RBP", horizon, memory["crbp"] / mib], ["C-RBP", 2 * horizon, memory["crbp_2x_steps"] / mib],
                ["RBP (no penalty)", horizon, memory["rbp"] / mib]]
    mem_rows += [["BPTT", k, v / mib] for k, v in memory["bptt"].items()]
    mem_rows += [["C-BPTT", k, v / mib] for k, v in memory["cbptt"].items()]
    mem_rows += [["CNN", "–", memory["cnn"] / mib]]
    memory_table = markdown_table(["model", "steps", "saved for backward (MiB)"], mem_rows)

    results_dir = setting.results_dir
    results_md = os.path.join(results_dir, "pathfinder.md")
    plot_samples(cfg, os.path.join(results_dir, "pathfinder_samples.png"))
    pictured = {n: runs for n, runs in groups.items() if n in PICTURED} or groups
    report.plot_iou_against_steps(
        os.path.join(results_dir, "pathfinder_steps.png"),
        f"Pathfinder ({d.SIZE} px): IoU against test-time steps (mean ± std over seeds; dashed: training horizon)",
        {MODELS[n][0]: runs for n, runs in pictured.items()}, [longest, ood],
        {MODELS[n][0]: runs[min(runs)].get("steps") for n, runs in pictured.items()},
        feedforward=[MODELS[n][0] for n in FEED_FORWARD])
    report.plot_curves(os.path.join(results_dir, "pathfinder_curves.png"), "Training (every seed)",
                       {MODELS[n][0]: runs for n, runs in pictured.items()},
                       [("loss_pixel", "task loss (focal)", True), ("pathfinder/iou", f"validation IoU (L={longest})", False),
                        ("crbp/body/max_column_sum", "largest column sum of J", False)])
    plot_evolution(pictured, os.path.join(results_dir, "pathfinder_evolution.png"), longest, max_steps, setting)

    gen = generator_config(cfg, longest)
    with open(results_md, "w") as f:
        f.write(f"""# Pathfinder: C-RBP against BPTT at equal training memory

Produced by:

```
{command}
```

Runs: `benchmarks/results/pathfinder/experiment/<model>/seed<k>.json` (plus their weights);
`--report-only` rebuilds this file and the pictures from them. Mean ± sample standard deviation
over seeds. Code version of the runs: {sorted({r.get('code', '?') for runs in groups.values() for r in runs.values()})}.

## Set-up

- Data (`crbp_detectron/data/pathfinder`, `PATHFINDER.DATA`): {d.SIZE}x{d.SIZE} canvas, dashed
  contours of {', '.join(map(str, trained))} paddles for training ({d.TRAIN_PER_LENGTH} images each, mixed),
  tested on {', '.join(map(str, lengths))} paddles ({d.TEST_PER_LENGTH} images each; lengths not trained are
  out of distribution, OOD); paddles {gen.paddle_length} px, gaps {gen.gap} px, turns up to ±{gen.continuity}°,
  {gen.distractors} distractor paths ({gen.long_distractors} as long as the target).
- Models and recipe: `configs/pathfinder/*.yaml` (see `configs/pathfinder/Base-Pathfinder.yaml`).
- Metrics on pooled pixel counts, logit > 0.

![test samples](pathfinder_samples.png)

## Training memory (bytes saved for the backward pass, batch {memory['batch']}, parameters not counted)

{memory_table}

{bptt_memory_sentence(memory)}

## IoU per contour length at each model's training horizon

{iou_table}

F1 / balanced accuracy:

{f1_table}

The pictures show {", ".join(MODELS[n][0] for n in pictured)}; every model is in the tables.

![learning curves](pathfinder_curves.png)

## Beyond the horizon

{beyond_table}

![IoU against test-time steps](pathfinder_steps.png)

## One contour over the steps

![evolution](pathfinder_evolution.png)

Which paths the models select over the steps, and how far along the target the marker decides:
[pathfinder_selection.md](pathfinder_selection.md) (`python -m benchmarks.pathfinder.selection`).
""")
    print(f"wrote {results_md}\n{iou_table}\n{beyond_table}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=2, help="runs at a time (one CPU thread each)")
    p.add_argument("--scratch", default=os.path.join(REPO, "output", "pathfinder_runs"))
    p.add_argument("--results", default=RESULTS_DIR, help="report here, runs under <results>/pathfinder/")
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides for every model (smoke runs)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m benchmarks.pathfinder.experiment " + " ".join(
        shlex.quote(a) for a in argv if a != "--report-only")
    setting = Setting(args.results, os.environ.get("CRBP_PATHFINDER_DIR", ""), args.opts)
    torch.set_num_threads(1)
    memory = memory_probe(setting)
    print(f"memory: C-RBP {memory['crbp'] / 2**20:.1f} MiB; BPTT steps at the same memory: "
          f"{memory['bptt_steps_same_memory']}", flush=True)
    if not args.report_only:
        t0 = time.time()
        runs = runs_for(args.models, args.seeds, memory, setting)
        execute_all(runs, args.scratch, args.workers, keep_weights=lambda run: True)  # every seed: the selection diagnostic
        print(f"experiment runs: {(time.time() - t0) / 60:.1f} min", flush=True)
    write_report(command.strip(), memory, setting)


if __name__ == "__main__":
    main()

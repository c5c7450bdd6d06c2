"""Pathfinder where contour length matters: the hGRU trained with C-RBP against every baseline
trained as long (three cycles of 1000 iterations): RBP without the penalty, C-BPTT, BPTT at the
same training memory (1 step) and with more steps (4, 8) at their own memory, a
parameter-matched CNN; a predictor that marks both long paths without looking at the marker.
IoU per contour length (18 and 22 paddles out of distribution), training memory against IoU,
IoU against test-time steps to twice the horizon, one contour's segmentation over the steps; the
models of the study that led to the recipe (one and two cycles, 10 channels, other steps and
penalties). Several seeds per model.

    python -m experiments.experiment                    # the table's models, 3 seeds (resumable)
    python -m experiments.experiment --report-only      # tables and plots from the results

Run from projects/Pathfinder. Each row is a chain of 1000-iteration runs, each started from the
previous link's final weights (CONTINUES): what `PATHFINDER.CYCLES 3` does in one command
(train_net.py --config-file crbp.yaml; the same weights: tests/test_training.py). The script
measures the training memory of every model (memory.json), runs the links in order
(results/experiment/<model>/seed<k>.json, with each run's weights beside it: 70 kB at 16
channels, for the pictures and experiments.selection) and writes results/pathfinder.md with
pathfinder_*.png.
"""
import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog

from crbp_detectron.utils.tables import markdown_table
from pathfinder.config import load_pathfinder_config
from pathfinder.data import generator_config, test_name, test_tensors
from pathfinder.engine import PathfinderTrainer, prepare_datasets, training_memory
from pathfinder.evaluation import steps_sweep

from . import report
from .runs import PROJECT, RESULTS_DIR, Run, execute_all, experiment_dir, load_experiment, project_relative

EXPERIMENT = "experiment"
CYCLE = ["PATHFINDER.CYCLES", 1]  # one 1000-iteration run per link of a chain (CONTINUES)
# model: (label, config); MODEL_OPTS: the overrides a model adds to its config
MODELS = {
    # the table: every model trained for three cycles of 1000 iterations (the *_continued_twice links)
    "crbp_continued_twice_steps64": ("hGRU C-RBP (crbp.yaml)", "study/crbp_continued_twice_steps64.yaml"),
    "rbp_continued_twice": ("hGRU RBP, no penalty (rbp.yaml)", "rbp.yaml"),
    "cbptt_continued_twice": ("hGRU C-BPTT-1 (cbptt.yaml)", "cbptt.yaml"),
    "bptt_continued_twice": ("hGRU BPTT-1, C-RBP's memory (bptt.yaml)", "study/bptt_continued_twice.yaml"),
    "bptt4_continued_twice": ("hGRU BPTT-4", "bptt.yaml"),
    "bptt8_continued_twice": ("hGRU BPTT-8", "bptt.yaml"),
    "cnn_continued_twice": ("CNN, parameter-matched (cnn.yaml)", "cnn.yaml"),
    # their first and second cycles
    "crbp_steps64": ("hGRU C-RBP, 1000 iterations", "study/crbp_steps64.yaml"),
    "crbp_continued_steps64": ("hGRU C-RBP, 2000 iterations", "study/crbp_continued_steps64.yaml"),
    "rbp": ("hGRU RBP (no penalty), 1000 iterations", "rbp.yaml"),
    "rbp_continued": ("hGRU RBP (no penalty), 2000 iterations", "rbp.yaml"),
    "cbptt": ("hGRU C-BPTT-1, 1000 iterations", "cbptt.yaml"),
    "cbptt_continued": ("hGRU C-BPTT-1, 2000 iterations", "cbptt.yaml"),
    "bptt": ("hGRU BPTT-1, 1000 iterations", "bptt.yaml"),
    "bptt_continued": ("hGRU BPTT-1, 2000 iterations", "study/bptt_continued.yaml"),
    "bptt4": ("hGRU BPTT-4, 1000 iterations", "bptt.yaml"),
    "bptt4_continued": ("hGRU BPTT-4, 2000 iterations", "bptt.yaml"),
    "bptt8": ("hGRU BPTT-8, 1000 iterations", "bptt.yaml"),
    "bptt8_continued": ("hGRU BPTT-8, 2000 iterations", "bptt.yaml"),
    "cnn": ("CNN, 1000 iterations", "cnn.yaml"),
    "cnn_continued": ("CNN, 2000 iterations", "study/cnn_continued.yaml"),
    # BPTT through C-RBP's steps
    "bptt_full": ("hGRU BPTT, C-RBP's steps", "bptt.yaml"),
}
# the study's variants, each configured by configs/study/<model>.yaml: label
STUDY = {
    # the tracing recipe's 3000 iterations as one schedule, not three warm-restart cycles
    "crbp_one_schedule_steps64": "hGRU C-RBP, 64 steps, one 3000-iteration schedule",
    # one cycle at 96 steps (the former default); other contraction thresholds
    "crbp_steps96": "hGRU C-RBP, 96 steps, 1000 iterations",
    "crbp_lambda095_steps64": "hGRU C-RBP, 64 steps, LCP lambda 0.95",
    "crbp_lambda099_steps64": "hGRU C-RBP, 64 steps, LCP lambda 0.99",
    # trained with two distractors as long as the target and no short ones (tested as the others)
    "crbp_long_distractors_steps64": "hGRU C-RBP, 64 steps, trained on long distractors only",
    "bptt_long_distractors": "hGRU BPTT-1, trained on long distractors only",
    # the tracing recipe with the accelerated forward (Anderson, MODEL.CRBP.FORWARD), cycle by cycle
    "crbp_anderson_steps64": "hGRU C-RBP, 64 steps, Anderson forward",
    "crbp_anderson_continued_steps64": "hGRU C-RBP, 64 steps, Anderson forward, 2000 iterations (1000 more)",
    "crbp_anderson_continued_twice_steps64": "hGRU C-RBP, 64 steps, Anderson forward, 3000 iterations (2000 more)",
    # the first cycle with the graph-free evaluations compiled (MODEL.CRBP.FORWARD.COMPILE)
    "crbp_compiled_steps64": "hGRU C-RBP, 64 steps, compiled forward, 1000 iterations",
    # the tracing recipe given a fourth and a fifth cycle (compiled forward): does the hard seed trace then
    "crbp_continued_thrice_steps64": "hGRU C-RBP, 64 steps, 4000 iterations (a fourth cycle, compiled forward)",
    "crbp_continued_four_times_steps64": "hGRU C-RBP, 64 steps, 5000 iterations (a fifth cycle, compiled forward)",
    # the models at 10 channels, the experiment's width before 16, and the recipes tried there
    "crbp_channels10": "hGRU C-RBP, 10 ch",
    "bptt_channels10": "hGRU BPTT-1, 10 ch",
    "cbptt_channels10": "hGRU C-BPTT-1, 10 ch",
    "rbp_channels10": "hGRU RBP (no penalty), 10 ch",
    "cnn_channels10": "CNN, parameter-matched, 10 ch",
    "crbp_steps24_channels10": "hGRU C-RBP, 24 steps, 10 ch",
    "rbp_steps24_channels10": "hGRU RBP (no penalty), 24 steps, 10 ch",
    "crbp_weight10_steps24_channels10": "hGRU C-RBP, 24 steps, penalty weight 10, 10 ch",
    "crbp_weight3_channels10": "hGRU C-RBP, penalty weight 3, 10 ch",
    "crbp_weight10_channels10": "hGRU C-RBP, penalty weight 10, 10 ch",
    "crbp_delayed_channels10": "hGRU C-RBP, penalty from iteration 400, 10 ch",
}
MODELS.update({name: (label, f"study/{name}.yaml") for name, label in STUDY.items()})
MODEL_OPTS = {name: CYCLE for name, (_, config) in MODELS.items() if not config.startswith("study/")}
for _k in (4, 8):
    for _name in (f"bptt{_k}", f"bptt{_k}_continued", f"bptt{_k}_continued_twice"):
        MODEL_OPTS[_name] = CYCLE + ["MODEL.CRBP.STEPS", _k, "PATHFINDER.EVAL.SWEEP_MAX_STEPS", 2 * _k]
# model: the model whose final weights (same seed) it starts from
CONTINUES = {"crbp_continued_steps64": "crbp_steps64", "crbp_continued_twice_steps64": "crbp_continued_steps64",
             "rbp_continued": "rbp", "rbp_continued_twice": "rbp_continued",
             "cbptt_continued": "cbptt", "cbptt_continued_twice": "cbptt_continued",
             "bptt_continued": "bptt", "bptt_continued_twice": "bptt_continued",
             "bptt4_continued": "bptt4", "bptt4_continued_twice": "bptt4_continued",
             "bptt8_continued": "bptt8", "bptt8_continued_twice": "bptt8_continued",
             "cnn_continued": "cnn", "cnn_continued_twice": "cnn_continued",
             "crbp_anderson_continued_steps64": "crbp_anderson_steps64",
             "crbp_anderson_continued_twice_steps64": "crbp_anderson_continued_steps64",
             "crbp_continued_thrice_steps64": "crbp_continued_twice_steps64",
             "crbp_continued_four_times_steps64": "crbp_continued_thrice_steps64"}
# the table's baselines given a fourth and a fifth cycle, as C-RBP is in the study
# (crbp_continued_thrice_steps64, crbp_continued_four_times_steps64): the same evaluation (the
# trained lengths and 18; test-time steps at 14 and 18), graph-free steps compiled where a model has them
LONGER_EVALUATION = ["PATHFINDER.DATA.TEST_LENGTHS", [6, 10, 14, 18], "PATHFINDER.EVAL.SWEEP_LENGTHS", [14, 18]]
LONGER = {"thrice": "4000 iterations (a fourth cycle)", "four_times": "5000 iterations (a fifth cycle)"}
# table model: its further cycles, in order
FURTHER_CYCLES = {"crbp_continued_twice_steps64": ["crbp_continued_thrice_steps64", "crbp_continued_four_times_steps64"]}
for _name in ("rbp", "cbptt", "bptt", "bptt4", "bptt8", "cnn"):
    _table = _source = f"{_name}_continued_twice"
    FURTHER_CYCLES[_table] = []
    for _suffix, _what in LONGER.items():
        _link = f"{_name}_continued_{_suffix}"
        MODELS[_link] = (f"{MODELS[_table][0].split(' (')[0]}, {_what}", MODELS[_table][1])
        MODEL_OPTS[_link] = (MODEL_OPTS.get(_table, CYCLE) + LONGER_EVALUATION
                             + (["MODEL.CRBP.FORWARD.COMPILE", True] if _name == "rbp" else []))
        CONTINUES[_link] = _source
        FURTHER_CYCLES[_table].append(_link)
        _source = _link
# the table at equal iterations (3 x 1000), in this order
DEFAULT_MODELS = ("crbp_continued_twice_steps64", "rbp_continued_twice", "cbptt_continued_twice",
                  "bptt_continued_twice", "bptt4_continued_twice", "bptt8_continued_twice", "cnn_continued_twice")
# table models without runs yet, and why
NOT_RUN: dict = {}
# each table model as one command: its config (PATHFINDER.CYCLES 3) and overrides
ONE_COMMAND = {"crbp_continued_twice_steps64": ("crbp.yaml", []), "rbp_continued_twice": ("rbp.yaml", []),
               "cbptt_continued_twice": ("cbptt.yaml", []), "bptt_continued_twice": ("bptt.yaml", []),
               "bptt4_continued_twice": ("bptt.yaml", ["MODEL.CRBP.STEPS", 4]),
               "bptt8_continued_twice": ("bptt.yaml", ["MODEL.CRBP.STEPS", 8]),
               "cnn_continued_twice": ("cnn.yaml", [])}
# the same models after their first cycle (1000 iterations)
FIRST_CYCLE = ("crbp_steps64", "rbp", "cbptt", "bptt", "bptt4", "bptt8", "cnn")
FEED_FORWARD = ("cnn", "cnn_channels10", "cnn_continued", "cnn_continued_twice",
                "cnn_continued_thrice", "cnn_continued_four_times")  # no recurrence
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
        cfg = load_pathfinder_config(MODELS[name][1], self.run_opts(MODEL_OPTS.get(name, []) + list(opts)))
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
    crbp = setting.cfg("crbp_steps64")  # C-RBP's bytes: the same at any steps and iterations
    steps = crbp.MODEL.CRBP.STEPS

    def saved(name, *opts):
        cfg = setting.cfg(name, opts)
        return training_memory(cfg, PathfinderTrainer.build_model(cfg))["saved_bytes"]

    out = {"batch": crbp.PATHFINDER.EVAL.MEMORY_BATCH or crbp.SOLVER.IMS_PER_BATCH, "crbp_steps": steps,
           "crbp": saved("crbp_steps64"), "crbp_2x_steps": saved("crbp_steps64", "MODEL.CRBP.STEPS", 2 * steps),
           "rbp": saved("rbp"),
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
        opts = list(MODEL_OPTS.get(name, []))
        if first_run(name) in ("bptt", "cbptt"):
            opts += ["MODEL.CRBP.STEPS", memory["bptt_steps_same_memory"]]
        elif name == "bptt_full":
            opts += ["MODEL.CRBP.STEPS", memory["crbp_steps"]]
        for seed in seeds:
            seed_opts = opts + (["MODEL.WEIGHTS", start_weights(name, seed, setting)] if name in CONTINUES else [])
            runs.append(Run(EXPERIMENT, name, seed, MODELS[name][1], setting.run_opts(seed_opts), setting.results_dir))
    return runs


def chain(name: str) -> list:
    """The runs that make a model, first to last: the models it continues (CONTINUES), then itself."""
    links = [name]
    while links[0] in CONTINUES:
        links.insert(0, CONTINUES[links[0]])
    return links


def first_run(name: str) -> str:
    """The model whose training a model continues, through every CONTINUES link (itself if none)."""
    return chain(name)[0]


def start_weights(name: str, seed: int, setting: Setting) -> str:
    """The final weights of the model `name` continues, same seed; relative to the repository when
    inside it (the runs work there), so that the recorded config does not depend on the clone."""
    source = CONTINUES[name]
    path = Run(EXPERIMENT, source, seed, MODELS[source][1], results_dir=setting.results_dir).weights_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} seed {seed} starts from {source}'s weights of that seed, {path}, "
                                f"which are missing: run --models {source} --seeds {seed} first")
    return project_relative(path)


# ------------------------------------------------------------------------------ pictures
def plot_samples(cfg, path, per_length=6):
    from pathfinder.generator import save_preview

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
    from crbp_detectron.utils.plotting import headless_pyplot

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


def evaluate_lengths(names, lengths, setting: Setting, count: int = 0, sweep_lengths=()):
    """Evaluates every committed seed of `names` (its final weights) on test contours of
    `lengths` paddles not in its results, and adds them to its results file ("test", with the
    code version under "evaluated_after"): e.g. 22 paddles, which the 64 px canvas fits with more
    placement attempts (PATHFINDER.DATA.MAX_TRIES), for runs trained before that length was tested.
    `count`: the first `count` test images of each length (0: PATHFINDER.DATA.TEST_PER_LENGTH).
    `sweep_lengths`: lengths whose IoU against test-time steps (to twice the training steps) is
    missing and is measured too."""
    from .equilibrium import trained_model
    from .runs import code_version

    found = load_experiment(EXPERIMENT, setting.results_dir)
    for name in names:
        for seed, result in sorted(found.get(name, {}).items()):
            todo = [L for L in lengths if str(L) not in result["test"]]
            sweeps = [L for L in sweep_lengths if result.get("steps")
                      and len(result.get("sweep", {}).get(str(L), [])) < 2 * result["steps"]]
            if not todo and not sweeps:
                continue
            todo = todo or sweeps  # the sets to register
            run = Run(EXPERIMENT, name, seed, MODELS[name][1], results_dir=setting.results_dir)
            opts = ["PATHFINDER.DATA.TEST_LENGTHS", todo, "PATHFINDER.DATA.MAX_TRIES", 2000,
                    "PATHFINDER.EVAL.SWEEP_LENGTHS", []]
            model, cfg = trained_model(result, run.weights_path(), setting.data_root,
                                       opts + (["PATHFINDER.DATA.TEST_PER_LENGTH", count] if count else []))
            cfg.DATASETS.TEST = tuple(test_name(L) for L in todo)
            evaluated = PathfinderTrainer.test(cfg, model)
            for L in todo:
                if str(L) in result["test"]:
                    continue
                entry = evaluated[test_name(L)] if len(todo) > 1 else evaluated
                result["test"][str(L)] = entry["pathfinder"]
                result.setdefault("evaluated_after", {})[str(L)] = {
                    "code": code_version(), "images": cfg.PATHFINDER.DATA.TEST_PER_LENGTH, "steps": result.get("steps")}
            for L in sweeps:  # IoU against test-time steps to twice the training steps
                records = DatasetCatalog.get(test_name(L))
                result.setdefault("sweep", {})[str(L)] = steps_sweep(model, records, 2 * result["steps"],
                                                                      cfg.PATHFINDER.EVAL.BATCH_SIZE)
                result.setdefault("evaluated_after", {})[f"sweep {L}"] = {"code": code_version()}
            with open(run.result_path + ".tmp", "w") as f:
                json.dump(result, f, indent=1)
            os.replace(run.result_path + ".tmp", run.result_path)
            print(f"[{name}/seed{seed}] IoU " + ", ".join(f"L={L} {result['test'][str(L)]['iou']:.3f}" for L in todo)
                  + "".join(f"; sweep L={L}" for L in sweeps), flush=True)


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


def trained_iterations(name: str, runs: dict) -> int:
    """Iterations a model was trained for in all: its runs' own count, over every link of its chain."""
    return len(chain(name)) * runs[min(runs)]["train"]["iterations"]


def training_mib(runs: dict) -> float:
    """Bytes saved for the backward of one training batch, in MiB: the runs' own probe."""
    return runs[min(runs)]["memory"]["saved_bytes"] / 2.0 ** 20


def memory_and_iou(runs: dict, length: int):
    """(training memory in MiB, mean IoU, its std over seeds) of a model's runs at `length` paddles."""
    mean, std = report.mean_std([report.test_metric(r, length) for r in runs.values()])
    return training_mib(runs), mean, std


def equal_iterations_table(groups: dict, lengths, trained, marker_free: dict, names) -> str:
    rows = []
    for name in names:
        if name not in groups:
            continue
        results = list(groups[name].values())
        rows.append([MODELS[name][0], results[0].get("steps") or "–", f"{training_mib(groups[name]):.1f}",
                     len(results), trained_iterations(name, groups[name])]
                    + [report.pm([report.test_metric(r, L) for r in results]) for L in lengths]
                    + [report.pm([r["train"]["seconds_per_iteration"] for r in results], 2)])
    if marker_free:
        rows.append(["marker-free: both long paths, no model", "–", "–", "–", "–"]
                    + [f"{marker_free[str(L)]['iou']:.3f}" if str(L) in marker_free else "–" for L in lengths] + ["–"])
    missing = [f"{MODELS[n][0]}: {NOT_RUN[n]}." for n in names if n not in groups and n in NOT_RUN]
    return markdown_table(["model", "train steps", "train memory (MiB)", "seeds", "iterations"]
                          + [f"IoU L={L}" + (" (OOD)" if L not in trained else "") for L in lengths]
                          + ["s / iteration (last cycle)"], rows) + "".join(f"\n\nNot in the table: {m}" for m in missing)


def memory_against_iou(groups: dict, length: int, marker_free: dict, path: str) -> str:
    """Plot: training memory against IoU at `length` paddles for BPTT-k and C-RBP (every table
    model as a point); returns the sentence that says where BPTT-k matches C-RBP."""
    import matplotlib.ticker

    from crbp_detectron.utils.plotting import saved_figure

    crbp = DEFAULT_MODELS[0]
    bptts = [n for n in ("bptt_continued_twice", "bptt4_continued_twice", "bptt8_continued_twice") if n in groups]
    if crbp not in groups or not bptts:
        return ""

    def point(name):
        return memory_and_iou(groups[name], length)

    ks = [groups[n][min(groups[n])]["steps"] for n in bptts]
    with saved_figure(path, f"Training memory against IoU, {length} paddles, 3000 iterations",
                      "saved for the backward per batch of 16 (MiB, log scale)", f"IoU at {length} paddles",
                      figsize=(6, 4)) as ax:
        xs, ys, es = zip(*[point(n) for n in bptts])
        ax.errorbar(xs, ys, yerr=es, fmt="o-", color="tab:blue", capsize=3,
                    label=f"BPTT-k (k = {', '.join(map(str, ks))})")
        for x, y, n in zip(xs, ys, bptts):
            ax.annotate(f"k={groups[n][min(groups[n])]['steps']}", (x, y), textcoords="offset points", xytext=(5, -10),
                        fontsize=7)
        x, y, e = point(crbp)
        ax.errorbar([x], [y], yerr=[e], fmt="*", ms=12, color="tab:red", capsize=3, label="C-RBP (64 steps)")
        for name, marker in (("rbp_continued_twice", "s"), ("cbptt_continued_twice", "^"), ("cnn_continued_twice", "D")):
            if name in groups:
                px, py, pe = point(name)
                ax.errorbar([px], [py], yerr=[pe], fmt=marker, color="0.4", capsize=3, label=MODELS[name][0])
        if str(length) in marker_free:
            ax.axhline(marker_free[str(length)]["iou"], color="0.5", ls="--", lw=1, label="marker-free: both long paths")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([10, 20, 40, 80, 160])
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, loc="lower right")
    return " ".join(bptt_match_sentence(groups, L, bptts) for L in (max(14, length - 4), length))


def bptt_match_sentence(groups: dict, length: int, bptts: list) -> str:
    """BPTT-k against C-RBP at `length` paddles: each k's IoU and training-memory ratio, and the
    first k whose mean reaches C-RBP's (if any)."""
    def point(name):
        return memory_and_iou(groups[name], length)

    crbp_mib, crbp_iou, crbp_std = point(DEFAULT_MODELS[0])
    seeds = ", ".join(f"{report.test_metric(r, length):.3f}" for r in groups[DEFAULT_MODELS[0]].values())
    parts, reached = [], None
    for n in bptts:
        mib, iou, std = point(n)
        k = groups[n][min(groups[n])]["steps"]
        parts.append(f"BPTT-{k} {iou:.3f} ± {std:.3f} at {mib / crbp_mib:.1f}x")
        if reached is None and iou >= crbp_iou:
            reached = f"BPTT-{k} reaches C-RBP's mean at {mib / crbp_mib:.1f}x its training memory"
    return (f"At {length} paddles C-RBP has {crbp_iou:.3f} ± {crbp_std:.3f} (seeds {seeds}) with {crbp_mib:.1f} MiB; "
            + "; ".join(parts) + " its memory: "
            + (reached or f"no BPTT-k up to k = {groups[bptts[-1]][min(groups[bptts[-1]])]['steps']} reaches "
               "C-RBP's mean") + ".")


def wall_clock_section(groups: dict, marker_free: dict, results_dir: str, speed_json: str = None) -> str:
    """The baselines given more time (experiments.wall_clock): IoU after each further cycle, their
    time counted in C-RBP's (iterations x the measured cost per iteration relative to C-RBP's, over
    C-RBP's 3000 iterations). The strongest is looked for among the baselines that cost at most
    half of C-RBP's iteration: a dearer one (RBP) gets about its 3000 iterations from C-RBP's time."""
    from . import wall_clock

    speed_json = speed_json or wall_clock.SPEED
    further = load_experiment(wall_clock.WALL_CLOCK, results_dir)
    baselines = [m for m in DEFAULT_MODELS[1:] if m in groups]
    if not baselines or not os.path.exists(speed_json):
        return "No baseline runs or cost measurement yet."
    ratio = {m: wall_clock.cost_ratio(m, speed_json) for m in baselines}
    at_18 = {m: report.mean_std([report.test_metric(r, 18) for r in groups[m].values()])[0] for m in baselines}
    budgets = markdown_table(
        ["baseline", "IoU L=18 at 3000 iterations", "cost per iteration ÷ C-RBP's", "iterations in C-RBP's time"],
        [[MODELS[m][0], report.pm([report.test_metric(r, 18) for r in groups[m].values()]),
          f"{ratio[m]:.3f}", f"{3000 / ratio[m]:,.0f}"] for m in baselines])
    text = (f"Each baseline's cost per iteration, measured side by side with C-RBP's "
            f"(benchmarks/results/train_speed_pathfinder_table.md, today's code), and the iterations C-RBP's "
            f"3000 buy it:\n\n{budgets}")
    cheaper = [m for m in baselines if ratio[m] <= 0.5]
    if not cheaper:
        return text
    strongest = max(cheaper, key=lambda m: at_18[m])
    models = [m for m in cheaper if 0 in further.get(f"{m}_cycle{len(chain(m)) + 1}", {})]
    if not models:
        return (f"{text}\n\nThe strongest of the cheaper baselines at equal iterations, {MODELS[strongest][0]}, has "
                f"not been trained for C-RBP's time: its {3000 / ratio[strongest]:,.0f} iterations did not fit beside "
                f"the table's runs on this CPU (python -m experiments.wall_clock --model {strongest}).")
    rows, reached = [], {}
    for model in models:
        done = wall_clock.rows(model, results_dir)
        reached[model] = (done[-1][1] * ratio[model] / 3000, done[-1][2])
        rows += [[MODELS[model][0], cycles, iterations, f"{iterations * ratio[model] / 3000:.2f}"]
                 + [report.pm([report.test_metric(r, L)]).split(" ±")[0] for L in (14, 18)]
                 for cycles, iterations, r in done]
    crbp = groups.get(DEFAULT_MODELS[0], {})
    if 0 in crbp:
        rows.append([MODELS[DEFAULT_MODELS[0]][0], 3, 3000, "1.00"]
                    + [f"{report.test_metric(crbp[0], L):.3f}" for L in (14, 18)])
    if all(str(L) in marker_free for L in (14, 18)):
        rows.append(["marker-free line", "–", "–", "–"] + [f"{marker_free[str(L)]['iou']:.3f}" for L in (14, 18)])
    table = markdown_table(["model (seed 0)", "cycles", "iterations", "time in C-RBP's 3000 iterations",
                            "IoU L=14", "IoU L=18 (OOD)"], rows)
    if strongest in reached:
        share, last = reached[strongest]
        verdict = (f"The strongest of the cheaper baselines at equal iterations, {MODELS[strongest][0]}, reached "
                   f"{share:.2f} of C-RBP's time: IoU {report.test_metric(last, 14):.3f} / "
                   f"{report.test_metric(last, 18):.3f} at 14 / 18 paddles")
        if 0 in crbp:
            verdict += (f", against C-RBP's seed 0 at its 3000 iterations: {report.test_metric(crbp[0], 14):.3f} / "
                        f"{report.test_metric(crbp[0], 18):.3f}")
        verdict += "."
    else:
        verdict = (f"The strongest of the cheaper baselines at equal iterations, {MODELS[strongest][0]}, has not been "
                   f"given C-RBP's time ({3000 / ratio[strongest]:,.0f} iterations).")
    return (f"{text}\n\nBaselines given more time, seed 0: further cycles of 1000 iterations from their "
            f"3000-iteration weights (python -m experiments.wall_clock --model M):\n\n{table}\n\n{verdict}")


ONE_SCHEDULE = "crbp_one_schedule_steps64"  # crbp.yaml's 3000 iterations without the warm restarts


COMPILED = "crbp_compiled_steps64"  # the first cycle with MODEL.CRBP.FORWARD.COMPILE
# C-RBP past the recipe's three cycles, with the compiled forward (the study)
CRBP_LONGER = tuple(FURTHER_CYCLES["crbp_continued_twice_steps64"])
# what crbp.yaml is asked to reach at 14 / 18 paddles, on every seed
TARGET_IOU = {14: 0.90, 18: 0.80}


def marker_reach_table(groups: dict, names, results_dir: str, length: int = 18) -> str:
    """Per seed of each C-RBP model: how far the marker's signal reaches along the target at the
    fixed point (experiments.selection --length L: the predicted probability with the marker minus
    without it, at the first, middle and last paddle, at the horizon), beside the IoU at the horizon
    and at twice its steps: a seed whose IoU is flat past the horizon and whose influence dies along
    the contour stops short because of where its equilibrium is, not for want of steps."""
    from .selection import results_path

    rows = []
    for name in names:
        for seed, run in sorted(groups.get(name, {}).items()):
            path = results_path(results_dir, name, length, seed)
            if not os.path.exists(path):
                continue
            with open(path) as f:
                influence = json.load(f)["influence"][-1]  # at the horizon, per paddle from the marker
            h = run["steps"]
            rows.append([len(chain(name)), seed, f"{report.sweep_metric(run, length, h):.3f}",
                         f"{report.sweep_metric(run, length, 2 * h):.3f}"]
                        + [f"{influence[i]:.2f}" for i in (0, len(influence) // 2, len(influence) - 1)]
                        + [f"{influence[-1] / influence[0]:.2f}" if influence[0] > 0 else "–"])
    if not rows:
        return ""
    return markdown_table(["C-RBP: cycles", "seed", f"IoU L={length} at the horizon", "at 2x steps",
                           "marker influence, paddle 1", f"paddle {length // 2 + 1}", f"paddle {length}",
                           "last ÷ first"], rows)


def longer_section(groups: dict, lengths=(14, 18), results_dir: str = "") -> str:
    """The table's models after three, four and five cycles, seed by seed: whether C-RBP's every
    seed reaches TARGET_IOU with more training, and whether the baselines given as many catch up."""
    rows, verdicts = [], []
    for table_model in DEFAULT_MODELS:
        for name in [table_model] + FURTHER_CYCLES[table_model]:
            if name not in groups:
                continue
            runs = groups[name]
            seeds = sorted(runs)
            cycles = len(chain(name))
            per_seed = {L: [report.test_metric(runs[s], L) for s in seeds] for L in lengths}
            twice = [r for r in (report.twice_steps_ratio(runs[s], L) for s in seeds for L in lengths)
                     if np.isfinite(r)] if name not in FEED_FORWARD else []
            rows.append([MODELS[table_model][0].split(" (")[0], cycles, cycles * 1000, ", ".join(map(str, seeds))]
                        + [" / ".join(f"{v:.3f}" for v in per_seed[L]) for L in lengths]
                        + [report.pm(per_seed[L]) for L in lengths]
                        + [f"{min(twice):.2f}-{max(twice):.2f}x" if twice else "–"])
            if table_model == DEFAULT_MODELS[0]:
                short = [f"seed {s}" for i, s in enumerate(seeds)
                         if any(per_seed[L][i] < TARGET_IOU[L] for L in lengths if L in TARGET_IOU)]
                verdicts.append(f"after {cycles} cycles ({len(seeds)} seeds) "
                                + ("every seed reaches it" if not short else f"{', '.join(short)} short of it"))
    if len(verdicts) < 2:
        return "Not measured yet: `python -m experiments.experiment --models " + " ".join(CRBP_LONGER) + "`."
    target = " and ".join(f"{v:.2f} at {L}" for L, v in TARGET_IOU.items())
    table = markdown_table(["model", "cycles", "iterations", "seeds"]
                           + [f"IoU L={L}, seed by seed" for L in lengths] + [f"IoU L={L}" for L in lengths]
                           + ["at 2x steps ÷ at steps (every seed and length)"], rows)
    text = (f"Each further cycle: 1000 iterations from the previous cycle's weights of the same seed, a fresh "
            f"Adam, the same warm-up and cosine schedule (configs/study/{CRBP_LONGER[0]}.yaml and the next; the "
            f"baselines with their own configs), the graph-free steps compiled where a model has them "
            f"(MODEL.CRBP.FORWARD.COMPILE), evaluated on the trained lengths and 18 paddles.\n\n{table}\n\n"
            f"C-RBP against the bar of every seed at {target} paddles: " + "; ".join(verdicts) + ".")
    reach = marker_reach_table(groups, (DEFAULT_MODELS[0],) + CRBP_LONGER, results_dir) if results_dir else ""
    if reach:
        text += ("\n\nWhy a seed stays short at 18 paddles: how far the marker's signal reaches along the target "
                 "at the horizon (`python -m experiments.selection --length 18 --measure-only`: 64 test "
                 "contours, the probability predicted with the marker minus the one with the marker erased, per "
                 f"paddle counted from the marker), beside the IoU at the horizon and at twice its steps:\n\n{reach}")
    return text


def seed_by_seed(groups: dict, base: str, other: str, lengths=(14, 18)):
    """(a table of both models' IoU per seed and mean ± std at each length, "<L> paddles <other - base,
    seed by seed, mean ± std>; ..."), over the seeds both have."""
    seeds = sorted(set(groups[base]) & set(groups[other]))
    rows = []
    for name in (base, other):
        per_seed = {L: [report.test_metric(groups[name][s], L) for s in seeds] for L in lengths}
        rows.append([MODELS[name][0]] + [" / ".join(f"{v:.3f}" for v in per_seed[L]) for L in lengths]
                    + [report.pm(per_seed[L]) for L in lengths])
    table = markdown_table(["model"] + [f"L={L}: seeds {', '.join(map(str, seeds))}" for L in lengths]
                           + [f"L={L}" for L in lengths], rows)
    diffs = {L: report.pm([report.test_metric(groups[other][s], L) - report.test_metric(groups[base][s], L)
                           for s in seeds]) for L in lengths}
    return table, "; ".join(f"{L} paddles {diffs[L]}" for L in lengths)


def restarts_section(groups: dict, lengths=(14, 18)) -> str:
    """The tracing recipe's three warm-restart cycles against one schedule as long, seed by seed."""
    recipe, one = DEFAULT_MODELS[0], ONE_SCHEDULE
    if one not in groups or recipe not in groups:
        return "Not measured yet: `python -m experiments.experiment --models " + one + "`."
    table, diffs = seed_by_seed(groups, recipe, one, lengths)
    return (f"Both: 3000 iterations of C-RBP at 64 steps, batch 16, the same seeds; three cycles of "
            f"1000 (warm-up and cosine decay each, a fresh Adam each: `crbp.yaml`) against one warm-up and one "
            f"cosine decay over 3000 with one Adam (`configs/study/{one}.yaml`).\n\n{table}\n\n"
            f"One schedule minus three cycles, seed by seed (mean ± std): {diffs}.")


def compiled_section(groups: dict, lengths=(14, 18)) -> str:
    """The first cycle trained with the compiled forward against the eager one, seed by seed."""
    eager = "crbp_steps64"
    if COMPILED not in groups or eager not in groups:
        return "Not measured yet: `python -m experiments.experiment --models " + COMPILED + "`."
    table, diffs = seed_by_seed(groups, eager, COMPILED, lengths)
    seconds = {name: report.pm([r["train"]["seconds_per_iteration"] for r in groups[name].values()], 2)
               for name in (eager, COMPILED)}
    return (f"Both: the tracing recipe's first cycle (1000 iterations of C-RBP at 64 steps, batch 16, the same "
            f"seeds); its 64 graph-free cell evaluations eager, or through torch.compile "
            f"(`configs/study/{COMPILED}.yaml`, `MODEL.CRBP.FORWARD.COMPILE True`).\n\n{table}\n\n"
            f"Compiled minus eager, seed by seed (mean ± std): {diffs}. Seconds per iteration as the runs "
            f"recorded them (eager {seconds[eager]}, compiled {seconds[COMPILED]}) come from different "
            f"loads and code versions (the eager runs predate the graph-free softplus); the side-by-side "
            f"cost is benchmarks/results/train_speed_compiled.md.")


def write_report(command: str, memory: dict, setting: Setting):
    found = load_experiment(EXPERIMENT, setting.results_dir)
    groups = {name: found[name] for name in MODELS if name in found}
    if not groups:
        print("no experiment results yet")
        return
    cfg = setting.cfg(DEFAULT_MODELS[0])
    d = cfg.PATHFINDER.DATA
    trained = list(d.TRAIN_LENGTHS)
    # every length a table model was tested on (22 paddles: evaluated after training, --evaluate-lengths)
    lengths = sorted(set(d.TEST_LENGTHS) | {int(L) for n in DEFAULT_MODELS for r in groups.get(n, {}).values()
                                            for L in r["test"]})
    longest, ood = max(trained), max(d.TEST_LENGTHS)  # the longest length every run was swept on
    horizon = memory["crbp_steps"]
    max_steps = cfg.PATHFINDER.EVAL.SWEEP_MAX_STEPS or 2 * horizon
    mib = 2.0 ** 20

    rows = []
    for name, runs in groups.items():
        results = list(runs.values())
        first = results[0]
        rows.append([MODELS[name][0], first.get("steps") or "–", f"{training_mib(runs):.1f}", first["parameters"],
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

    from .marker_free import load as load_marker_free

    marker_free = load_marker_free(setting.results_dir)
    table = equal_iterations_table(groups, lengths, trained, marker_free, DEFAULT_MODELS)
    first_cycle_table = equal_iterations_table(groups, lengths, trained, {}, FIRST_CYCLE)
    matched = memory_against_iou(groups, 18, marker_free,
                                 os.path.join(setting.results_dir, "pathfinder_memory_iou.png"))
    penalty_rows = []
    for crbp, rbp in (("crbp_steps64", "rbp"), ("crbp_continued_steps64", "rbp_continued"),
                      ("crbp_continued_twice_steps64", "rbp_continued_twice")):
        if crbp in groups and rbp in groups:
            for name in (crbp, rbp):
                results = list(groups[name].values())
                penalty_rows.append([MODELS[name][0], trained_iterations(name, groups[name]), len(results)]
                                    + [report.pm([report.test_metric(r, L) for r in results]) for L in (longest, 18)]
                                    + [report.pm([v for v in (report.twice_steps_ratio(r, 18) for r in results)
                                                  if np.isfinite(v)], 2)])
    penalty_table = markdown_table(["model", "iterations", "seeds", f"IoU L={longest}", "IoU L=18 (OOD)",
                                    "L=18: IoU at 2x steps / at steps"], penalty_rows)

    wall_clock = wall_clock_section(groups, marker_free, setting.results_dir)
    later = sorted({(L, e.get("images")) for n in DEFAULT_MODELS for r in groups.get(n, {}).values()
                    for L, e in r.get("evaluated_after", {}).items()})
    evaluated_after = " ".join(f"L={L}: the first {images} test images, evaluated after training from the "
                               "committed weights (`--evaluate-lengths`)." for L, images in later)

    results_dir = setting.results_dir
    results_md = os.path.join(results_dir, "pathfinder.md")
    plot_samples(cfg, os.path.join(results_dir, "pathfinder_samples.png"))
    # each table model, or its first cycle where the table model has no runs yet
    shown = [n if n in groups else first for n, first in zip(DEFAULT_MODELS, FIRST_CYCLE)]
    pictured = {n: groups[n] for n in shown if n in groups} or groups
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
        f.write(f"""# Pathfinder: C-RBP against every baseline trained as long

Produced by:

```
{command}
```

Runs: `projects/Pathfinder/results/experiment/<model>/seed<k>.json` (plus their weights);
`--report-only` rebuilds this file and the pictures from them. Mean ± sample standard deviation
over seeds. Code version of the runs: {sorted({r.get('code', '?') for runs in groups.values() for r in runs.values()})}.

## Set-up

- Data (`pathfinder/generator`, `PATHFINDER.DATA`): {d.SIZE}x{d.SIZE} canvas, dashed
  contours of {', '.join(map(str, trained))} paddles for training ({d.TRAIN_PER_LENGTH} images each, mixed),
  tested on {', '.join(map(str, lengths))} paddles ({d.TEST_PER_LENGTH} images each; lengths not trained are
  out of distribution, OOD); paddles {gen.paddle_length} px, gaps {gen.gap} px, turns up to ±{gen.continuity}°,
  {gen.distractors} distractor paths ({gen.long_distractors} as long as the target).
- Models and recipe: `projects/Pathfinder/configs/*.yaml` (see `configs/Base-Pathfinder.yaml`); the
  study's variants: `configs/study/`.
- Metrics on pooled pixel counts, logit > 0.

![test samples](pathfinder_samples.png)

## Every model trained as long: three cycles of 1000 iterations

Each model: 3 x 1000 iterations, batch 16, the same data, the same seeds (0, 1, 2 unless the
seeds column says fewer), each cycle from the previous one's weights with a fresh Adam and the
same warm-up and cosine schedule (PATHFINDER.CYCLES 3 in the model's config; the runs were made
as chains of 1000-iteration runs, which give the same weights). BPTT-k at its own memory; the
marker-free line marks both long paths (the target and the distractor as long as it) without a
model: a model at or below it has not shown that it follows the marker. {evaluated_after}
Seconds per iteration are the runs' own, on a CPU shared with other runs (their costs measured
side by side: benchmarks/results/train_speed_pathfinder_table.md).

{table}

## Training memory against IoU

{matched}

![training memory against IoU at 18 paddles](pathfinder_memory_iou.png)

## The strongest baseline given more time

{wall_clock}

## More cycles: does every seed trace?

{longer_section(groups, results_dir=setting.results_dir)}

## Warm restarts or only the length

{restarts_section(groups)}

## Trained with the compiled forward

{compiled_section(groups)}

## What the penalty buys

C-RBP and RBP (the same 64-step equilibrium training without the contraction penalty) after each
cycle they were both trained for (the seeds column says how many seeds):

{penalty_table}

## After the first cycle (1000 iterations)

{first_cycle_table}

## Training memory (bytes saved for the backward pass, batch {memory['batch']}, parameters not counted)

{memory_table}

{bptt_memory_sentence(memory)}

## Every run of the study, at its training horizon

The recipe's alternatives, one and two cycles, 10 channels, other steps and penalties
(configs/study/):

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
[pathfinder_selection.md](pathfinder_selection.md) (`python -m experiments.selection`).
""")
    print(f"wrote {results_md}\n{iou_table}\n{beyond_table}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=2, help="runs at a time (one CPU thread each)")
    p.add_argument("--scratch", default=os.path.join(PROJECT, "output", "runs"))
    p.add_argument("--results", default=RESULTS_DIR, help="report here, runs under <results>/pathfinder/")
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides for every model (smoke runs)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--evaluate-lengths", nargs="+", type=int, default=[],
                   help="evaluate the committed weights of --models on these lengths (missing ones only), then report")
    p.add_argument("--evaluate-count", type=int, default=0, help="test images per length for --evaluate-lengths")
    p.add_argument("--evaluate-sweep", nargs="*", type=int, default=[],
                   help="with --evaluate-lengths: also IoU against test-time steps on these lengths where missing")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m experiments.experiment " + " ".join(
        shlex.quote(a) for a in argv if a != "--report-only")
    setting = Setting(args.results, os.environ.get("CRBP_PATHFINDER_DIR", ""), args.opts)
    torch.set_num_threads(1)
    memory = memory_probe(setting)
    print(f"memory: C-RBP {memory['crbp'] / 2**20:.1f} MiB; BPTT steps at the same memory: "
          f"{memory['bptt_steps_same_memory']}", flush=True)
    if args.evaluate_lengths:
        evaluate_lengths(args.models, args.evaluate_lengths, setting, args.evaluate_count, args.evaluate_sweep)
    elif not args.report_only:
        t0 = time.time()
        # each model after the links it continues: one depth of every chain at a time
        links = []
        for name in args.models:
            links += [link for link in chain(name) if link not in links]
        for depth in sorted({len(chain(link)) for link in links}):
            runs = runs_for([link for link in links if len(chain(link)) == depth], args.seeds, memory, setting)
            execute_all(runs, args.scratch, args.workers, keep_weights=lambda run: True)  # the diagnostics read them
        print(f"experiment runs: {(time.time() - t0) / 60:.1f} min", flush=True)
    write_report(command.strip(), memory, setting)


if __name__ == "__main__":
    main()

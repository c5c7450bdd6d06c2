#!/usr/bin/env python
"""The demo's side-by-side: Detectron2's feed-forward Panoptic FPN against the C-RBP Panoptic FPN on
the embedded demo data, same data, schedule and budget (configs/demo/panoptic_fpn_demo.yaml is
configs/demo/panoptic_crbp_demo.yaml with its C-RBP components swapped back for Detectron2's), for
several seeds. Not a test.

    make demo-compare                                     # = python tools/run_demo.py --compare
    python benchmarks/demo_compare.py --seeds 0 1 2 --threads 1
    python benchmarks/demo_compare.py --report-only       # rebuild table and picture from the JSONs

Per run it trains with tools/train_net.py, then measures the trained model: PQ / PQ_th / PQ_st and
PQ per class (Detectron2's COCO panoptic evaluator), trainable parameters, training memory as the
bytes autograd saves for backward in one training forward (same batch for every model), seconds
per training iteration (Detectron2's timer, median), inference milliseconds per image (median), and
the panoptic predictions on the first val images. One small JSON per run under
benchmarks/results/demo_compare/ (a finished run is not trained again); the report
(benchmarks/results/demo_compare.md, demo_compare.png) is rebuilt from those JSONs alone.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.machine import machine_info, machine_line  # noqa: E402
from crbp_detectron.crbp.memory import saved_bytes  # noqa: E402
from crbp_detectron.evaluation import final_panoptic_metrics  # noqa: E402
from crbp_detectron.utils.tables import markdown_table  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
MODELS = {  # name: (config, label)
    "feedforward": ("demo/panoptic_fpn_demo.yaml", "Panoptic FPN (feed-forward)"),
    "crbp": ("demo/panoptic_crbp_demo.yaml", "C-RBP Panoptic FPN"),
    "crbp_state8": ("demo/panoptic_crbp_state8_demo.yaml", "C-RBP Panoptic FPN, 8-channel state"),
    "crbp_state8_steps20": ("demo/panoptic_crbp_state8_steps20_demo.yaml", "C-RBP Panoptic FPN, 8-channel state, 20 steps"),
}
DEFAULT_MODELS = ("feedforward", "crbp")  # `make demo-compare`; the narrow-state ones with --models
PICTURE_IMAGES = 4


def run_json(results_dir, model, seed):
    return os.path.join(results_dir, "demo_compare", f"{model}_seed{seed}.json")


# ------------------------------------------------------------------------------------ one run
def train(config, seed, run_dir, threads, opts):
    """tools/train_net.py for one config and seed; continues an interrupted run."""
    if os.path.isfile(os.path.join(run_dir, "model_final.pth")):
        return 0.0
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config,
           "--keep-only-latest-checkpoint", "OUTPUT_DIR", run_dir, "SEED", str(seed)] + list(opts)
    if os.path.isfile(os.path.join(run_dir, "last_checkpoint")):
        cmd.insert(2, "--resume")
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    subprocess.run(cmd, check=True, env=env)
    return time.time() - start


def training_saved_bytes(model, cfg):
    """Training memory: bytes saved for backward by one training step of `model` on the same first
    batch (sampler seed 0) for every model and seed; parameters excluded."""
    from detectron2.utils.events import EventStorage

    from crbp_detectron.engine import Trainer

    loader_cfg = cfg.clone()
    loader_cfg.defrost()
    loader_cfg.SEED = 0
    batch = next(iter(Trainer.build_train_loader(loader_cfg)))
    model.train()
    torch.manual_seed(0)
    with EventStorage(0):
        nbytes, losses = saved_bytes(lambda: sum(model(batch).values()), exclude=list(model.parameters()))
    del losses
    model.eval()
    return nbytes


def panoptic_results(metrics_json):
    last = final_panoptic_metrics(metrics_json)
    return {k: v for k, v in last.items() if k.startswith(("panoptic_seg/", "bbox/AP", "segm/AP"))}


def seconds_per_iteration(metrics_json):
    times = [e["time"] for e in map(json.loads, open(metrics_json)) if "time" in e]
    return statistics.median(times) if times else float("nan")


def encode_panoptic(panoptic_seg, segments_info, metadata):
    """Predicted segments as RLE (pycocotools) with dataset category ids: a few KB per image."""
    from crbp_detectron.inference import panoptic_record

    ids = panoptic_seg.cpu().numpy()
    record = panoptic_record(panoptic_seg.cpu(), segments_info, metadata, "", "")
    for seg in record["segments_info"]:
        seg["rle"] = _rle(ids == seg["id"])
    return record["segments_info"]


def measure(model_name, seed, run_dir, threads, opts, data_paths):
    from detectron2.data import MetadataCatalog

    from crbp_detectron.config import load_config
    from crbp_detectron.engine import register_datasets
    from crbp_detectron.inference import Predictor, read_image_rgb

    torch.set_num_threads(threads)
    cfg = load_config(MODELS[model_name][0], ["OUTPUT_DIR", run_dir, "SEED", str(seed), "DATALOADER.NUM_WORKERS", "0",
                                              "MODEL.WEIGHTS", os.path.join(run_dir, "model_final.pth")] + list(opts))
    register_datasets(cfg)
    predictor = Predictor(cfg)
    model = predictor.model
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    metrics_json = os.path.join(run_dir, "metrics.json")
    result = {"model": model_name, "label": MODELS[model_name][1], "config": MODELS[model_name][0], "seed": seed,
              "opts": list(opts), "threads": threads, "iterations": cfg.SOLVER.MAX_ITER,
              "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH, "evaluation": panoptic_results(metrics_json),
              "instances_confidence_thresh": cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH,
              "seconds_per_iteration": seconds_per_iteration(metrics_json),
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}

    result["saved_for_backward_bytes"] = training_saved_bytes(model, cfg)

    val_root = data_paths["val"]["image_root"]
    images = sorted(os.listdir(val_root))
    times, pictures = [], []
    for i, name in enumerate(images):
        rgb = read_image_rgb(os.path.join(val_root, name))
        start = time.perf_counter()
        outputs = predictor(rgb)
        times.append(time.perf_counter() - start)
        if i < PICTURE_IMAGES:
            pictures.append({"file_name": name, "segments": encode_panoptic(*outputs["panoptic_seg"], metadata)})
    result["inference_ms_per_image"] = 1000 * statistics.median(times[1:] or times)
    result["pictures"] = pictures
    return result


# ------------------------------------------------------------------------------------- report
def mean_std(values, digits=1):
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def load_runs(results_dir):
    folder = os.path.join(results_dir, "demo_compare")
    runs = {m: [] for m in MODELS}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                run = json.load(f)
            runs[run["model"]].append(run)
    return {m: sorted(r, key=lambda run: run["seed"]) for m, r in runs.items() if r}


def report_tables(runs):
    ev = lambda run, key: run["evaluation"].get(f"panoptic_seg/{key}")  # noqa: E731
    rows = []
    for model, model_runs in runs.items():
        rows.append([MODELS[model][1], ", ".join(str(r["seed"]) for r in model_runs)]
                    + [mean_std([ev(r, k) for r in model_runs]) for k in ("PQ", "PQ_th", "PQ_st")]
                    + [mean_std([r["evaluation"].get("bbox/AP") for r in model_runs]),
                       f"{model_runs[0]['trainable_parameters']:,}",
                       f"{model_runs[0]['saved_for_backward_bytes'] / 2**20:.1f}",
                       mean_std([r["seconds_per_iteration"] for r in model_runs], 2),
                       mean_std([r["inference_ms_per_image"] for r in model_runs], 0)])
    main = markdown_table(["model", "seeds", "PQ", "PQ_th", "PQ_st", "box AP", "trainable parameters",
                           "saved for backward (MiB)", "s / training iteration", "inference ms / image"], rows)
    from crbp_detectron.data.demo import CATEGORIES

    classes = [c["name"] for c in CATEGORIES]  # things first, then stuff
    per_class = markdown_table(["class"] + [MODELS[m][1] for m in runs],
                               [[c] + [mean_std([ev(r, f"PQ/{c}") for r in rs]) for rs in runs.values()]
                                for c in classes])
    return main, per_class


def decode_ids(segments, shape):
    from pycocotools import mask as mask_util

    ids = np.zeros(shape, np.int32)
    for seg in segments:
        ids[mask_util.decode({"size": seg["rle"]["size"], "counts": seg["rle"]["counts"].encode()}).astype(bool)] = seg["id"]
    return ids


def draw(rgb, segments, metadata):
    """Detectron2's Visualizer on a panoptic result given with dataset category ids."""
    from detectron2.utils.visualizer import ColorMode, Visualizer

    thing = metadata.thing_dataset_id_to_contiguous_id
    stuff = metadata.stuff_dataset_id_to_contiguous_id
    info = [{"id": s["id"], "isthing": s["isthing"], "category_id": (thing if s["isthing"] else stuff)[s["category_id"]],
             **({"score": s["score"]} if "score" in s else {})} for s in segments]
    visualizer = Visualizer(rgb, metadata, scale=3.0, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_panoptic_seg_predictions(torch.as_tensor(decode_ids(segments, rgb.shape[:2])), info).get_image()


def write_picture(runs, data_paths, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from detectron2.data import MetadataCatalog

    from crbp_detectron.data.coco_panoptic import read_panoptic_png
    from crbp_detectron.inference import read_image_rgb

    metadata = MetadataCatalog.get("crbp_demo_val_separated")
    with open(data_paths["val"]["panoptic_json"]) as f:
        truth = {a["file_name"]: a for a in json.load(f)["annotations"]}
    shown = {m: rs[0] for m, rs in runs.items()}  # the first seed's model
    names = [p["file_name"] for p in next(iter(shown.values()))["pictures"]]
    columns = ["input", "ground truth"] + [f"{MODELS[m][1]}\n(seed {r['seed']})" for m, r in shown.items()]
    fig, axes = plt.subplots(len(names), len(columns), figsize=(3.2 * len(columns), 3.3 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        rgb = read_image_rgb(os.path.join(data_paths["val"]["image_root"], name))
        gt = truth[os.path.splitext(name)[0] + ".png"]
        gt_ids = read_panoptic_png(os.path.join(data_paths["val"]["panoptic_root"], gt["file_name"]))
        gt_segments = [{"id": s["id"], "category_id": s["category_id"],
                        "isthing": s["category_id"] in metadata.thing_dataset_id_to_contiguous_id,
                        "rle": _rle(gt_ids == s["id"])} for s in gt["segments_info"]]
        panels = [rgb, draw(rgb, gt_segments, metadata)]
        panels += [draw(rgb, next(p for p in r["pictures"] if p["file_name"] == name)["segments"], metadata)
                   for r in shown.values()]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _rle(mask):
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def write_report(results_dir, data_paths):
    runs = load_runs(results_dir)
    if not runs:
        raise FileNotFoundError(f"no run results under {os.path.join(results_dir, 'demo_compare')}: run without --report-only")
    main, per_class = report_tables(runs)
    picture = os.path.join(results_dir, "demo_compare.png")
    write_picture(runs, data_paths, picture)
    all_runs = [r for rs in runs.values() for r in rs]
    any_run = all_runs[0]
    commands = sorted({r["command"] for r in all_runs})
    narrow_state = any(m.startswith("crbp_state8") for m in runs)
    lines = [
        "# The demo side by side: feed-forward Panoptic FPN and C-RBP Panoptic FPN" + (
            ", full-width and narrow recurrent state" if narrow_state else ""), "",
        "Produced by (one command per line when the runs were made by several):", "", "```", *commands, "```", "",
        "(`--report-only` rebuilds this file and the picture from the per-run JSONs in `demo_compare/`.)", "",
        f"Same data (the embedded demo dataset, {any_run['data']}), same schedule ({any_run['iterations']} iterations, "
        f"batch {any_run['ims_per_batch']}), same everything except the C-RBP components: "
        "`configs/demo/panoptic_fpn_demo.yaml` is `configs/demo/panoptic_crbp_demo.yaml` with Detectron2's plain "
        "meta-architecture and Mask R-CNN mask head (four 3x3 convs) instead of the recurrent one. "
        "Mean ± standard deviation over seeds when there are several (the seed sets the initial weights and the data "
        "order). Instances count at the config's confidence threshold (PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH "
        f"{any_run.get('instances_confidence_thresh', '?')}).", "",
        *(["`configs/demo/panoptic_crbp_state8_demo.yaml` is the C-RBP model with the mask head's recurrent state "
           "8 channels wide instead of the RoI features' 32 (a 1x1 projection makes the drive; a recurrent step costs "
           "1/16), as `COCO-PanopticSegmentation/panoptic_crbp_state64_R_50_1x.yaml` is at full scale; "
           "`panoptic_crbp_state8_steps20_demo.yaml` trains it with the paper's 20 recurrent steps instead of 6.", ""]
          if narrow_state else []),
        "Machines (per run; a CPU shared with other jobs, so times are indicative and only comparable between runs "
        "made at the same time):", "",
        *sorted({f"- {r['label']}, seed {r['seed']}: {r['machine']}; training {r['training_wall_seconds'] / 60:.0f} min"
                 for r in all_runs}), "",
        main, "", "Panoptic quality per class (things first, then stuff):", "", per_class, "",
        "- saved for backward: bytes of the storages autograd keeps for the backward pass in one training forward "
        "on the same batch (`torch.autograd.graph.saved_tensors_hooks`, parameters excluded); it does not see what "
        "the backward itself allocates (C-RBP's backward solve runs its VJPs through the one recorded step).",
        "- s / training iteration: Detectron2's iteration timer, median over training; inference: one image at a "
        "time through the whole model including the panoptic combination, median.",
        "- curve: dashed curves that share one colour per image and often cross; a curve's mask can only be "
        "assembled by following it from dash to dash.", "",
        "![the models on the same val images](demo_compare.png)", "",
    ]
    with open(os.path.join(results_dir, "demo_compare.md"), "w") as f:
        f.write("\n".join(lines))
    print(main + "\n\n" + per_class)


# --------------------------------------------------------------------------------------- main
def comparison_parser(doc, models, default_models, folder, threads):
    """The command line of a side-by-side benchmark (this one, contour_grouping.py); `opts` last."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(default_models), choices=list(models))
    parser.add_argument("--threads", type=int, default=threads, help="CPU threads per run")
    parser.add_argument("--out", default=os.path.join(ROOT, "output", folder), help="training runs")
    parser.add_argument("--results", default=RESULTS, help="where the JSONs, table and picture go")
    parser.add_argument("--keep-models", action="store_true", help="keep each run's model_final.pth")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run, KEY VALUE ...")
    return parser


def train_and_measure(args, models, json_path, train_opts, measure_run, indent=None, model_opts=None, **recorded):
    """For every seed and model of `args` (a comparison_parser's) without its JSON yet: train with
    tools/train_net.py (`train_opts`, then `model_opts(model, seed)` if given), `measure_run(model,
    seed, run_dir)`, record the machine, the training wall time and `recorded`, write the JSON, drop
    the weights unless --keep-models. Models alternate within a seed, so that a busier spell of the
    machine hits them alike."""
    for seed in args.seeds:
        for model in args.models:
            path = json_path(args.results, model, seed)
            if os.path.isfile(path):
                continue
            run_dir = os.path.join(args.out, f"{model}_seed{seed}")
            info = machine_info("cpu")
            info["torch threads"] = args.threads
            load_start = info.pop("load average (1 min) at start", float("nan"))
            start = time.time()
            seconds = train(models[model][0], seed, run_dir, args.threads,
                            list(train_opts) + (model_opts(model, seed) if model_opts else []))
            info["load average (1 min) at the start / end of training"] = f"{load_start} / {os.getloadavg()[0]:.1f}"
            result = measure_run(model, seed, run_dir)
            result.update(machine=machine_line(info), training_wall_seconds=seconds,  # 0: trained earlier
                          measure_seconds=time.time() - start - seconds, **recorded)
            with open(path, "w") as f:
                json.dump(result, f, indent=indent)
            if not args.keep_models:
                os.remove(os.path.join(run_dir, "model_final.pth"))


def command_line(script, argv):
    """The command as typed (for the report's provenance)."""
    return f"python {script} " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


def main(argv=None):
    parser = comparison_parser(__doc__, MODELS, DEFAULT_MODELS, "demo_compare", threads=2)
    args = parser.parse_args(argv)

    import crbp_detectron  # noqa: F401
    from detectron2.utils.logger import setup_logger

    from crbp_detectron.data.demo import DemoParams, generate_demo_dataset, register_demo_datasets

    setup_logger()
    data_paths = generate_demo_dataset()
    register_demo_datasets(progress=False)
    if not args.report_only:
        os.makedirs(os.path.join(args.results, "demo_compare"), exist_ok=True)
        command = command_line("benchmarks/demo_compare.py", argv)
        params = DemoParams()
        train_and_measure(args, MODELS, run_json, args.opts,
                          lambda model, seed, run_dir: measure(model, seed, run_dir, args.threads, args.opts, data_paths),
                          command=command, indent=1,
                          data=f"{params.image_size} px, {params.train_images} training and {params.val_images} val images")
    write_report(args.results, data_paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Our training modes against torchdeq's implicit backward, on the same cells and steps (issue 7).

    python -m benchmarks.recurrence                                  # every workload, every method
    python -m benchmarks.recurrence --workloads pathfinder --steps 1 5 10 20 40 --repeats 3
    python -m benchmarks.recurrence --tiny --out /tmp/x              # seconds; what the test runs

Workloads (x: the drive, a leaf with requires_grad standing for upstream features; h0 = 0;
loss sum(readout * h), readout fixed random):
  pathfinder  `HGRUCell.pathfinder(25, 7)` (BatchNorm) on x [8, 25, 150, 150] (paper scale);
              the CPU default (`--size cpu`) is [1, 25, 100, 100], to keep a CPU run near 10
              minutes; `--size full` forces the paper scale.
  mask_head   `HGRUCell.coco(256)` (GALA gate, GroupNorm 32) on RoI features [256, 256, 14, 14]:
              the recurrent part of the C-RBP mask head; the CPU default is 4 RoIs.
  fpn         the recurrent FPN inside a full Panoptic FPN R-50 at 800x1333 (GPU only; on CPU it
              is skipped with a message). Our methods only: torchdeq would need the FPN's blocks
              rewritten around it.

Methods (see `common.method_description`): bptt, crbp, rbp (ours, `Recurrence`), cbptt (ours,
optional), torchdeq_ift, torchdeq_hook_ift, torchdeq_phantom (torchdeq 0.1.0, the optional
`bench` extra: skipped with a message when it is not installed).

Metrics per (workload, method, steps): saved-for-backward bytes; peak memory (CUDA
max_memory_allocated on GPU; on CPU the peak RSS increase of a step in a fresh subprocess); time
per training step (median after warm-up, CUDA-synchronized); gradient agreement (cosine,
relative error) with the exact implicit gradient (dense Jacobian + solve, float64) on a reduced
size of the same cell. Outputs: benchmarks/results/recurrence_<workload>.md and .png.
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from . import common

FACTORY = "benchmarks.recurrence:build_case"
DEFAULT_METHODS = ("bptt", "crbp", "rbp", "torchdeq_ift", "torchdeq_hook_ift", "torchdeq_phantom")
STEPS = (1, 5, 10, 20, 40)
FPN_CONFIG = "COCO-PanopticSegmentation/panoptic_crbp_fpn_R_50_1x.yaml"


@dataclass(frozen=True)
class Workload:
    name: str
    cell: str  # how the cell is built, for the output
    kernel: int
    shapes: Dict[str, Tuple[int, ...]]  # size -> x shape: full, cpu, tiny
    reduced: Dict[str, Tuple[int, ...]]  # size -> x shape of the exact-gradient problem
    gpu_only: bool = False


WORKLOADS = {
    "pathfinder": Workload(
        "pathfinder", "HGRUCell.pathfinder(channels, kernel_size)", 7,
        shapes={"full": (8, 25, 150, 150), "cpu": (1, 25, 100, 100), "tiny": (1, 4, 10, 10)},
        reduced={"full": (1, 25, 10, 10), "tiny": (1, 4, 5, 5)}),
    "mask_head": Workload(
        "mask_head", "HGRUCell.coco(channels, num_groups=min(32, channels // 4))", 3,
        shapes={"full": (256, 256, 14, 14), "cpu": (4, 256, 14, 14), "tiny": (2, 32, 6, 6)},
        reduced={"full": (1, 256, 3, 3), "tiny": (1, 32, 2, 2)}),
    "fpn": Workload(
        "fpn", "the recurrent FPN of configs/" + FPN_CONFIG, 3,
        shapes={"full": (2, 3, 800, 1333), "cpu": (2, 3, 800, 1333), "tiny": (2, 3, 800, 1333)},
        reduced={}, gpu_only=True),
}


def make_cell(workload: str, channels: int, kernel: int) -> torch.nn.Module:
    from crbp_detectron.crbp import HGRUCell

    if workload == "pathfinder":
        return HGRUCell.pathfinder(channels, kernel)
    if workload == "mask_head":
        return HGRUCell.coco(channels, kernel, num_groups=min(32, channels // 4))
    raise ValueError(workload)


def make_problem(case):
    """(cell, x, readout) of a case, deterministic in its seed."""
    torch.manual_seed(case.get("seed", 0))
    shape = tuple(case["shape"])
    dtype = getattr(torch, case.get("dtype", "float32"))
    device = torch.device(case.get("device", "cpu"))
    cell = make_cell(case["workload"], shape[1], case["kernel"]).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(case.get("seed", 0) + 1)
    x = torch.rand(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    readout = (torch.randn(shape, generator=gen, dtype=torch.float64) / shape[0]).to(device=device, dtype=dtype)
    return cell, x, readout


def settings_of(case) -> common.MethodSettings:
    return common.MethodSettings(neumann_steps=case.get("neumann_steps", 15),
                                 phantom_steps=case.get("phantom_steps", 1))


def build_case(case) -> common.Case:
    """A `common.Case` from a JSON-able description (also used by the peak-RSS subprocess)."""
    cell, x, readout = make_problem(case)
    method = common.build_method(case["method"], cell, case["steps"], settings_of(case))
    return common.training_case(method, cell.parameters(), x.requires_grad_(), readout)


# ----------------------------------------------------------------------------------- fpn (GPU)
def build_panoptic_crbp_fpn(device: str, method: str, steps: int, neumann_steps: int = 15):
    """The full Panoptic FPN R-50 with the recurrent FPN (and the recurrent mask head), built from
    crbp_detectron's configs, its recurrent blocks set to `method` and `steps`.

    TODO(integration issue): that issue provides
    configs/COCO-PanopticSegmentation/panoptic_crbp_fpn_R_50_1x.yaml and `crbp_detectron.config`
    (both are in the tree now; this function built and trained the model on CPU at 128x160).
    Where either is missing it raises FileNotFoundError / ImportError and the fpn workload is
    skipped with that message. Weights are random (MODEL.WEIGHTS ""): memory and time only.
    """
    from detectron2.modeling import build_model

    import crbp_detectron  # noqa: F401  (registers the components)
    from crbp_detectron.config import load_config

    cfg = load_config(FPN_CONFIG, ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "",
                                   "MODEL.CRBP.NEUMANN_STEPS", neumann_steps, "MODEL.CRBP.NEUMANN_TOL", 0.0])
    model = build_model(cfg)
    set_blocks(model, method, steps)
    model.train()
    return model, cfg


def set_blocks(model, method: str, steps: int):
    """Every Recurrence block of `model` to `method` (one of ours) and `steps`."""
    from crbp_detectron.crbp import recurrent_blocks

    blocks = recurrent_blocks(model)
    for block in blocks.values():
        if not hasattr(block, "_bench_penalty"):
            block._bench_penalty = block.penalty  # the config's penalty, for crbp/cbptt
        block.mode = method
        block.steps = steps
        block.penalty = block._bench_penalty if method in common.PENALIZED else "none"
    return blocks


def synthetic_panoptic_batch(cfg, device, images=2, height=800, width=1333, instances=8, seed=0):
    """Random images with random boxes, masks, classes and a random semantic map."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(images):
        x0 = torch.randint(0, width // 2, (instances,), generator=g).float()
        y0 = torch.randint(0, height // 2, (instances,), generator=g).float()
        w = torch.randint(32, width // 2, (instances,), generator=g).float()
        h = torch.randint(32, height // 2, (instances,), generator=g).float()
        boxes = torch.stack([x0, y0, x0 + w, y0 + h], dim=1)
        masks = torch.zeros(instances, height, width, dtype=torch.bool)
        for i, (a, b, c, d) in enumerate(boxes.long().tolist()):
            masks[i, b:d, a:c] = True
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, (instances,), generator=g)
        inst.gt_masks = BitMasks(masks)
        batch.append({
            "image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8),
            "height": height, "width": width, "instances": inst,
            "sem_seg": torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (height, width), generator=g),
        })
    return batch


def fpn_case(device: str, method: str, steps: int, neumann_steps: int, cache: dict) -> common.Case:
    if "model" not in cache:
        cache["model"], cache["cfg"] = build_panoptic_crbp_fpn(device, method, steps, neumann_steps)
        cache["batch"] = synthetic_panoptic_batch(cache["cfg"], device)
    from detectron2.utils.events import EventStorage

    model, batch = cache["model"], cache["batch"]
    params = [p for p in model.parameters() if p.requires_grad]

    def forward():
        set_blocks(model, method, steps)  # the model is shared by the methods: set them per call
        with EventStorage(0):  # Detectron2's training forward logs into an event storage
            return model(batch)

    def step():
        set_blocks(model, method, steps)
        for p in params:
            p.grad = None
        with EventStorage(0):
            losses = model(batch)
        sum(losses.values()).backward()

    return common.Case(step=step, forward=forward, inputs=params)


# ----------------------------------------------------------------------------------- runs
def size_of(args) -> str:
    if args.tiny:
        return "tiny"
    if args.size == "auto":
        return "full" if args.device.startswith("cuda") else "cpu"
    return args.size


def perf_case(wl: Workload, method: str, steps: int, args) -> dict:
    size = size_of(args)
    return {"workload": wl.name, "shape": list(wl.shapes[size]), "kernel": 3 if size == "tiny" else wl.kernel,
            "method": method, "steps": steps, "device": args.device, "seed": args.seed,
            "neumann_steps": args.neumann_steps, "phantom_steps": args.phantom_steps}


def measure_performance(wl: Workload, methods, args, fpn_cache) -> Dict[Tuple[str, int], dict]:
    """Every (method, N): saved bytes, peak memory, time (round-robin across all of them)."""
    # N-major: the methods compared at one N run back to back in each round, seconds apart.
    cases = {(m, n): perf_case(wl, m, n, args) for n in args.steps for m in methods}
    if wl.name == "fpn":
        build = lambda case: fpn_case(args.device, case["method"], case["steps"], args.neumann_steps, fpn_cache)  # noqa: E731
        factory = None  # the CPU peak-RSS subprocess is not used: fpn runs on GPU only
    else:
        build, factory = build_case, FACTORY
    return common.measure_group(cases, build, factory, args.device, args.repeats, args.warmup, args.rss)


def profile_components(wl: Workload, args) -> list:
    """Where a training step's time goes at N = args.profile_steps: each piece of crbp's and of
    torchdeq's step timed alone, round-robin (median of args.repeats). Rows (piece, ms, note)."""
    from crbp_detectron.crbp import lipschitz_penalty
    from crbp_detectron.crbp.solver import iterate

    n, k = args.profile_steps, args.neumann_steps
    case = perf_case(wl, "crbp", n, args)
    cell, x, readout = make_problem(case)
    x.requires_grad_()
    h0 = torch.zeros_like(x)
    h, _, _ = iterate(cell, x, h0, n - 1)
    h_star = h.detach().requires_grad_()
    out = cell(x, h_star)
    v = torch.randn_like(out)
    pieces = {
        "ours: N-1 graph-free steps (solver.iterate)": lambda: iterate(cell, x, h0, n - 1),
        "recorded step (forward with a graph)": lambda: cell(x, h_star),
        "one Neumann VJP v -> v^T J": lambda: torch.autograd.grad(out, h_star, v, retain_graph=True),
        "LCP forward (VJP of ones, create_graph)": lambda: lipschitz_penalty(out, h_star, 0.9, "mean"),
        "recorded step + LCP forward + LCP backward": lambda: lipschitz_penalty(cell(x, h_star), h_star, 0.9, "mean")[0].backward(),
        "recorded step + backward into weights, x": lambda: cell(x, h_star).backward(readout),
    }
    available, _ = common.torchdeq_status()
    if available:
        from torchdeq.solver import fixed_point_iter

        def torchdeq_solve():
            with torch.no_grad():
                fixed_point_iter(lambda z: cell(x, z), h0, max_iter=n - 1, tol=0.0, stop_mode="abs", return_final=True)
        pieces["torchdeq: N-1 graph-free steps (fixed_point_iter)"] = torchdeq_solve
    for m in ("crbp", "rbp") + (("torchdeq_ift", "torchdeq_hook_ift") if available else ()):
        pieces[f"whole training step: {m}"] = build_case(dict(case, method=m)).step
    times = common.time_interleaved(pieces, args.repeats, 1, args.device)
    ms = {name: common.median(ts) * 1e3 for name, ts in times.items()}
    lcp_bwd = ms["recorded step + LCP forward + LCP backward"] - ms["recorded step (forward with a graph)"] \
        - ms["LCP forward (VJP of ones, create_graph)"]
    rows = [(name, value, "") for name, value in ms.items()]
    rows.append(("LCP backward alone (derived: the line above minus step and LCP forward)", lcp_bwd, ""))
    model_crbp = (ms["ours: N-1 graph-free steps (solver.iterate)"] + ms["LCP forward (VJP of ones, create_graph)"]
                  + lcp_bwd + k * ms["one Neumann VJP v -> v^T J"] + ms["recorded step + backward into weights, x"])
    rows.append((f"model of crbp: graph-free steps + LCP fwd + LCP bwd + {k} VJPs + step & backward", model_crbp, ""))
    if available:
        model_ift = (ms["torchdeq: N-1 graph-free steps (fixed_point_iter)"] + ms["recorded step (forward with a graph)"]
                     + (k + 1) * ms["one Neumann VJP v -> v^T J"] + ms["recorded step + backward into weights, x"])
        rows.append((f"model of torchdeq_ift: its graph-free steps + recomputed step + {k + 1} VJPs + step & backward",
                     model_ift, ""))
    return rows


def measure_gradients(wl: Workload, methods, args) -> Tuple[Optional[common.ExactGradient], list, str]:
    """Gradient agreement with the exact implicit gradient, on the reduced size, float64."""
    size = "tiny" if args.tiny else "full"
    shape = wl.reduced[size]
    case = {"workload": wl.name, "shape": list(shape), "kernel": 3 if args.tiny else wl.kernel,
            "dtype": "float64", "device": args.grad_device, "seed": args.seed}
    cell, x, readout = make_problem(case)
    exact = common.exact_implicit_gradient(cell, x, readout)
    rows = []
    for method in methods:
        for steps in args.steps:
            m = common.build_method(method, cell, steps, settings_of(
                {"neumann_steps": args.neumann_steps, "phantom_steps": args.phantom_steps}))
            grads, residual = common.method_gradient(m, cell, x, readout)
            rows.append({"method": method, "steps": steps, "fwd_residual": residual,
                         **common.agreement(grads, exact.grads)})
    where = f"x {list(shape)} float64 on {args.grad_device}"
    return exact, rows, where


def run_workload(wl: Workload, methods, notes, args, argv, machine) -> Optional[str]:
    t0 = time.perf_counter()
    cuda = args.device.startswith("cuda")
    if wl.gpu_only and not cuda:
        print(f"[{wl.name}] skipped: the full Panoptic FPN R-50 at 800x1333 runs on GPU only "
              f"(--device cuda); this run is on {args.device}.", flush=True)
        return None
    notes = list(notes)
    if wl.name == "fpn":
        dropped = [m for m in methods if m in common.TORCHDEQ_METHODS]
        methods = [m for m in methods if m not in common.TORCHDEQ_METHODS]
        if dropped:
            notes.append(f"fpn: {', '.join(dropped)} not run: torchdeq would need the FPN's recurrent "
                         "blocks rewritten around it; our methods only.")
        try:
            fpn_cache = {}
            fpn_case(args.device, methods[0], args.steps[0], args.neumann_steps, fpn_cache)
        except (ImportError, FileNotFoundError) as e:
            print(f"[fpn] skipped: cannot build the model ({type(e).__name__}: {e})", flush=True)
            return None
    else:
        fpn_cache = None
    size = size_of(args)
    print(f"[{wl.name}] x {list(wl.shapes[size])} ({size}), methods {methods}, steps {args.steps}", flush=True)
    perf = []
    for (method, steps), result in measure_performance(wl, methods, args, fpn_cache).items():
        row = {"method": method, "steps": steps, **result}
        perf.append(row)
        print(f"  {method:18s} N={steps:3d} saved={row.get('saved', 0) / common.MIB:9.2f} MiB "
              f"peak={(row.get('peak') or 0) / common.MIB:9.2f} MiB "
              f"time={row.get('time', float('nan')) * 1e3:9.1f} ms"
              + (f" [{row.get('error') or row.get('peak_error')}]" if row.get("error") or row.get("peak_error") else ""),
              flush=True)
    perf.sort(key=lambda r: (methods.index(r["method"]), r["steps"]))
    fpn_cache = None
    profile = profile_components(wl, args) if args.profile_steps and wl.name != "fpn" else []
    exact, grad_rows, grad_where = None, [], ""
    if args.grad_check and wl.reduced:
        exact, grad_rows, grad_where = measure_gradients(wl, methods, args)
        for r in grad_rows:
            print(f"  grad {r['method']:18s} N={r['steps']:3d} cos={r['cosine']:.6f} rel={r['rel_err']:.3e}", flush=True)
    return write_outputs(wl, methods, perf, exact, grad_rows, grad_where, notes, args, argv, machine,
                         time.perf_counter() - t0, profile)


def _get(rows, method, steps, key):
    for r in rows:
        if r["method"] == method and r["steps"] == steps:
            return r.get(key)
    return None


def goals(perf, grad_rows, args, peak_label) -> list:
    out = []
    lo, hi = min(args.steps), max(args.steps)
    for key, label in (("saved", "saved-for-backward bytes"), ("peak", peak_label)):
        a, b = _get(perf, "crbp", hi, key), _get(perf, "crbp", lo, key)
        if a is not None and b:
            out.append(f"- crbp memory at {hi} steps ÷ at {lo} step(s), {label}: **{a / b:.3f}** "
                       f"(goal ≤ 1.05; {a / common.MIB:.2f} / {b / common.MIB:.2f} MiB)")
    mid = 20 if 20 in args.steps else sorted(args.steps)[len(args.steps) // 2]
    for key, label in (("saved", "saved-for-backward bytes"), ("peak", peak_label)):
        a, b = _get(perf, "bptt", mid, key), _get(perf, "crbp", mid, key)
        if a is not None and b:
            out.append(f"- bptt ÷ crbp memory at {mid} steps, {label}: **{a / b:.2f}**")
    for ours in ("crbp", "rbp"):
        for theirs in ("torchdeq_ift", "torchdeq_hook_ift"):
            ratios = []
            for n in args.steps:
                a, b = _get(perf, ours, n, "time"), _get(perf, theirs, n, "time")
                if a is not None and b:
                    paired = common.paired_ratio(_get(perf, ours, n, "times"), _get(perf, theirs, n, "times"))
                    ea, eb = _get(grad_rows, ours, n, "rel_err"), _get(grad_rows, theirs, n, "rel_err")
                    acc = f"; gradient rel. err {ea:.3g} vs {eb:.3g}" if ea is not None and eb is not None else ""
                    ratios.append(f"N={n}: **{paired:.2f}** (ratio of medians {a / b:.2f}{acc})")
            if ratios:
                out.append(f"- {ours} time ÷ {theirs} time, median of per-repeat ratios (goal ≤ 1.0): "
                           + "; ".join(ratios))
    if grad_rows:
        for method in dict.fromkeys(r["method"] for r in grad_rows):
            errs = "; ".join(f"N={r['steps']}: {r['rel_err']:.3g}" for r in grad_rows if r["method"] == method)
            out.append(f"- gradient rel. error of {method} vs exact: {errs}")
    return out


def write_outputs(wl, methods, perf, exact, grad_rows, grad_where, notes, args, argv, machine, wall, profile=()):
    os.makedirs(args.out, exist_ok=True)
    cuda = args.device.startswith("cuda")
    size = size_of(args)
    peak_label = "peak CUDA memory" if cuda else "peak RSS increase"
    columns = ["method", "steps N", "saved for backward (MiB)", f"{peak_label} (MiB)",
               "time / step (ms, median)", "Neumann terms", "time min–max (ms)"]
    table = []
    for r in perf:
        peak = r.get("peak")
        table.append([
            r["method"], r["steps"], r["saved"] / common.MIB if "saved" in r else r.get("error"),
            peak / common.MIB if peak is not None else (r.get("peak_error") or ("not measured" if not cuda and not args.rss else None)),
            r["time"] * 1e3 if "time" in r else None, r.get("neumann"),
            f"{r['time_min'] * 1e3:.1f}–{r['time_max'] * 1e3:.1f}" if "time" in r else None,
        ])
    shape = list(wl.shapes[size])
    if wl.name == "fpn":
        what = (f"Panoptic FPN R-50 from `configs/{FPN_CONFIG}` (recurrent FPN P2–P5 + recurrent mask head), "
                f"{shape[0]} synthetic images {shape[2]}x{shape[3]} with 8 random instances each; every "
                "recurrent block set to the method and N; loss = the model's loss dict summed.")
    else:
        kernel = 3 if size == "tiny" else wl.kernel
        what = (f"`{wl.cell}` with channels={shape[1]}, kernel_size={kernel}, on x {shape} float32 "
                f"(size '{size}'; full scale is {list(wl.shapes['full'])}); h0 = 0; loss sum(readout * h) "
                "(+ the LCP for crbp/cbptt); backward into the cell's weights and x.")
    lines = [
        f"# Recurrence benchmark: {wl.name}",
        "",
        "Command (from the repository root):",
        "",
        "```",
        common.command_line("benchmarks.recurrence", argv),
        "```",
        "",
        f"Machine: {common.machine_line(machine)}. Wall-clock of this workload: {wall:.0f} s.",
        "",
        f"Workload: {what}",
        "",
        "Methods, configured to compute the same quantity (same cell object, same N cell evaluations "
        f"in the forward, the same {args.neumann_steps + 1}-term Neumann sum in the backward):",
        "",
    ] + ["- " + d for d in common.method_description(settings_of(
        {"neumann_steps": args.neumann_steps, "phantom_steps": args.phantom_steps})) if d.split("`")[1] in methods]
    if notes:
        lines += ["", "Notes:", ""] + ["- " + n for n in notes]
    lines += [
        "",
        "## Memory and time",
        "",
        "Saved for backward: storages autograd saves during the forward (penalty included), parameters and "
        "input excluded; it misses what a backward allocates (torchdeq's IFT recomputes a step there). "
        + ("Peak CUDA memory: max_memory_allocated during one step minus what was allocated before it. "
           if cuda else
           "Peak RSS increase: one training step in a fresh subprocess per row, after a warm-up step, "
           "glibc serving allocations >= 64 KiB by mmap; VmHWM (reset through /proc/self/clear_refs) minus "
           "VmRSS before the step: includes gradients and the backward's temporaries. ")
        + f"Time: median of {args.repeats} training steps after {args.warmup} warm-up step(s), timed round-robin "
        "(each round runs every (method, N) once, the methods of one N back to back, so that load changes "
        "fall on all of them alike; the Goals' time ratios are medians of per-round ratios)"
        + (", CUDA-synchronized." if cuda else "; the CPU is shared with other jobs, so expect noise (min–max shown)."),
        "",
        common.NEUMANN_NOTE,
        "",
        common.markdown_table(columns, table),
        "",
    ]
    if profile:
        lines += [
            f"## Where the time goes (N = {args.profile_steps}, K = {args.neumann_steps})",
            "",
            "Each piece timed alone, round-robin with the others, median of "
            f"{args.repeats}; the models add the pieces up as each method runs them (crbp's Neumann "
            "backward also adds the vectors and takes one norm per term; torchdeq's solver keeps "
            "per-iteration statistics). Same cell, x and N as the table above.",
            "",
            common.markdown_table(["piece", "ms"], [[name, value] for name, value, _ in profile]),
            "",
        ]
    if exact is not None:
        lines += [
            "## Gradient agreement with the exact implicit gradient",
            "",
            f"Reduced size: the same cell definition with {grad_where} (n = {exact.n} state elements). "
            f"Exact: h* to a relative residual of {exact.residual:.1e} (fixed-point iteration, then chord-Newton "
            f"steps with the dense Jacobian), J = df/dh at h* by {exact.n} VJPs, z = (I - J^T)^-1 readout "
            f"(dense solve), gradient = z^T df/d(weights, x). At h*: spectral radius rho(J) = "
            f"{exact.spectral_radius:.4f}, max column sum max_j (1^T J)_j = {exact.max_column_sum:.4f} "
            f"(computed in {exact.seconds:.0f} s). Each method runs N steps from h0 = 0 with the same "
            f"K = {args.neumann_steps}; its gradient of the task loss (penalty left out) over all weights and x "
            "is compared: cosine, relative error ||g - g*|| / ||g*|| (all; weights only; x only), and the "
            "forward's last relative residual ||f(h_N) - h_N|| / ||f(h_N)||. Note: at an exact equilibrium the "
            "update gate's weights get zero implicit gradient (see crbp/recurrence.py), so BPTT's gradient "
            "differs from the implicit one there even when converged.",
            "",
            common.markdown_table(
                ["method", "steps N", "cosine", "rel. error (all)", "rel. error (weights)", "rel. error (x)",
                 "forward residual"],
                [[r["method"], r["steps"], f"{r['cosine']:.6f}", r["rel_err"], r["rel_err_params"],
                  r["rel_err_input"], r["fwd_residual"]] for r in grad_rows]),
            "",
        ]
    lines += ["## Goals", ""] + (goals(perf, grad_rows, args, peak_label) or ["- (not enough rows)"]) + [""]
    md_path = os.path.join(args.out, f"recurrence_{wl.name}.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines))

    def series(key, scale):
        return {m: {r["steps"]: (r[key] * scale if r.get(key) is not None else None) for r in perf if r["method"] == m}
                for m in methods}

    panels = [(f"{peak_label} (MiB)", series("peak", 1 / common.MIB))] if any(r.get("peak") is not None for r in perf) else []
    panels.append(("saved for backward (MiB)", series("saved", 1 / common.MIB)))
    panels.append(("time per training step (ms)", series("time", 1e3)))
    where = machine.get("gpu", machine["cpu"])
    common.plot_series(os.path.join(args.out, f"recurrence_{wl.name}.png"),
                       f"{wl.name}: x {shape}; {where}", panels)
    return md_path


def parse_args(argv):
    p = argparse.ArgumentParser(description="Our recurrence training modes against torchdeq, per workload.")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(common.ALL_METHODS))
    p.add_argument("--steps", nargs="+", type=int, default=list(STEPS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.path.join(common.REPO_ROOT, "benchmarks", "results"))
    p.add_argument("--tiny", action="store_true", help="tiny sizes (for the test)")
    p.add_argument("--size", default="auto", choices=("auto", "full", "cpu"),
                   help="auto: full scale on GPU, the CPU size on CPU")
    p.add_argument("--neumann-steps", type=int, default=15)
    p.add_argument("--phantom-steps", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-rss", dest="rss", action="store_false", help="skip the peak-RSS subprocesses (CPU)")
    p.add_argument("--no-grad-check", dest="grad_check", action="store_false")
    p.add_argument("--profile-steps", type=int, default=20,
                   help="N at which to time the pieces of crbp's and torchdeq's step (0: skip)")
    p.add_argument("--grad-device", default=None, help="device of the float64 gradient check (default: --device)")
    args = p.parse_args(argv)
    if args.grad_device is None:
        args.grad_device = args.device
    if min(args.steps) < 1:
        p.error("--steps must be >= 1")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    methods, notes = common.split_methods(args.methods)
    for n in notes:
        print(n, flush=True)
    machine = common.machine_info(args.device)
    print(common.machine_line(machine), flush=True)
    written = []
    for name in args.workloads:
        path = run_workload(WORKLOADS[name], methods, notes, args, argv, machine)
        if path:
            written.append(path)
            print(f"wrote {path}", flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    return written


if __name__ == "__main__":
    main()

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

Methods (see `methods.method_description`): bptt, crbp, rbp (ours, `Recurrence`), cbptt (ours,
optional), torchdeq_ift, torchdeq_hook_ift, torchdeq_phantom (torchdeq 0.1.0, the optional
`bench` extra: skipped with a message when it is not installed).

Metrics per (workload, method, steps): saved-for-backward bytes; peak memory (CUDA
max_memory_allocated on GPU; on CPU the peak RSS increase of a step in a fresh subprocess); time
per training step (median after warm-up, CUDA-synchronized); gradient agreement (cosine,
relative error) with the exact implicit gradient (dense Jacobian + solve, float64) on a reduced
size of the same cell. Outputs: benchmarks/results/recurrence_<workload>.md and .png. Memory is
released between configurations and workloads; the parent process's peak RSS is printed at the end.

Layout: workloads.py / fpn_workload.py (what runs), methods.py (how it trains), measure.py with
memory.py and timing.py (measuring), exact_gradient.py (the reference gradient), step_profile.py
(where the time goes), recurrence_report.py (the result file); this module runs them.
"""
import argparse
import os
import sys
import time
from typing import Dict, Optional, Tuple

import torch

from .exact_gradient import ExactGradient, agreement, exact_implicit_gradient, method_gradient
from .fpn_workload import fpn_case
from .measure import measure_group
from .memory import REPO_ROOT, release_memory
from .methods import ALL_METHODS, TORCHDEQ_METHODS, build_method, split_methods
from .recurrence_report import write_outputs
from .report import print_parent_peak, print_row, start_run
from .step_profile import profile_components
from .workloads import FACTORY, WORKLOADS, Workload, build_case, make_problem, perf_case, settings_of, size_of

DEFAULT_METHODS = ("bptt", "crbp", "rbp", "torchdeq_ift", "torchdeq_hook_ift", "torchdeq_phantom")
STEPS = (1, 5, 10, 20, 40)


def measure_performance(wl: Workload, methods, args, fpn_cache) -> Dict[Tuple[str, int], dict]:
    """Every (method, N): saved bytes, peak memory, time (round-robin across all of them)."""
    # N-major: the methods compared at one N run back to back in each round, seconds apart.
    cases = {(m, n): perf_case(wl, m, n, args) for n in args.steps for m in methods}
    if wl.name == "fpn":
        build = lambda case: fpn_case(args.device, case["method"], case["steps"], args.neumann_steps, fpn_cache)  # noqa: E731
        factory = None  # the CPU peak-RSS subprocess is not used: fpn runs on GPU only
    else:
        build, factory = build_case, FACTORY
    return measure_group(cases, build, factory, args.device, args.repeats, args.warmup, args.rss)


def measure_gradients(wl: Workload, methods, args) -> Tuple[Optional[ExactGradient], list, str]:
    """Gradient agreement with the exact implicit gradient, on the reduced size, float64."""
    size = "tiny" if args.tiny else "full"
    shape = wl.reduced[size]
    case = {"workload": wl.name, "shape": list(shape), "kernel": 3 if args.tiny else wl.kernel,
            "dtype": "float64", "device": args.grad_device, "seed": args.seed}
    cell, x, readout = make_problem(case)
    exact = exact_implicit_gradient(cell, x, readout)
    rows = []
    for method in methods:
        for steps in args.steps:
            m = build_method(method, cell, steps, settings_of(
                {"neumann_steps": args.neumann_steps, "phantom_steps": args.phantom_steps}))
            grads, residual = method_gradient(m, cell, x, readout)
            rows.append({"method": method, "steps": steps, "fwd_residual": residual,
                         **agreement(grads, exact.grads)})
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
        dropped = [m for m in methods if m in TORCHDEQ_METHODS]
        methods = [m for m in methods if m not in TORCHDEQ_METHODS]
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
        print_row(f"{method:18s} N={steps:3d}", row)
    perf.sort(key=lambda r: (methods.index(r["method"]), r["steps"]))
    fpn_cache = None
    release_memory(args.device)
    profile = profile_components(wl, args) if args.profile_steps and wl.name != "fpn" else []
    exact, grad_rows, grad_where = None, [], ""
    if args.grad_check and wl.reduced:
        exact, grad_rows, grad_where = measure_gradients(wl, methods, args)
        for r in grad_rows:
            print(f"  grad {r['method']:18s} N={r['steps']:3d} cos={r['cosine']:.6f} rel={r['rel_err']:.3e}", flush=True)
    release_memory(args.device)
    return write_outputs(wl, methods, perf, exact, grad_rows, grad_where, notes, args, argv, machine,
                         time.perf_counter() - t0, profile)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Our recurrence training modes against torchdeq, per workload.")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(ALL_METHODS))
    p.add_argument("--steps", nargs="+", type=int, default=list(STEPS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results"))
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
    machine = start_run(args)
    t0 = time.perf_counter()
    methods, notes = split_methods(args.methods)
    for n in notes:
        print(n, flush=True)
    written = []
    for name in args.workloads:
        path = run_workload(WORKLOADS[name], methods, notes, args, argv, machine)
        release_memory(args.device)
        if path:
            written.append(path)
            print(f"wrote {path}", flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    print_parent_peak()
    return written


if __name__ == "__main__":
    main()

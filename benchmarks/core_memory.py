"""Memory and time of one training step of the C-RBP core against the number of recurrent steps,
for the four training modes (issue 3's benchmark).

    python -m benchmarks.core_memory                      # writes benchmarks/results/core_memory.{md,png}
    python -m benchmarks.core_memory --tiny --out /tmp/x  # seconds; what the test runs

Workload: `HGRUCell(32, 3, norm="group", num_groups=8)` on x of shape [4, 32, 64, 64] (float32),
loss sum(readout * h) (+ the LCP in crbp/cbptt), backward into the weights and x. Per mode and
steps: saved-for-backward bytes, peak RSS increase of a training step (fresh subprocess per
configuration) or CUDA peak, and median time per training step. See benchmarks/memory.py and
benchmarks/timing.py for how each is measured.
"""
import argparse
import os
import sys
import time

import torch

from crbp_detectron.utils.tables import markdown_table

from .machine import machine_line
from .measure import measure_group
from .memory import MIB, REPO_ROOT, release_memory
from .methods import NEUMANN_NOTE, MethodSettings, build_method, method_description, training_case
from .report import command_line, plot_series, print_parent_peak, print_row, series, start_run
from .timing import paired_ratio

FACTORY = "benchmarks.core_memory:build_case"
MODES = ("crbp", "rbp", "bptt", "cbptt")
STEPS = (1, 5, 10, 20, 40)
SHAPE = (4, 32, 64, 64)
TINY_SHAPE = (2, 8, 12, 12)


def build_case(case):
    """A `Case` from a JSON-able description (also used by the peak-RSS subprocess)."""
    from crbp_detectron.crbp import HGRUCell

    device = torch.device(case.get("device", "cpu"))
    torch.manual_seed(case.get("seed", 0))
    channels = case["shape"][1]
    cell = HGRUCell(channels, 3, norm="group", num_groups=min(8, channels)).to(device)
    gen = torch.Generator().manual_seed(case.get("seed", 0) + 1)
    x = torch.rand(case["shape"], generator=gen).to(device).requires_grad_()
    readout = (torch.randn(case["shape"], generator=gen) / case["shape"][0]).to(device)
    settings = MethodSettings(neumann_steps=case.get("neumann_steps", 15))
    method = build_method(case["method"], cell, case["steps"], settings)
    return training_case(method, cell.parameters(), x, readout)


def write_outputs(rows, args, argv, machine, wall):
    os.makedirs(args.out, exist_ok=True)
    cpu = args.device == "cpu"
    peak_name = "peak RSS increase (MiB)" if cpu else "peak CUDA memory (MiB)"
    columns = ["mode", "steps", "saved for backward (MiB)", peak_name, "time / step (ms, median)", "Neumann terms",
               "time min–max (ms)"]
    table = []
    for r in rows:
        peak = r.get("peak")
        table.append([
            r["mode"], r["steps"], r["saved"] / MIB if "saved" in r else r.get("error"),
            peak / MIB if peak is not None else (r.get("peak_error") or ("not measured" if cpu and not args.rss else None)),
            r["time"] * 1e3 if "time" in r else None, r.get("neumann"),
            f"{r['time_min'] * 1e3:.1f}–{r['time_max'] * 1e3:.1f}" if "time" in r else None,
        ])

    def get(mode, steps, key):
        for r in rows:
            if r["mode"] == mode and r["steps"] == steps:
                return r.get(key)
        return None

    quotes = []
    lo, hi = min(args.steps), max(args.steps)
    for key, label in (("saved", "saved-for-backward bytes"), ("peak", peak_name.split(" (")[0])):
        a, b = get("crbp", hi, key), get("crbp", lo, key)
        if a is not None and b:
            quotes.append(f"- crbp memory at {hi} steps ÷ at {lo} step(s), {label}: **{a / b:.3f}** "
                          f"({a / MIB:.1f} MiB / {b / MIB:.1f} MiB)")
    mid = 20 if 20 in args.steps else sorted(args.steps)[len(args.steps) // 2]
    a, b = get("crbp", mid, "time"), get("bptt", mid, "time")
    if a is not None and b:
        paired = paired_ratio(get("crbp", mid, "times"), get("bptt", mid, "times"))
        quotes.append(f"- crbp time at {mid} steps ÷ bptt time at {mid} steps: **{a / b:.3f}** "
                      f"({a * 1e3:.1f} ms / {b * 1e3:.1f} ms; median of per-repeat ratios {paired:.3f})")
    for key, label in (("saved", "saved bytes"), ("peak", peak_name.split(" (")[0])):
        a, b = get("bptt", mid, key), get("crbp", mid, key)
        if a is not None and b:
            quotes.append(f"- bptt ÷ crbp memory at {mid} steps, {label}: **{a / b:.2f}**")

    shape = TINY_SHAPE if args.tiny else SHAPE
    lines = [
        "# C-RBP core: memory and time against recurrent steps",
        "",
        "Command (from the repository root):",
        "",
        "```",
        command_line("benchmarks.core_memory", argv),
        "```",
        "",
        f"Machine: {machine_line(machine)}. Wall-clock of the whole run: {wall:.0f} s.",
        "",
        f"Workload: `HGRUCell({shape[1]}, 3, norm='group', num_groups={min(8, shape[1])})`, x of shape "
        f"{list(shape)} float32 (a leaf with requires_grad, standing for upstream features), loss "
        "`sum(readout * h)` (+ the LCP in crbp/cbptt, lambda 0.9, mean), backward into the weights and x. "
        f"Neumann: {args.neumann_steps} VJP terms, no early stop.",
        "",
        "Modes:",
        "",
    ] + ["- " + d for d in method_description(MethodSettings(neumann_steps=args.neumann_steps))
         if d.split("`")[1] in MODES] + [
        "",
        "Measurements (details in `benchmarks/memory.py` and `benchmarks/timing.py`):",
        "",
        "- saved for backward: storages autograd saves during the forward (penalty included), each once, "
        "parameters and input excluded.",
        ("- peak RSS increase: one training step in a fresh subprocess per configuration, glibc serving "
         "allocations >= 64 KiB by mmap, after one warm-up step; VmHWM (reset through "
         "/proc/self/clear_refs) minus VmRSS before the step. It includes the gradients and every "
         "temporary of the backward, so it is larger than the saved bytes." if cpu else
         "- peak CUDA memory: max_memory_allocated during one step minus memory allocated before it."),
        f"- time: median of {args.repeats} training steps (forward + backward) after {args.warmup} warm-up "
        "step(s), in this process, timed round-robin: each repeat runs every configuration once, so "
        "that changes in the load of the shared CPU fall on all configurations alike. Expect noise; "
        "min–max shown.",
        "",
        NEUMANN_NOTE,
        "",
        markdown_table(columns, table),
        "",
        "Key numbers:",
        "",
    ] + (quotes or ["- (not enough configurations to compute them)"]) + [""]
    md_path = os.path.join(args.out, "core_memory.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines))

    panels = [("saved for backward (MiB)", series(rows, "mode", args.modes, "saved", 1 / MIB))]
    if any(r.get("peak") is not None for r in rows):
        panels.append((peak_name, series(rows, "mode", args.modes, "peak", 1 / MIB)))
    panels.append(("time per training step (ms)", series(rows, "mode", args.modes, "time", 1e3)))
    plot_series(os.path.join(args.out, "core_memory.png"),
                       f"C-RBP core, HGRUCell({shape[1]}, 3) on {list(shape)}; {machine.get('gpu', machine['cpu'])}",
                       panels)
    return md_path, quotes


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--steps", nargs="+", type=int, default=list(STEPS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--neumann-steps", type=int, default=15)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results"))
    p.add_argument("--tiny", action="store_true", help="tiny sizes (for the test)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-rss", dest="rss", action="store_false",
                   help="skip the peak-RSS subprocesses (CPU)")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    machine = start_run(args)
    t0 = time.perf_counter()
    shape = TINY_SHAPE if args.tiny else SHAPE
    cases = {(mode, steps): {"method": mode, "steps": steps, "shape": list(shape), "device": args.device,
                             "seed": 0, "neumann_steps": args.neumann_steps}
             for steps in args.steps for mode in args.modes}  # same N adjacent in the round-robin
    measured = measure_group(cases, build_case, FACTORY, args.device, args.repeats, args.warmup, args.rss)
    release_memory(args.device)
    rows = []
    for (mode, steps), result in measured.items():
        rows.append({"mode": mode, "steps": steps, **result})
        print_row(f"{mode:6s} steps={steps:3d}", rows[-1])
    rows.sort(key=lambda r: (args.modes.index(r["mode"]), r["steps"]))
    md_path, quotes = write_outputs(rows, args, argv, machine, time.perf_counter() - t0)
    print("\n".join(quotes))
    print(f"wrote {md_path} and core_memory.png ({time.perf_counter() - t0:.0f} s)")
    print_parent_peak()
    return rows


if __name__ == "__main__":
    main()

"""The recurrence benchmark's result file (benchmarks/results/recurrence_<workload>.md and .png):
what was measured and how, the tables, and the goals' ratios."""
import os

from crbp_detectron.utils.tables import markdown_table

from .machine import machine_line
from .memory import MIB
from .methods import NEUMANN_NOTE, method_description
from .report import command_line, plot_series, series
from .timing import paired_ratio
from .workloads import FPN_CONFIG, settings_of, size_of


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
                       f"(goal ≤ 1.05; {a / MIB:.2f} / {b / MIB:.2f} MiB)")
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
                    paired = paired_ratio(_get(perf, ours, n, "times"), _get(perf, theirs, n, "times"))
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
            r["method"], r["steps"], r["saved"] / MIB if "saved" in r else r.get("error"),
            peak / MIB if peak is not None else (r.get("peak_error") or ("not measured" if not cuda and not args.rss else None)),
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
        command_line("benchmarks.recurrence", argv),
        "```",
        "",
        f"Machine: {machine_line(machine)}. Wall-clock of this workload: {wall:.0f} s.",
        "",
        f"Workload: {what}",
        "",
        "Methods, configured to compute the same quantity (same cell object, same N cell evaluations "
        f"in the forward, the same {args.neumann_steps + 1}-term Neumann sum in the backward):",
        "",
    ] + ["- " + d for d in method_description(settings_of(
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
        NEUMANN_NOTE,
        "",
        markdown_table(columns, table),
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
            markdown_table(["piece", "ms"], [[name, value] for name, value, _ in profile]),
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
            markdown_table(
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

    panels = [(f"{peak_label} (MiB)", series(perf, "method", methods, "peak", 1 / MIB))] \
        if any(r.get("peak") is not None for r in perf) else []
    panels.append(("saved for backward (MiB)", series(perf, "method", methods, "saved", 1 / MIB)))
    panels.append(("time per training step (ms)", series(perf, "method", methods, "time", 1e3)))
    where = machine.get("gpu", machine["cpu"])
    plot_series(os.path.join(args.out, f"recurrence_{wl.name}.png"), f"{wl.name}: x {shape}; {where}", panels)
    return md_path


"""Where one training step's time goes (recurrence benchmark, `--profile-steps N`): each piece of
crbp's and of torchdeq's step timed alone, and models that add the pieces up as each method runs
them."""
import torch

from .methods import torchdeq_status
from .timing import median, time_interleaved
from .workloads import Workload, build_case, make_problem, perf_case


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
    h = iterate(cell, x, h0, n - 1).h
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
    available, _ = torchdeq_status()
    if available:
        from torchdeq.solver import fixed_point_iter

        def torchdeq_solve():
            with torch.no_grad():
                fixed_point_iter(lambda z: cell(x, z), h0, max_iter=n - 1, tol=0.0, stop_mode="abs", return_final=True)
        pieces["torchdeq: N-1 graph-free steps (fixed_point_iter)"] = torchdeq_solve
    for m in ("crbp", "rbp") + (("torchdeq_ift", "torchdeq_hook_ift") if available else ()):
        pieces[f"whole training step: {m}"] = build_case(dict(case, method=m)).step
    times = time_interleaved(pieces, args.repeats, 1, args.device)
    ms = {name: median(ts) * 1e3 for name, ts in times.items()}
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


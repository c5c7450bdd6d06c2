"""VJPs and time each backward solver needs to reach a given implicit-gradient error (issue 13).

    python -m benchmarks.backward_solvers --demo-weights output/demo/model_final.pth --threads 1
    python -m benchmarks.backward_solvers --cells pathfinder_init --max-vjps 50 --out /tmp/x   # quick

Cells (float64, sizes at which the exact gradient is a dense solve):
  pathfinder_init     `HGRUCell.pathfinder(25, 7)` (BatchNorm, batch statistics) on x [1, 25, 10, 10]
  mask_head_init      `HGRUCell.coco(256)` (GALA, GroupNorm 32) on x [1, 256, 3, 3] (the COCO cell)
  demo_mask_head_trained  the demo config's mask-head cell (32 channels, GroupNorm 8) with the
                      weights of a trained demo checkpoint (--demo-weights), on the features of the
                      first RoI its model finds in the demo validation set [1, 32, 14, 14]
  demo_mask_head_init the same cell as initialised (seed 0), on the same RoI features
For each: h* to a relative residual of 1e-12 and the exact gradient of L = sum(readout * h*) w.r.t.
(weights, x) from the dense Jacobian (benchmarks.exact_gradient.exact_implicit_gradient); then every solver
with budgets of K VJPs (tolerance 0: it uses them all unless it converges) and the relative error
of its gradient. Reported: the fewest VJPs reaching rel. err 1e-3 and 1e-6 (budgets on a grid, then
bisected), the wall time of that solve (median of 3), and the error at 15 VJPs (the default budget).
Time is of the float64 solve at these sizes on the CPU it ran on; VJP counts carry over to any size.
"""
import argparse
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from crbp_detectron.crbp import BackwardConfig, HGRUCell, solve_backward
from crbp_detectron.utils.tables import markdown_table

from .exact_gradient import ExactGradient, exact_implicit_gradient
from .machine import machine_info, machine_line
from .memory import REPO_ROOT
from .report import command_line
from .timing import median

TARGETS = (1e-3, 1e-6)
SOLVERS = {  # label -> BackwardConfig overrides
    "neumann": dict(solver="neumann"),
    "gmres (restart 5)": dict(solver="gmres", restart=5),
    "gmres (restart 10)": dict(solver="gmres", restart=10),
    "gmres (restart 20)": dict(solver="gmres", restart=20),
    "gmres (no restart)": dict(solver="gmres", restart=100000),
    "bicgstab": dict(solver="bicgstab"),
}
CELLS = ("pathfinder_init", "mask_head_init", "demo_mask_head_trained", "demo_mask_head_init")
DEMO_CONFIG = "demo/panoptic_crbp_demo.yaml"


# ----------------------------------------------------------------------------------- problems
def _seeded(shape, seed, kind="rand"):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand if kind == "rand" else torch.randn)(shape, generator=gen, dtype=torch.float64)


def demo_model(weights: Optional[str]):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from crbp_detectron.config import load_config

    cfg = load_config(DEMO_CONFIG, ["MODEL.WEIGHTS", weights or ""])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if weights:
        DetectionCheckpointer(model).load(weights)
    return model, cfg


def demo_mask_head_inputs(weights: str, images: Optional[int] = None):
    """(the trained demo model's mask-head cell, the RoI features its model feeds the cell on demo
    validation images: on the first `images` of them, or (None) up to the first with an RoI)."""
    from crbp_detectron.data.demo import register_demo_datasets
    from crbp_detectron.engine import Trainer

    register_demo_datasets(progress=False)
    model, cfg = demo_model(weights)
    block = model.roi_heads.mask_head.recurrence
    captured = []
    handle = block.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    with torch.no_grad():
        for i, batch in enumerate(Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])):
            if images is not None and i >= images:
                break
            model(batch)
            if images is None and captured and captured[-1].shape[0]:
                break
    handle.remove()
    return block.cell, [c for c in captured if c.shape[0]]


def demo_roi_features(weights: str):
    """(the trained demo model's mask-head cell, one RoI's features from a demo validation image)."""
    cell, features = demo_mask_head_inputs(weights)
    return cell, features[-1][:1]


def make_problem(name: str, weights: Optional[str]):
    if name == "pathfinder_init":
        torch.manual_seed(0)
        cell, x = HGRUCell.pathfinder(25, 7), _seeded((1, 25, 10, 10), 1)
    elif name == "mask_head_init":
        torch.manual_seed(0)
        cell, x = HGRUCell.coco(256, 3), _seeded((1, 256, 3, 3), 1)
    elif name in ("demo_mask_head_init", "demo_mask_head_trained"):
        if not weights:
            raise SystemExit(f"{name} needs --demo-weights (a trained demo checkpoint: its RoI features)")
        cell, x = demo_roi_features(weights)
        if name.endswith("init"):  # the same RoI features, the cell as initialised
            cell = demo_model(None)[0].roi_heads.mask_head.recurrence.cell
    else:
        raise ValueError(name)
    cell = cell.double().train()
    x = x.double()
    return cell, x, _seeded(tuple(x.shape), 2, "randn")


# ----------------------------------------------------------------------------------- measuring
class GradientProblem:
    """The step at h* with a graph, its VJP, and the gradient a z gives."""

    def __init__(self, cell, x, readout, exact: ExactGradient):
        self.x = x.clone().requires_grad_()
        self.h_in = exact.h_star.clone().requires_grad_()
        self.params = [p for p in cell.parameters() if p.requires_grad]
        self.out = cell(self.x, self.h_in)
        self.g = readout
        self.exact = torch.cat([t.reshape(-1) for t in exact.grads])

    def vjp(self, v):
        return torch.autograd.grad(self.out, self.h_in, v, retain_graph=True)[0]

    def error(self, z) -> float:
        grads = torch.autograd.grad(self.out, self.params + [self.x], z, retain_graph=True, allow_unused=True)
        got = torch.cat([(torch.zeros_like(t) if g is None else g).reshape(-1)
                         for g, t in zip(grads, self.params + [self.x])])
        return float((got - self.exact).norm() / self.exact.norm())

    def solve(self, overrides, budget):
        config = BackwardConfig(max_vjps=budget, tol=0.0, **overrides)
        t0 = time.perf_counter()
        z, stats = solve_backward(self.vjp, self.g, config)
        return z, stats, time.perf_counter() - t0


def budget_grid(max_vjps: int) -> List[int]:
    grid, k = [], 1
    while k <= max_vjps:
        grid.append(k)
        k = max(k + 1, int(round(k * 1.25)))
    return grid


def curve(problem: GradientProblem, overrides: Dict, max_vjps: int):
    """{budget: (rel. error, VJPs used, diverged)} on the grid, stopping once below 1e-7."""
    points = {}
    for budget in budget_grid(max_vjps) + ([15] if max_vjps >= 15 else []):
        if budget in points:
            continue
        z, stats, _ = problem.solve(overrides, budget)
        points[budget] = (problem.error(z), stats.vjps, stats.diverged)
        if points[budget][0] < 1e-7 or stats.converged or stats.diverged:
            break
    return dict(sorted(points.items()))


def fewest_vjps(problem, overrides, points, target):
    """(VJPs, seconds) of the smallest budget reaching `target`: bisected between grid points."""
    budgets = [b for b, (err, _, _) in points.items() if err <= target]
    if not budgets:
        return None, None
    hi = budgets[0]
    lo = max([b for b in points if b < hi], default=0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        z, _, _ = problem.solve(overrides, mid)
        if problem.error(z) <= target:
            hi = mid
        else:
            lo = mid
    times = []
    for _ in range(3):
        z, stats, seconds = problem.solve(overrides, hi)
        times.append(seconds)
    return stats.vjps, median(times)


def measure_cell(name, weights, max_vjps):
    cell, x, readout = make_problem(name, weights)
    t0 = time.perf_counter()
    exact = exact_implicit_gradient(cell, x, readout, spectral_radius=exact_rho(x))
    problem = GradientProblem(cell, x, readout, exact)
    rows, curves = [], {}
    for label, overrides in SOLVERS.items():
        limit = max_vjps if overrides["solver"] == "neumann" else min(max_vjps, 1000)
        points = curve(problem, overrides, limit)
        curves[label] = {b: e for b, (e, _, _) in points.items()}
        reach = [fewest_vjps(problem, overrides, points, t) for t in TARGETS]
        at15 = points.get(15)
        rows.append([label] + [r[0] if r[0] is not None else f"> {limit}" for r in reach]
                    + [r[1] * 1e3 if r[1] is not None else None for r in reach]
                    + [at15[0] if at15 else None, "yes" if any(d for _, _, d in points.values()) else "no"])
        print(f"  {name} {label}: {rows[-1]}", flush=True)
    return exact, rows, curves, time.perf_counter() - t0


def exact_rho(x) -> bool:
    return x.numel() <= 3000  # dense eigenvalues beyond that cost minutes on one core


# ----------------------------------------------------------------------------------- output
COLUMNS = ["solver", "VJPs to 1e-3", "VJPs to 1e-6", "ms to 1e-3", "ms to 1e-6", "rel. err at 15 VJPs",
           "diverged flag seen"]


def write(out_dir, argv, info, results):
    lines = ["# Backward solvers: VJPs and time to a given implicit-gradient error", "",
             "Command (from the repository root):", "", "```", command_line("benchmarks.backward_solvers", argv),
             "```", "", "Machine: " + machine_line(info) + " (shared with other jobs: times are indicative).",
             "", __doc__.split("\n\n", 2)[2].strip(), ""]
    for name, (exact, rows, _, seconds) in results.items():
        rho = f"{exact.spectral_radius:.4f}" if exact.spectral_radius == exact.spectral_radius else "not computed"
        lines += [f"## {name}", "",
                  f"n = {exact.n} state elements; h* to relative residual {exact.residual:.1e}; spectral radius "
                  f"rho(J) = {rho}; max column sum {exact.max_column_sum:.3f}; {seconds:.0f} s in all.", "",
                  markdown_table(COLUMNS, rows), ""]
    path = os.path.join(out_dir, "backward_solvers.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {path}", flush=True)


def plot(out_dir, results):
    from crbp_detectron.utils.plotting import saved_figure

    for name, (_, _, curves, _) in results.items():
        path = os.path.join(out_dir, f"backward_solvers_{name}.png")
        with saved_figure(path, f"backward solvers: {name}", "VJPs (budget)", "gradient rel. error") as ax:
            for label, points in curves.items():
                kept = {b: e for b, e in points.items() if e == e and e > 0}  # log axes: finite, positive
                ax.plot(list(kept), list(kept.values()), marker=".", label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    p.add_argument("--demo-weights", default=None, help="a trained demo checkpoint (model_final.pth)")
    p.add_argument("--max-vjps", type=int, default=6000, help="largest Neumann budget (Krylov: 1000)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    info = machine_info("cpu")
    results = {}
    for name in args.cells:
        print(f"== {name}", flush=True)
        results[name] = measure_cell(name, args.demo_weights, args.max_vjps)
        write(args.out, argv, info, results)  # after each cell: a time-out keeps what is done
    plot(args.out, results)


if __name__ == "__main__":
    main()

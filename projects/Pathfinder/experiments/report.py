"""What the Pathfinder experiments write: statistics over seeds (mean ± sample standard deviation),
Markdown tables (crbp_detectron.utils.tables), and plots (crbp_detectron.utils.plotting) of IoU against
test-time steps and of learning curves, all from the runs' results files."""
import math
import statistics
from typing import Dict, List, Optional, Sequence

from crbp_detectron.utils.plotting import saved_panels

Seeds = Dict[int, Dict]  # {seed: results.json of one run}


def mean_std(values: Sequence[float]):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values: Sequence[float], digits: int = 3) -> str:
    """"mean ± std" over seeds (sample std), or "–" without values."""
    mean, std = mean_std(values)
    return "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def test_metric(result: Dict, length, key: str = "iou") -> float:
    return result["test"].get(str(length), {}).get(key, float("nan"))


def sweep_metric(result: Dict, length, steps: int, key: str = "iou") -> float:
    sweep = result.get("sweep", {}).get(str(length))
    return sweep[steps - 1][key] if sweep and steps <= len(sweep) else float("nan")


def twice_steps_ratio(result: Dict, length, key: str = "iou") -> float:
    """The metric at twice the run's training steps over the one at its steps (the test-time sweep);
    nan where the sweep does not reach that far or the metric at its steps is 0."""
    h = result.get("steps")
    at_h = sweep_metric(result, length, h, key) if h else float("nan")
    return sweep_metric(result, length, 2 * h, key) / at_h if h and at_h > 0 else float("nan")


def curve_values(result: Dict, key: str) -> List[tuple]:
    """[(iteration, value)] of a logged scalar. Detectron2 logs a model's only loss as total_loss
    alone (no loss_* term), so a loss term is read from total_loss in such runs."""
    curve = result.get("curve", [])
    if key.startswith("loss_") and not any(k.startswith("loss_") for e in curve for k in e):
        key = "total_loss"
    return [(e["iteration"], e[key]) for e in curve if key in e]


def final_value(result: Dict, key: str, last: int = 3) -> float:
    """Mean of the last `last` logged values of a scalar (a smoothed end-of-training value)."""
    values = [v for _, v in curve_values(result, key)][-last:]
    return statistics.fmean(values) if values else float("nan")


# Statistics renamed since some runs were made (the backward solvers' release): new -> old name.
_FORMER_NAMES = {"backward_vjps": "neumann_terms", "backward_residual": "neumann_residual"}


def block_stat(result: Dict, stat: str) -> str:
    """The curve key of a recurrent-block statistic (the block is named "body"), under the name
    the run logged it with."""
    key = f"crbp/body/{stat}"
    former = f"crbp/body/{_FORMER_NAMES.get(stat, stat)}"
    return former if not curve_values(result, key) and curve_values(result, former) else key


def seeds_of(runs: Seeds) -> List[int]:
    return sorted(runs)


def model_color(i: int, count: int):
    """Colour of the i-th of `count` models: matplotlib's 10-colour cycle repeats past 10 models,
    so more get tab20's 20 distinct colours."""
    if count <= 10:
        return f"C{i}"
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


def plot_iou_against_steps(path: str, title: str, groups: Dict[str, Seeds], lengths: Sequence[int],
                           horizons: Dict[str, Optional[int]], feedforward: Sequence[str] = ()) -> None:
    """One panel per length: mean IoU over seeds (band: ± std) against test-time steps; a dashed
    vertical line at each model's training horizon; feed-forward models as horizontal lines."""
    with saved_panels(path, title, [("test-time steps", f"IoU, contours of {L} paddles") for L in lengths],
                      figsize=(4.4 * len(lengths), 3.8 + 0.15 * len(groups)), legend_below=True) as axes:
        for ax, length in zip(axes, lengths):
            for i, (name, runs) in enumerate(groups.items()):
                color = model_color(i, len(groups))
                if name in feedforward:
                    ax.axhline(mean_std([test_metric(r, length) for r in runs.values()])[0], color=color, ls=":",
                               label=name)
                    continue
                sweeps = [r["sweep"].get(str(length)) for r in runs.values() if r.get("sweep", {}).get(str(length))]
                if not sweeps:
                    continue
                n = min(len(s) for s in sweeps)
                stats = [mean_std([s[t]["iou"] for s in sweeps]) for t in range(n)]
                steps = list(range(1, n + 1))
                ax.plot(steps, [m for m, _ in stats], color=color, label=name)
                ax.fill_between(steps, [m - s for m, s in stats], [m + s for m, s in stats], color=color, alpha=0.2)
                if horizons.get(name):
                    ax.axvline(horizons[name], color=color, ls="--", lw=0.8, alpha=0.7)
            ax.set_ylim(0, 1)


def plot_curves(path: str, title: str, groups: Dict[str, Seeds], keys: Sequence[tuple]) -> None:
    """Learning curves, one panel per (curve key, y label, log scale?): each seed a thin line."""
    with saved_panels(path, title, [("iteration", label) for _, label, _ in keys],
                      figsize=(4.4 * len(keys), 3.8)) as axes:
        for ax, (key, _, log) in zip(axes, keys):
            for i, (name, runs) in enumerate(groups.items()):
                for j, result in enumerate(runs.values()):
                    points = curve_values(result, key)
                    if points:
                        ax.plot(*zip(*points), color=model_color(i, len(groups)), lw=1, alpha=0.8, label=name if j == 0 else None)
            if log:
                ax.set_yscale("log")

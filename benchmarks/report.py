"""What every benchmark prints and writes: the run's start (threads, machine), one line per
measured configuration, the command that produced a result file, Markdown tables
(`crbp_detectron.utils.tables`, tabulate) and plots against the number of steps
(`crbp_detectron.utils.plotting`), and the parent process's peak memory at the end."""
import importlib.util
import json
import math
import os
from typing import Dict, Sequence, Tuple

import torch

from .machine import machine_info, machine_line
from .memory import MIB, process_peak_rss_bytes


def start_run(args) -> Dict[str, object]:
    """Applies --threads, prints and returns the machine description."""
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info(args.device)
    print(machine_line(machine), flush=True)
    return machine


def print_row(label: str, row: Dict[str, object]) -> None:
    problem = row.get("error") or row.get("peak_error")
    print(f"  {label} saved={row.get('saved', 0) / MIB:9.2f} MiB peak={(row.get('peak') or 0) / MIB:9.2f} MiB "
          f"time={row.get('time', float('nan')) * 1e3:9.1f} ms" + (f" [{problem}]" if problem else ""), flush=True)


def print_parent_peak() -> float:
    """Prints this (the parent) process's peak RSS in MiB, and returns it."""
    peak = process_peak_rss_bytes() / MIB
    print(f"parent process peak RSS: {peak:.0f} MiB", flush=True)
    return peak


def write_json(path: str, data) -> None:
    """A benchmark's raw results, from which `--report-only` rebuilds its tables."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def command_line(module: str, argv: Sequence[str]) -> str:
    return "python -m " + module + ("" if not argv else " " + " ".join(_quote(a) for a in argv))


def _quote(a: str) -> str:
    return a if a and all(c.isalnum() or c in "-_./=:,+" for c in a) else "'" + a.replace("'", "'\\''") + "'"


def series(rows, group_key: str, groups: Sequence[str], key: str, scale: float) -> Dict[str, Dict[int, float]]:
    """{group: {steps: row[key] * scale}} for plotting, e.g. one line per method."""
    return {g: {r["steps"]: (r[key] * scale if r.get(key) is not None else None) for r in rows if r[group_key] == g}
            for g in groups}


def plot_series(path: str, title: str, panels: Sequence[Tuple[str, Dict[str, Dict[int, float]]]]) -> None:
    """One panel per (y label, {series: {steps: value}}), x = steps. Without matplotlib (optional
    on a bare GPU machine) it says so and writes nothing."""
    if importlib.util.find_spec("matplotlib") is None:
        print(f"matplotlib is not installed: {path} not written", flush=True)
        return
    from crbp_detectron.utils.plotting import saved_panels

    with saved_panels(path, title, [("recurrent steps N", ylabel) for ylabel, _ in panels]) as axes:
        for ax, (_, lines) in zip(axes, panels):
            for name, points in lines.items():
                xs = sorted(k for k, v in points.items() if v is not None and not math.isnan(v))
                if xs:
                    ax.plot(xs, [points[k] for k in xs], marker="o", label=name)

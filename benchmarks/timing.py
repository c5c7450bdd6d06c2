"""Time per training step: repeated calls, CUDA-synchronized, round-robin across configurations
so that a shared machine's load changes fall on all of them alike."""
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

def time_step(step: Callable[[], None], repeats: int, warmup: int = 1, device: str = "cpu") -> List[float]:
    """Seconds per call of `step`, `repeats` of them after `warmup` untimed calls
    (CUDA-synchronized before and after each timed call)."""
    cuda = device.startswith("cuda")
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def time_interleaved(steps: Dict[object, Callable[[], None]], repeats: int, warmup: int = 1,
                     device: str = "cpu", after_round: Optional[Callable[[], None]] = None
                     ) -> Dict[object, List[float]]:
    """Like `time_step` for several configurations at once, round-robin: repeat r times every
    configuration once (in the dict's order) before repeat r + 1, so that a change in the
    machine's load (shared CPUs) falls on all of them alike; configurations that are compared
    should be adjacent in the dict, so that each repeat's ratio of the two (`paired_ratio`)
    compares runs made seconds apart. `after_round` runs, untimed, after the warm-up and after each
    round (e.g. to give freed memory back)."""
    after_round = after_round or (lambda: None)
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    after_round()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            times[name] += time_step(fn, 1, 0, device)
        after_round()
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over repeats of a[i] / b[i]: with round-robin timing, repeat i of both ran under
    nearly the same load, so this ratio is steadier than a ratio of medians on a shared machine."""
    return median([x / y for x, y in zip(a, b) if y > 0]) if a and b else float("nan")


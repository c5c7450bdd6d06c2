"""Memory and time of a group of configurations (e.g. every (method, N) of one workload)."""
from typing import Callable, Dict, Optional, Sequence

from crbp_detectron.crbp.memory import saved_bytes

from .memory import cuda_peak_bytes, is_oom, peak_rss_in_subprocess, release_memory
from .methods import Case
from .timing import median, time_interleaved, time_step


def measure_group(cases: Dict[object, Dict[str, object]], build: Callable[[Dict[str, object]], Case],
                  factory: Optional[str], device: str, repeats: int, warmup: int,
                  rss: bool, block_modules: Sequence[str] = ("detectron2",)) -> Dict[object, Dict[str, object]]:
    """Memory and time of several configurations (e.g. every (method, N) of a workload), by key.

    Each row gets: saved (bytes), peak (bytes: CUDA peak, or the CPU peak RSS increase from a
    fresh subprocess running `factory` when `rss`), time / time_min / time_max (seconds, timed
    round-robin across the configurations), or error / peak_error.
    """
    cuda = device.startswith("cuda")
    rows = {name: {} for name in cases}
    built = {}
    for name, case in cases.items():
        try:
            b = build(case)
            rows[name]["saved"] = saved_bytes(b.forward, exclude=b.inputs)[0]
            if cuda:
                b.step()
                rows[name]["peak"] = cuda_peak_bytes(b.step, device)
            built[name] = b
        except (RuntimeError, MemoryError) as e:
            if not is_oom(e):
                raise
            rows[name]["error"] = "out of memory"
            b = None
        release_memory(device)  # the forward's graph and activations, before the next configuration
    try:
        times = time_interleaved({n: b.step for n, b in built.items()}, repeats, warmup, device,
                                 after_round=lambda: release_memory(device))
    except (RuntimeError, MemoryError) as e:  # together they do not fit: one at a time
        if not is_oom(e):
            raise
        release_memory(device)
        times = {}
        for n, b in built.items():
            try:
                times[n] = time_step(b.step, repeats, warmup, device)
            except (RuntimeError, MemoryError) as e2:
                if not is_oom(e2):
                    raise
                rows[n]["error"] = "out of memory (timing)"
                release_memory(device)
    for n, ts in times.items():
        rows[n].update(time=median(ts), time_min=min(ts), time_max=max(ts), times=ts)
        if built[n].info is not None:
            rows[n]["neumann"] = built[n].info()
    built.clear()
    release_memory(device)
    if not cuda and rss and factory:
        for name, case in cases.items():
            if "error" not in rows[name]:
                result = peak_rss_in_subprocess(factory, case, block_modules=block_modules)
                rows[name]["peak"] = result.get("peak_rss_increase_bytes")
                rows[name]["peak_error"] = result.get("error")
    return rows


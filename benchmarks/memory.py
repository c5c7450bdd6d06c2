"""Memory of a training step, measured three ways, and releasing memory between configurations.

  * saved-for-backward bytes: `crbp_detectron.crbp.memory.saved_bytes` (each storage autograd
    saves during the forward, once; parameters and the input excluded): the activation memory a
    method keeps. It does not see what a backward allocates (torchdeq's IFT recomputes a step there).
  * CPU peak RSS increase: one training step in a FRESH subprocess per configuration. In it, glibc
    serves every allocation of 64 KiB or more with mmap (MALLOC_MMAP_THRESHOLD_) so that freed
    tensors go back to the OS and cannot be reused silently from a malloc cache; one warm-up step
    of the same method at N = 1 (same shapes and kernels) pays one-time costs (thread pools, oneDNN
    caches); then the peak RSS counter is reset (`echo 5 > /proc/self/clear_refs`), the step runs,
    and the result is VmHWM - VmRSS(before the step). Where clear_refs is refused, the child falls
    back to VmHWM - VmRSS without the reset (then the warm-up step's peak can show through).
  * CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus what was allocated
    before the step.

Child protocol (used by `peak_rss_in_subprocess`):
    python -m benchmarks.memory child '{"factory": "benchmarks.workloads:build_case", "case": {...}}'
builds the case with the named factory (which must return a `methods.Case`) and prints one
`PEAK_RSS_JSON {...}` line.
"""
import ctypes
import ctypes.util
import gc
import importlib
import json
import os
import subprocess
import sys
from typing import Callable, Dict, Sequence

import torch


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHFINDER_PROJECT = os.path.join(REPO_ROOT, "projects", "Pathfinder")


def import_pathfinder_project():
    """Makes the Pathfinder project's packages (`pathfinder`, `experiments`) importable, as its
    train_net.py finds them (the package itself never imports the project)."""
    import sys

    if PATHFINDER_PROJECT not in sys.path:
        sys.path.insert(0, PATHFINDER_PROJECT)
MIB = 1024.0 * 1024.0


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0). False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def load_factory(spec: str):
    """"module:function" -> the function (a case factory named in a child request)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _child_measure(request: Dict[str, object]) -> Dict[str, object]:
    for name in request.get("block_modules", ()):
        sys.modules[name] = None  # `import name` raises ImportError: a faster start
    torch.set_num_threads(int(request.get("threads", torch.get_num_threads())))
    factory = load_factory(request["factory"])
    # Warm-up: the same method at N = 1 (same shapes, same kernels), so that one-time
    # allocations (thread pools, oneDNN primitive caches) are not counted as the step's.
    factory(dict(request["case"], steps=1)).step()
    case = factory(request["case"])
    gc.collect()
    rss_before = _status_kib("VmRSS")
    did_reset = reset_peak_rss()
    case.step()
    peak = _status_kib("VmHWM")
    result = {"peak_rss_increase_bytes": (peak - rss_before) * 1024, "rss_before_bytes": rss_before * 1024,
              "hwm_reset": did_reset}
    if case.report is not None:  # whatever else the case measured (JSON-able)
        result.update(case.report())
    return result


def peak_rss_in_subprocess(factory: str, case: Dict[str, object], timeout: float = 900.0,
                           block_modules: Sequence[str] = ()) -> Dict[str, object]:
    """Peak RSS increase of one training step, measured in a fresh Python process.

    `factory(case)` must return a `Case`; `factory(dict(case, steps=1))` is run first as the
    warm-up. `block_modules` are made unimportable in the child (e.g. "detectron2", which
    `import crbp_detectron` would otherwise load although the core does not need it)."""
    request = {"factory": factory, "case": case, "threads": torch.get_num_threads(),
               "block_modules": list(block_modules)}
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["MALLOC_TRIM_THRESHOLD_"] = "0"
    env.setdefault("PYTHONWARNINGS", "ignore")
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "child", json.dumps(request)],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_RSS_JSON "):
            return json.loads(line[len("PEAK_RSS_JSON "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"rc={proc.returncode}"
    return {"error": f"{reason}: {tail[0][:200]}"}


def cuda_peak_bytes(step: Callable[[], None], device) -> int:
    torch.cuda.synchronize(device)
    gc.collect()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower()


def process_peak_rss_bytes() -> int:
    """This process's peak resident set size so far (VmHWM)."""
    return _status_kib("VmHWM") * 1024


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def release_memory(device: str = "cpu") -> None:
    """Gives freed memory back between configurations: Python garbage, PyTorch's CUDA cache, and
    glibc's heap (malloc_trim; freed tensors otherwise stay in the process, and a long benchmark's
    RSS grows to many times what one step needs)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        import warnings

        warnings.simplefilter("ignore")
        result = _child_measure(json.loads(sys.argv[2]))
        print("PEAK_RSS_JSON " + json.dumps(result), flush=True)
    else:
        sys.exit("usage: python -m benchmarks.memory child '<json request>' (used by peak_rss_in_subprocess)")

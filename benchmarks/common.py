"""Measurement code shared by the benchmarks: the training methods compared, the machine
description, saved-for-backward bytes, peak memory, step timing, the exact implicit gradient
(dense Jacobian + solve) and the Markdown/PNG writers.

Memory, three ways:
  * saved-for-backward bytes: every storage autograd saves for backward while the forward runs
    (torch.autograd.graph.saved_tensors_hooks), each storage counted once, storages that existed
    before the forward (parameters, the input) left out: the activation memory a method keeps.
    It does not see what a backward allocates (e.g. torchdeq's IFT recomputes a step there).
  * CPU peak RSS increase: one training step in a FRESH subprocess per configuration. In it,
    glibc is told to serve every allocation of 64 KiB or more with mmap (MALLOC_MMAP_THRESHOLD_)
    so that freed tensors go back to the OS and cannot be reused silently from a malloc cache;
    one warm-up step of the same method at N = 1 (same shapes and kernels) pays one-time costs
    (thread pools, oneDNN caches); then the peak RSS counter is reset
    (`echo 5 > /proc/self/clear_refs`), the step runs, and the result is
    VmHWM - VmRSS(before the step). Where clear_refs is refused, the child falls back to
    VmHWM - VmRSS without the reset (then the warm-up step's peak can show through).
  * CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus what was allocated
    before the step.

Child protocol (used by `peak_rss_in_subprocess`):
    python -m benchmarks.common child '{"factory": "benchmarks.recurrence:build_case", "case": {...}}'
builds the case with the named factory (which must return a `Case`) and prints one
`PEAK_RSS_JSON {...}` line.
"""
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024.0 * 1024.0

OUR_METHODS = ("bptt", "crbp", "rbp", "cbptt")
TORCHDEQ_METHODS = ("torchdeq_ift", "torchdeq_hook_ift", "torchdeq_phantom")
ALL_METHODS = OUR_METHODS + TORCHDEQ_METHODS
PENALIZED = ("crbp", "cbptt")  # trained with the LCP; bptt and rbp run without a penalty


# ----------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class MethodSettings:
    """What every method shares, so that they compute the same quantity.

    neumann_steps K: our Neumann series adds K VJP terms to g (K + 1 terms, g included), with no
    early stop (neumann_tol = 0). torchdeq's backward runs fixed-point iteration y <- y J + g from
    y = 0 for K + 1 iterations (b_max_iter = K + 1, b_tol = 0): after K + 1 iterations
    y = sum_{k=0..K} g J^k, the same sum (its first VJP multiplies zeros).
    """

    neumann_steps: int = 15
    lcp_lambda: float = 0.9
    phantom_steps: int = 1  # torchdeq PhantomGrad steps; 1 = the one-step (Jacobian-free) gradient


def torchdeq_status() -> Tuple[bool, str]:
    """(available, message): torchdeq is an optional `bench` extra, never a runtime dependency."""
    try:
        import torchdeq  # noqa: F401
    except ImportError as e:
        return False, (f"torchdeq is not installed ({e}): skipping its methods. "
                       "Install the bench extra: pip install 'crbp-detectron[bench]' (torchdeq==0.1.0).")
    return True, f"torchdeq {getattr(torchdeq, '__version__', '0.1.0')}"


NEUMANN_NOTE = (
    "Neumann terms: VJP terms our RBP backward added in the last timed step (K at most; fewer "
    "when its divergence guard stopped a growing series, marked 'diverged'). At N = 1 the recorded "
    "step runs at h0 = 0, where the cell's normalization (GroupNorm / BatchNorm of an all-zero "
    "tensor) has a huge Jacobian: the series grows at once and the guard keeps only its first terms, "
    "so N = 1 is cheap and not representative of the backward's cost.")


def method_description(settings: MethodSettings) -> List[str]:
    """How each method is configured (printed with every table)."""
    k = settings.neumann_steps
    return [
        "`bptt`: `Recurrence(mode='bptt', penalty='none')`: N steps recorded, back-propagation through time.",
        "`cbptt`: `Recurrence(mode='cbptt', penalty='lcp')`: BPTT plus the differentiable LCP on the last step.",
        f"`crbp`: `Recurrence(mode='crbp', penalty='lcp', lcp_lambda={settings.lcp_lambda}, neumann_steps={k}, "
        "neumann_tol=0)`: N-1 graph-free steps, one recorded step, the RBP gradient (K VJPs) and the "
        "differentiable LCP (one more VJP with create_graph, and its double backward). Time and memory "
        "include the LCP; its gradient-agreement row is the task gradient (penalty left out), which is rbp's.",
        f"`rbp`: `Recurrence(mode='rbp', penalty='none', neumann_steps={k}, neumann_tol=0)`: the same "
        "gradient without any penalty: the quantity torchdeq's IFT computes.",
        f"`torchdeq_ift`: `torchdeq.get_deq(core='indexing', ift=True, f_solver='fixed_point_iter', "
        f"f_max_iter=N-1, f_tol=0, b_solver='fixed_point_iter', b_max_iter={k + 1}, b_tol=0)`, called "
        "with `solver_kwargs={'return_final': True}`: N-1 graph-free iterations + torchdeq's one step with "
        f"a graph = N cell evaluations, the same output h_N as ours; backward: {k + 1} fixed-point "
        f"iterations y <- yJ + g from 0 = the same {k + 1}-term Neumann sum. Its autograd.Function "
        "recomputes the step in backward at h_N = f(h_{N-1}) and takes J there (ours: at h_{N-1}).",
        "`torchdeq_hook_ift`: the same with `hook_ift=True` (a tensor hook instead of the Function; "
        "J at h_{N-1}, as ours: identical gradient up to rounding).",
        f"`torchdeq_phantom`: `get_deq(core='indexing', grad={settings.phantom_steps}, tau=1.0, "
        f"f_max_iter=N-{settings.phantom_steps})`: PhantomGrad with {settings.phantom_steps} step(s) "
        "(1 = the one-step / Jacobian-free gradient): N cell evaluations, the last with a graph, no "
        "Neumann series. An approximation of the implicit gradient, not the same quantity.",
    ]


class _OurMethod:
    def __init__(self, name, cell, steps, settings):
        from crbp_detectron.crbp import Recurrence

        self.block = Recurrence(
            cell, mode=name, steps=steps, neumann_steps=settings.neumann_steps, neumann_tol=0.0,
            penalty="lcp" if name in PENALIZED else "none", lcp_lambda=settings.lcp_lambda,
            penalty_reduction="mean", penalty_weight=1.0)

    def __call__(self, x):
        h, record = self.block(x, return_record=True)
        return h, record.loss

    def backward_info(self) -> Optional[str]:
        """Neumann terms the last backward used, and whether its divergence guard fired."""
        b = self.block.last_backward
        if b is None or self.block.mode in ("bptt", "cbptt"):
            return None
        return f"{b.neumann_terms}" + (" (diverged)" if b.diverged else "")


class _TorchDEQMethod:
    def __init__(self, name, cell, steps, settings):
        from torchdeq import get_deq

        self.cell = cell
        kw = dict(core="indexing", f_solver="fixed_point_iter", f_tol=0.0, f_stop_mode="abs",
                  b_solver="fixed_point_iter", b_max_iter=settings.neumann_steps + 1, b_tol=0.0,
                  b_stop_mode="abs")
        if name == "torchdeq_ift":
            kw.update(ift=True, f_max_iter=steps - 1)
        elif name == "torchdeq_hook_ift":
            kw.update(hook_ift=True, f_max_iter=steps - 1)
        elif name == "torchdeq_phantom":
            grad_steps = max(1, min(settings.phantom_steps, steps))
            kw.update(grad=grad_steps, tau=1.0, f_max_iter=steps - grad_steps)
        else:
            raise ValueError(name)
        self.deq = get_deq(**kw)

    def __call__(self, x):
        cell = self.cell
        z_out, _ = self.deq(lambda z: cell(x, z), torch.zeros_like(x), solver_kwargs={"return_final": True})
        return z_out[-1], None


def build_method(name: str, cell: torch.nn.Module, steps: int, settings: MethodSettings = MethodSettings()):
    """A callable x -> (h, penalty loss or None) that runs `cell` for `steps` evaluations."""
    if name in OUR_METHODS:
        return _OurMethod(name, cell, steps, settings)
    if name in TORCHDEQ_METHODS:
        return _TorchDEQMethod(name, cell, steps, settings)
    raise ValueError(f"unknown method {name!r}; choose from {ALL_METHODS}")


def split_methods(methods: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(methods to run, messages): drops torchdeq's methods, with a message, when it is absent."""
    for m in methods:
        if m not in ALL_METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {ALL_METHODS}")
    ok, message = torchdeq_status()
    if ok or not any(m in TORCHDEQ_METHODS for m in methods):
        return list(methods), []
    return [m for m in methods if m not in TORCHDEQ_METHODS], [message]


@dataclass
class Case:
    """One (workload, method, steps) configuration, ready to run."""

    step: Callable[[], None]  # one training step: forward, loss, backward
    forward: Callable[[], object]  # the forward alone (penalty included), for saved bytes
    inputs: List[torch.Tensor] = field(default_factory=list)  # pre-existing tensors (params, x)
    info: Optional[Callable[[], Optional[str]]] = None  # what the last backward did (Neumann terms)


def training_case(method, params: Sequence[torch.Tensor], x: torch.Tensor, readout: torch.Tensor) -> Case:
    """The training step shared by every benchmark: L = sum(readout * h) (+ the method's penalty),
    backward into the parameters and the input x (a leaf standing for the upstream features)."""
    params = list(params)

    def forward():
        return method(x)

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        h, penalty = method(x)
        loss = (h * readout).sum()
        if penalty is not None:
            loss = loss + penalty
        loss.backward()

    return Case(step=step, forward=forward, inputs=params + [x, readout],
                info=getattr(method, "backward_info", None))


def load_factory(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> Dict[str, object]:
    info = {
        "cpu": cpu_model(),
        "os.cpu_count()": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
    }
    try:
        info["load average (1 min) at start"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: Dict[str, object]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in info.items())


# ----------------------------------------------------------------------------------- memory
def _storage_key_bytes(t: torch.Tensor):
    try:
        s = t.untyped_storage()
        return (t.device.type, s.data_ptr()), s.nbytes()
    except (RuntimeError, NotImplementedError):
        return (t.device.type, t.data_ptr(), t.numel(), t.dtype), t.numel() * t.element_size()


def saved_bytes(fn: Callable[[], object], exclude: Sequence[torch.Tensor] = ()) -> Tuple[int, object]:
    """Bytes of the storages autograd saves for backward while `fn` runs, each storage once;
    storages of `exclude` (parameters, inputs) are not counted. Returns (bytes, fn's result)."""
    skip = {_storage_key_bytes(t)[0] for t in exclude}
    seen, total = set(), [0]

    def pack(t):
        key, nbytes = _storage_key_bytes(t)
        if key not in seen and key not in skip:
            seen.add(key)
            total[0] += nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


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
    return {"peak_rss_increase_bytes": (peak - rss_before) * 1024, "rss_before_bytes": rss_before * 1024,
            "hwm_reset": did_reset}


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
        proc = subprocess.run([sys.executable, "-m", "benchmarks.common", "child", json.dumps(request)],
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


# ----------------------------------------------------------------------------------- time
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
                     device: str = "cpu") -> Dict[object, List[float]]:
    """Like `time_step` for several configurations at once, round-robin: repeat r times every
    configuration once (in the dict's order) before repeat r + 1, so that a change in the
    machine's load (shared CPUs) falls on all of them alike; configurations that are compared
    should be adjacent in the dict, so that each repeat's ratio of the two (`paired_ratio`)
    compares runs made seconds apart."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            times[name] += time_step(fn, 1, 0, device)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over repeats of a[i] / b[i]: with round-robin timing, repeat i of both ran under
    nearly the same load, so this ratio is steadier than a ratio of medians on a shared machine."""
    return median([x / y for x, y in zip(a, b) if y > 0]) if a and b else float("nan")


# ----------------------------------------------------------------------------------- one group
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
            nbytes, out = saved_bytes(b.forward, exclude=b.inputs)
            del out
            rows[name]["saved"] = nbytes
            if cuda:
                b.step()
                rows[name]["peak"] = cuda_peak_bytes(b.step, device)
            built[name] = b
        except (RuntimeError, MemoryError) as e:
            if not is_oom(e):
                raise
            rows[name]["error"] = "out of memory"
            b = None
            _free(device)
    try:
        times = time_interleaved({n: b.step for n, b in built.items()}, repeats, warmup, device)
    except (RuntimeError, MemoryError) as e:  # together they do not fit: one at a time
        if not is_oom(e):
            raise
        _free(device)
        times = {}
        for n, b in built.items():
            try:
                times[n] = time_step(b.step, repeats, warmup, device)
            except (RuntimeError, MemoryError) as e2:
                if not is_oom(e2):
                    raise
                rows[n]["error"] = "out of memory (timing)"
                _free(device)
    for n, ts in times.items():
        rows[n].update(time=median(ts), time_min=min(ts), time_max=max(ts), times=ts)
        if built[n].info is not None:
            rows[n]["neumann"] = built[n].info()
    built.clear()
    _free(device)
    if not cuda and rss and factory:
        for name, case in cases.items():
            if "error" not in rows[name]:
                result = peak_rss_in_subprocess(factory, case, block_modules=block_modules)
                rows[name]["peak"] = result.get("peak_rss_increase_bytes")
                rows[name]["peak_error"] = result.get("error")
    return rows


def _free(device: str):
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------- exact gradient
def relative_residual(h_next: torch.Tensor, h: torch.Tensor) -> float:
    return float((h_next - h).norm() / h_next.norm().clamp_min(1e-300))


def dense_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """J[i, j] = d fn(h)_i / d h_j as an n x n matrix, from VJPs with unit vectors (batched where
    autograd can batch them, one by one otherwise)."""
    h = h.detach().requires_grad_()
    with torch.enable_grad():
        out = fn(h)
    n = out.numel()
    jac = out.new_empty((n, n))
    try:
        for s in range(0, n, chunk):
            k = min(chunk, n - s)
            v = out.new_zeros((k, n))
            v[torch.arange(k), s + torch.arange(k)] = 1.0
            rows = torch.autograd.grad(out, h, v.view((k,) + tuple(out.shape)), retain_graph=True,
                                       is_grads_batched=True)[0]
            jac[s:s + k] = rows.reshape(k, n)
    except (RuntimeError, NotImplementedError):
        for i in range(n):
            v = out.new_zeros(n)
            v[i] = 1.0
            jac[i] = torch.autograd.grad(out, h, v.view_as(out), retain_graph=True)[0].reshape(-1)
    return jac


@dataclass
class ExactGradient:
    grads: List[torch.Tensor]  # dL/d(params..., x) at the exact equilibrium
    h_star: torch.Tensor
    residual: float  # ||f(h*) - h*|| / ||f(h*)||
    spectral_radius: float  # rho(J) at h*
    max_column_sum: float  # max_j (1^T J)_j, what the LCP bounds
    n: int
    seconds: float


def exact_implicit_gradient(cell: torch.nn.Module, x: torch.Tensor, readout: torch.Tensor,
                            max_iter: int = 3000, tol: float = 1e-12) -> ExactGradient:
    """The implicit gradient of L = sum(readout * h*) at h* = cell(x, h*), computed densely:
    fixed-point iteration (then chord-Newton steps with the dense Jacobian if it is slow),
    J by VJPs, z = (I - J^T)^-1 dL/dh*, grads = z^T d cell / d(params, x). Use float64."""
    t0 = time.perf_counter()
    x = x.detach()
    h = torch.zeros_like(x)
    residual = float("nan")
    with torch.no_grad():
        for _ in range(max_iter):
            h_next = cell(x, h)
            residual = relative_residual(h_next, h)
            h = h_next
            if residual < tol:
                break
    f = lambda v: cell(x, v.view_as(x)).reshape(-1)  # noqa: E731
    n = h.numel()
    eye = torch.eye(n, dtype=h.dtype, device=h.device)
    if not residual < tol:  # chord-Newton: h <- h + (I - J0)^-1 (f(h) - h)
        lu = torch.linalg.lu_factor(eye - dense_jacobian(f, h.reshape(-1)))
        with torch.no_grad():
            for _ in range(100):
                step = torch.linalg.lu_solve(*lu, (f(h.reshape(-1)) - h.reshape(-1)).unsqueeze(1)).squeeze(1)
                h = h + step.view_as(h)
                residual = relative_residual(cell(x, h), h)
                if residual < tol:
                    break
    jac = dense_jacobian(f, h.reshape(-1))
    z = torch.linalg.solve((eye - jac).T, readout.reshape(-1))
    x_leaf = x.clone().requires_grad_()
    params = [p for p in cell.parameters() if p.requires_grad]
    with torch.enable_grad():
        out = cell(x_leaf, h)
        grads = torch.autograd.grad(out, params + [x_leaf], z.view_as(out), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, params + [x_leaf])]
    rho = float(torch.linalg.eigvals(jac).abs().max())
    return ExactGradient(grads=grads, h_star=h, residual=residual, spectral_radius=rho,
                         max_column_sum=float(jac.sum(0).max()), n=n, seconds=time.perf_counter() - t0)


def method_gradient(method, cell: torch.nn.Module, x: torch.Tensor, readout: torch.Tensor):
    """(grads of L = sum(readout * h) w.r.t. (params..., x) by `method` (its penalty left out),
    the forward's last relative residual ||f(h) - h|| / ||f(h)||)."""
    params = [p for p in cell.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    x_leaf = x.detach().clone().requires_grad_()
    h, _penalty = method(x_leaf)
    (h * readout).sum().backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
    grads.append(x_leaf.grad.detach().clone())
    for p in params:
        p.grad = None
    with torch.no_grad():
        residual = relative_residual(cell(x.detach(), h.detach()), h.detach())
    return grads, residual


def agreement(grads: Sequence[torch.Tensor], exact: Sequence[torch.Tensor]) -> Dict[str, float]:
    """Cosine and relative error (all = params and input together; params; input alone)."""
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    a, b = flat(grads), flat(exact)
    ap, bp = flat(grads[:-1]), flat(exact[:-1])
    rel = lambda u, v: float((u - v).norm() / v.norm().clamp_min(1e-300))  # noqa: E731
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))
    return {"cosine": cos, "rel_err": rel(a, b), "rel_err_params": rel(ap, bp),
            "rel_err_input": rel(grads[-1], exact[-1])}


# ----------------------------------------------------------------------------------- output
def fmt(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.{digits}e}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:,.{max(digits - 2, 1)}f}"
    return str(v)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(module: str, argv: Sequence[str]) -> str:
    return "python -m " + module + ("" if not argv else " " + " ".join(_quote(a) for a in argv))


def _quote(a: str) -> str:
    return a if a and all(c.isalnum() or c in "-_./=:,+" for c in a) else "'" + a.replace("'", "'\\''") + "'"


def plot_series(path: str, title: str, panels: Sequence[Tuple[str, Dict[str, Dict[int, float]]]],
                logy: Sequence[bool] = ()) -> None:
    """One panel per (y label, {series: {steps: value}}), x = steps. Without matplotlib (an
    optional dependency on a bare GPU machine) it says so and writes nothing."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: {path} not written", flush=True)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for i, (ax, (ylabel, series)) in enumerate(zip(axes[0], panels)):
        for name, points in series.items():
            xs = sorted(k for k, v in points.items() if v is not None and not math.isnan(v))
            if xs:
                ax.plot(xs, [points[k] for k in xs], marker="o", label=name)
        ax.set_xlabel("recurrent steps N")
        ax.set_ylabel(ylabel)
        if i < len(logy) and logy[i]:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        import warnings

        warnings.simplefilter("ignore")
        result = _child_measure(json.loads(sys.argv[2]))
        print("PEAK_RSS_JSON " + json.dumps(result), flush=True)
    else:
        sys.exit("usage: python -m benchmarks.common child '<json request>' (used by peak_rss_in_subprocess)")

"""Training runs of the project's train_net.py, each in its own subprocess (one CPU thread),
several at once, resumable: a run whose results file is in the repository is not run again, an
interrupted one continues from its last checkpoint (--resume)."""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # projects/Pathfinder
RESULTS_DIR = os.path.join(PROJECT, "results")  # reports here, runs under <experiment>/
TOOL = os.path.join(PROJECT, "train_net.py")


@dataclass
class Run:
    """One training run: a packaged config, overrides and a seed (model initialisation and data
    order; the data themselves are PATHFINDER.DATA.SEED's)."""

    experiment: str  # folder under projects/Pathfinder/results
    name: str  # model or variant
    seed: int
    config: str
    opts: List[str] = field(default_factory=list)
    results_dir: str = RESULTS_DIR

    @property
    def result_path(self) -> str:
        return os.path.join(experiment_dir(self.results_dir, self.experiment), self.name, f"seed{self.seed}.json")

    def weights_path(self) -> str:
        return os.path.join(experiment_dir(self.results_dir, self.experiment), self.name, f"seed{self.seed}_model.pth")

    def output_dir(self, scratch: str) -> str:
        return os.path.join(scratch, self.experiment, self.name, f"seed{self.seed}")


def project_relative(path: str) -> str:
    """`path` relative to the project when inside it (the runs work there), so that a recorded
    config does not depend on the clone; absolute otherwise."""
    inside = os.path.commonpath([os.path.abspath(path), PROJECT]) == PROJECT
    return os.path.relpath(path, PROJECT) if inside else os.path.abspath(path)


def experiment_dir(results_dir: str, experiment: str) -> str:
    return os.path.join(results_dir, experiment)


def load_result(path: str) -> Dict:
    with open(path) as f:
        return json.load(f)


def execute(run: Run, scratch: str, threads: int = 1, keep_weights: bool = False) -> Dict:
    """Trains (or resumes) and evaluates one run; copies its results.json into the repository."""
    if os.path.exists(run.result_path):
        return load_result(run.result_path)
    out = run.output_dir(scratch)
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, TOOL, "--config-file", run.config, "--threads", str(threads), "--resume"]
    cmd += [str(o) for o in run.opts] + ["OUTPUT_DIR", out, "SEED", str(run.seed)]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=PROJECT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"[{run.experiment}/{run.name}/seed{run.seed}] start", flush=True)
    with open(os.path.join(out, "stdout.log"), "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT)
    if proc.returncode != 0:
        raise RuntimeError(f"{run.experiment}/{run.name}/seed{run.seed} failed (exit {proc.returncode}); "
                           f"see {os.path.join(out, 'stdout.log')}")
    os.makedirs(os.path.dirname(run.result_path), exist_ok=True)
    result = load_result(os.path.join(out, "results.json"))
    result["code"] = code_version()
    with open(run.result_path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(run.result_path + ".tmp", run.result_path)
    if keep_weights:
        save_weights(os.path.join(out, "model_final.pth"), run.weights_path())
    iou = {k: round(v["iou"], 3) for k, v in result["test"].items()}
    print(f"[{run.experiment}/{run.name}/seed{run.seed}] done: IoU {iou}", flush=True)
    return result


def code_version() -> str:
    """The commit the runs were made with ("+changes" if the work tree differed from it)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_weights(checkpoint: str, path: str) -> None:
    """The model's weights alone (no optimizer state): a few hundred kB for the repository."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def execute_all(runs: Sequence[Run], scratch: str, workers: int = 2, keep_weights=lambda run: False) -> List[Dict]:
    """Runs `runs` with `workers` at a time (each on one thread); returns their results in order.
    A failed run is reported and the others go on; the error is raised at the end."""
    def one(run):
        try:
            return execute(run, scratch, keep_weights=keep_weights(run))
        except Exception as e:  # noqa: BLE001 - reported, then raised below
            print(f"[{run.experiment}/{run.name}/seed{run.seed}] {e}", flush=True)
            return e

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, runs))
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} runs failed; first: {failed[0]}")
    return results


def load_experiment(experiment: str, results_dir: str = RESULTS_DIR) -> Dict[str, Dict[int, Dict]]:
    """{name: {seed: results}} of every run of `experiment` in the repository."""
    root = experiment_dir(results_dir, experiment)
    found: Dict[str, Dict[int, Dict]] = {}
    if not os.path.isdir(root):
        return found
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if f.startswith("seed") and f.endswith(".json"):
                found.setdefault(name, {})[int(f[4:-5])] = load_result(os.path.join(folder, f))
    return found

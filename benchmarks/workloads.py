"""The recurrence benchmark's workloads: which cell, at which sizes, with which drive x and readout,
as JSON-able cases that build a training step (`build_case`, also run by the peak-RSS
subprocess). The full Panoptic FPN workload lives in fpn_workload.py."""
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from .methods import Case, MethodSettings, build_method, training_case

FACTORY = "benchmarks.workloads:build_case"
FPN_CONFIG = "COCO-PanopticSegmentation/panoptic_crbp_fpn_R_50_1x.yaml"

@dataclass(frozen=True)
class Workload:
    name: str
    cell: str  # how the cell is built, for the output
    kernel: int
    shapes: Dict[str, Tuple[int, ...]]  # size -> x shape: full, cpu, tiny
    reduced: Dict[str, Tuple[int, ...]]  # size -> x shape of the exact-gradient problem
    gpu_only: bool = False


WORKLOADS = {
    "pathfinder": Workload(
        "pathfinder", "HGRUCell.pathfinder(channels, kernel_size)", 7,
        shapes={"full": (8, 25, 150, 150), "cpu": (1, 25, 100, 100), "tiny": (1, 4, 10, 10)},
        reduced={"full": (1, 25, 10, 10), "tiny": (1, 4, 5, 5)}),
    "mask_head": Workload(
        "mask_head", "HGRUCell.coco(channels, num_groups=min(32, channels // 4))", 3,
        shapes={"full": (256, 256, 14, 14), "cpu": (4, 256, 14, 14), "tiny": (2, 32, 6, 6)},
        reduced={"full": (1, 256, 3, 3), "tiny": (1, 32, 2, 2)}),
    "fpn": Workload(
        "fpn", "the recurrent FPN of configs/" + FPN_CONFIG, 3,
        shapes={"full": (2, 3, 800, 1333), "cpu": (2, 3, 800, 1333), "tiny": (2, 3, 800, 1333)},
        reduced={}, gpu_only=True),
}


def make_cell(workload: str, channels: int, kernel: int) -> torch.nn.Module:
    from crbp_detectron.crbp import HGRUCell

    if workload == "pathfinder":
        return HGRUCell.pathfinder(channels, kernel)
    if workload == "mask_head":
        return HGRUCell.coco(channels, kernel, num_groups=min(32, channels // 4))
    raise ValueError(workload)


def make_problem(case):
    """(cell, x, readout) of a case, deterministic in its seed."""
    torch.manual_seed(case.get("seed", 0))
    shape = tuple(case["shape"])
    dtype = getattr(torch, case.get("dtype", "float32"))
    device = torch.device(case.get("device", "cpu"))
    cell = make_cell(case["workload"], shape[1], case["kernel"]).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(case.get("seed", 0) + 1)
    x = torch.rand(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    readout = (torch.randn(shape, generator=gen, dtype=torch.float64) / shape[0]).to(device=device, dtype=dtype)
    return cell, x, readout


def settings_of(case) -> MethodSettings:
    return MethodSettings(neumann_steps=case.get("neumann_steps", 15),
                                 phantom_steps=case.get("phantom_steps", 1))


def build_case(case) -> Case:
    """A `Case` from a JSON-able description (also used by the peak-RSS subprocess)."""
    cell, x, readout = make_problem(case)
    method = build_method(case["method"], cell, case["steps"], settings_of(case))
    return training_case(method, cell.parameters(), x.requires_grad_(), readout)



def size_of(args) -> str:
    if args.tiny:
        return "tiny"
    if args.size == "auto":
        return "full" if args.device.startswith("cuda") else "cpu"
    return args.size


def perf_case(wl: Workload, method: str, steps: int, args) -> dict:
    size = size_of(args)
    return {"workload": wl.name, "shape": list(wl.shapes[size]), "kernel": 3 if size == "tiny" else wl.kernel,
            "method": method, "steps": steps, "device": args.device, "seed": args.seed,
            "neumann_steps": args.neumann_steps, "phantom_steps": args.phantom_steps}



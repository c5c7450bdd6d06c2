"""The machine a benchmark ran on, for the header of its results."""
import os
import platform
from typing import Dict

import torch

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

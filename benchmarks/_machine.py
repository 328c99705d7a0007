"""What machine a benchmark ran on: recorded beside every number (the scripts import this)."""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path
from typing import Any


def machine(*packages: str) -> dict[str, Any]:
    """CPU model, cores, Python and the versions of ``packages``."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {"uname": " ".join(x for x in platform.uname() if x), "cpu": cpu or "unknown",
                            "cpu_count": os.cpu_count(), "cpus_usable": affinity, "python": platform.python_version()}
    for name in packages:
        info[name] = getattr(importlib.import_module(name), "__version__", "unknown")
    if "torch" in packages:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    return info

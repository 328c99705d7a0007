"""What machine a benchmark ran on: recorded beside every number (the scripts import this)."""

from __future__ import annotations

import importlib
import os
import platform
from typing import Any


def machine(*packages: str) -> dict[str, Any]:
    """CPU model, cores, Python and the versions of ``packages``."""
    from cings.machine import cpu_name

    cpu = cpu_name()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {"uname": " ".join(x for x in platform.uname() if x), "cpu": cpu or "unknown",
                            "cpu_count": os.cpu_count(), "cpus_usable": affinity, "python": platform.python_version()}
    for name in packages:
        info[name] = getattr(importlib.import_module(name), "__version__", "unknown")
    if "torch" in packages:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    return info

"""What machine a benchmark ran on: recorded beside every number (the scripts import this)."""

from __future__ import annotations

import importlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any


def machine(*packages: str) -> dict[str, Any]:
    """CPU model, cores, Python and the versions of ``packages``."""
    from cings.machine import cpu_class, cpu_name

    cpu = f"{cpu_name()} ({cpu_class()})"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {"uname": " ".join(x for x in platform.uname() if x), "cpu": cpu or "unknown",
                            "cpu_count": os.cpu_count(), "cpus_usable": affinity, "python": platform.python_version()}
    for name in packages:
        info[name] = getattr(importlib.import_module(name), "__version__", "unknown")
    if "torch" in packages:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    return info


def save_result(path: str | Path, payload: dict[str, Any], *packages: str) -> Path:
    """Write ``payload`` as JSON with the command that produced it, the machine and the date."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": shlex.join([sys.executable, *sys.argv]), "machine": machine(*packages),
              "date": time.strftime("%Y-%m-%d"), **payload}
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return path

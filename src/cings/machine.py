"""What machine this is: recorded beside every reported number (demo reports, benchmarks)."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_name", "cpu_flags", "cpu_class"]


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_name() -> str:
    """The CPU model (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (empty where ``/proc/cpuinfo`` is absent)."""
    for line in _cpuinfo():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_class(flags: set[str] | None = None, kernels: str | None = None) -> str:
    """The class a CPU time belongs to: "AVX-512 BF16", "AVX-512", "AVX2" or "no AVX2" (times differ
    by several times between them), and the kernels torch runs when they are capped lower
    (``ATEN_CPU_CAPABILITY``): "AVX-512 BF16, torch kernels at AVX2"."""
    flags = cpu_flags() if flags is None else flags
    if {"avx512_bf16", "amx_bf16"} & flags:
        name = "AVX-512 BF16" + (" + AMX" if "amx_bf16" in flags else "")
    elif "avx512f" in flags:
        name = "AVX-512"
    elif "avx2" in flags:
        name = "AVX2"
    else:
        name = "no AVX2" if flags else "unknown"
    if kernels is None:
        try:
            import torch

            kernels = torch.backends.cpu.get_cpu_capability()
        except ImportError:
            kernels = ""
    if kernels and name.startswith("AVX-512") and not kernels.upper().startswith("AVX512"):
        name += f", torch kernels at {kernels}"
    return name

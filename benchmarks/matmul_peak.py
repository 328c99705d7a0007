"""HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/matmul_peak.py [--seconds 3] [--json PATH]

This machine's sustained matrix-multiply rate, the ceiling that training FLOP/s are measured
against (model FLOPs utilisation, MFU). ``torch.mm`` in fp32 and in bf16 (oneDNN: AVX-512 FMA for
fp32; AVX-512 BF16 or AMX tiles for bf16 where the CPU has them), each shape repeated for several
seconds after a warm-up, with torch's thread count as training uses it (the default: one per core;
set OMP_NUM_THREADS to change it).

Shapes: square matrices of the sizes in SmolLM2-135M (576 hidden, 1536 MLP) and larger ones, and the
GEMMs of a training step as they occur (512 tokens x 576 -> 1536, 1536 -> 576, 576 -> 576, and the LM
head 576 -> 49152). The peak of a dtype is the fastest shape: the best the hardware and library reach
on a dense matmul; the model-shaped rates show how much of that the step's own GEMMs can get.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

SQUARE = (576, 1024, 1536, 2048)
# (rows, inner, columns) of a step's GEMMs: 512 tokens through SmolLM2-135M's projections and its LM head.
MODEL_SHAPED = {"tokens x attn (576->576)": (512, 576, 576), "tokens x MLP up (576->1536)": (512, 576, 1536),
                "tokens x MLP down (1536->576)": (512, 1536, 576), "tokens x LM head (576->49152)": (512, 576, 49152)}
DTYPES = ("fp32", "bf16")


def rate(m: int, k: int, n: int, dtype: Any, seconds: float) -> float:
    """Sustained FLOP/s of ``(m x k) @ (k x n)``: 2mkn per product, repeated for ``seconds``."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    for _ in range(3):  # oneDNN picks and caches its kernel on the first calls
        torch.mm(a, b, out=out)
    count, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b, out=out)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2.0 * m * k * n * count / elapsed


def measure(seconds: float = 3.0, dtypes: Sequence[str] = DTYPES, square: Sequence[int] = SQUARE,
            model_shaped: bool = True, log: Any = None) -> dict[str, Any]:
    """``{dtype: {"peak_flops": max, "shapes": {label: FLOP/s}}}`` plus the thread count and the CPU time share."""
    import torch

    names = {"fp32": torch.float32, "bf16": torch.bfloat16}
    shapes = {f"square {s}": (s, s, s) for s in square}
    if model_shaped:
        shapes.update(MODEL_SHAPED)
    result: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "seconds_per_shape": seconds,
                              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for name in dtypes:
        rates = {}
        for label, (m, k, n) in shapes.items():
            rates[label] = rate(m, k, n, names[name], seconds)
            if log:
                log(f"  {name:5} {label:32} {rates[label] / 1e9:8.1f} GFLOP/s")
        result[name] = {"peak_flops": max(rates.values()), "best_shape": max(rates, key=rates.get), "shapes": rates}
    # Below ~0.9 the cores were shared with another job and the peak is understated.
    result["cpu_share"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0) / result["torch_threads"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per shape (default: %(default)s)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), help="default: both")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import machine, save_result

    info = machine("torch")
    print(f"machine: {info['cpu']}; torch {info['torch']}, {info['torch_threads']} threads")
    result = measure(args.seconds, args.dtypes, log=print)
    for name in args.dtypes:
        print(f"{name} peak: {result[name]['peak_flops'] / 1e9:.1f} GFLOP/s ({result[name]['best_shape']})")
    print(f"CPU share during the measurement: {result['cpu_share']:.2f} (1 = all threads busy all the time)")
    if args.json is not None:
        save_result(args.json, result, "torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())

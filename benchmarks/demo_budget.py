"""Where `cings demo`'s time goes: seconds per training step and per evaluation record, per setting.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/demo_budget.py --json benchmarks/results/demo_budget.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/demo_budget.py --avx2 ...   # as on a CPU without AVX-512

``--avx2`` reruns the measurement with torch, oneDNN and MKL capped at AVX2
(``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``), so an AVX-512
machine shows what an AVX2-only one does: bf16 is emulated there and the demo runs fp32. The
kernels are then the AVX2 ones, the clock and memory are not: a real AVX2-only EPYC measured
about 1.3x slower than this emulation (docs/benchmarks.md).

Training: the demo's recipe (LoRA r16 on every projection, batches of 8 as 2 x 4, its data) for a
few steps per (mode, passage window, adapted layers); the first step (warm-up) is reported apart.
Evaluation: base SmolLM2 on the first records of each evaluation set, greedy, batch 16.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _machine import save_result

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def train_steps(root: Path, mode: str, chars: int, top_layers: int | None, steps: int, precision: str) -> dict:
    from transformers import TrainerCallback

    from cings.demo import DemoConfig, _train_config, build_data
    from cings.train import train

    data = root / f"data{chars}"
    cfg = DemoConfig(context_chars=chars, lora_top_layers=top_layers)
    if not (data / "train.jsonl").is_file():
        from cings.demo import demo_data_dir

        build_data(replace(cfg, data_dir=str(demo_data_dir())), data)

    class Times(TrainerCallback):
        def __init__(self):
            self.seconds, self.start = [], 0.0

        def on_step_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)

    times = Times()
    tc = replace(_train_config(cfg, mode, data / "train.jsonl", root / f"run-{mode}-{chars}-{top_layers}", precision),
                 max_steps=steps, save_strategy="no", overwrite=True)
    train(tc, callbacks=[times], progress=False)
    rest = times.seconds[1:] or times.seconds
    return {"what": "train", "mode": mode, "context_chars": chars, "lora_top_layers": top_layers, "steps": steps,
            "first_step_s": round(times.seconds[0], 2), "step_s": round(sum(rest) / len(rest), 2)}


def eval_records(root: Path, name: str, n: int, max_new: int, chars: int, precision: str) -> dict:
    from cings.demo import EVAL_SETS, DemoConfig, build_data, demo_data_dir
    from cings.generate import GenerationSettings, generate_records
    from cings.loading import resolve_precision
    from cings.records import read_records
    from cings.runs import load_for_generation

    data = root / f"data{chars}"
    if not (data / "train.jsonl").is_file():
        build_data(DemoConfig(context_chars=chars, data_dir=str(demo_data_dir())), data)
    es = next(e for e in EVAL_SETS if e.name == name)
    records = list(itertools.islice(read_records(data / "eval" / f"{es.source}.jsonl"), n))
    model, tok, options, _ = load_for_generation("smollm2", dtype=resolve_precision(precision).dtype)
    out = root / f"pred-{name}.jsonl"
    out.unlink(missing_ok=True)
    settings = GenerationSettings(docs=es.docs, ndocs=es.ndocs, prompt=es.prompt, max_new_tokens=max_new, batch_size=16)
    start = time.perf_counter()
    generate_records(records, model, tok, options, settings, out, progress=False)
    seconds = time.perf_counter() - start
    return {"what": "eval", "set": name, "records": len(records), "max_new_tokens": max_new, "context_chars": chars,
            "s_per_record": round(seconds / len(records), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avx2", action="store_true", help="cap torch/oneDNN/MKL at AVX2 (rerun in a subprocess)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    if args.avx2 and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        argv = [a for a in sys.argv[1:] if a != "--avx2"]
        sys.exit(subprocess.call([sys.executable, __file__, "--avx2", *argv], env={**os.environ, **AVX2}))

    import torch

    from cings.loading import resolve_precision

    precision = resolve_precision(args.precision).name
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for mode, chars, top in [("no_context", 400, None), ("no_context", 400, 15), ("context", 600, None),
                                 ("context", 400, None), ("context", 400, 15)]:
            rows.append(train_steps(root, mode, chars, top, args.steps, precision))
            print(json.dumps(rows[-1]), flush=True)
        for name, chars in [("squad-prefill", 400), ("squad-prefill", 100_000), ("nq-gold", 400),
                            ("hotpotqa-distractors", 400), ("nq-closed-book", 400)]:
            rows.append(eval_records(root, name, args.records, 24, chars, precision))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        save_result(args.json, {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "precision": precision,
                                "rows": rows}, "torch", "transformers", "peft")


if __name__ == "__main__":
    main()

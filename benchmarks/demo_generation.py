"""HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/demo_generation.py --adapter runs/demo/models/context

How fast `cings demo` evaluates a trained model: a LoRA adapter merged into the weights or kept
apart, at two generation batch sizes, on the demo's held-out SQuAD records (prefill layout, bf16
where the CPU has fast bf16, greedy, 32 new tokens). Needs a finished `cings demo` (its adapter
and its data/eval files). Reports seconds per configuration and how many predictions equal the
unmerged adapter's (merging rounds the weights once, so a few greedy answers may differ).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _machine import save_result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--adapter", default="runs/demo/models/context")
    parser.add_argument("--data", default="runs/demo/data/eval/squad-heldout.jsonl")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--configs", default="apart:16,merged:16,merged:32", help="MERGE:BATCH,...")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/demo_generation.json"))
    args = parser.parse_args(argv)
    if not Path(args.adapter).is_dir() or not Path(args.data).is_file():
        print(f"skipped: run `cings demo` first (no {args.adapter} or {args.data})")
        return 0

    import torch

    from cings.generate import GenerationSettings, generate_records
    from cings.loading import fast_bf16
    from cings.records import read_records
    from cings.runs import load_for_generation

    dtype = torch.bfloat16 if fast_bf16() else torch.float32
    records = list(read_records(args.data))[: args.n]
    results, outputs = [], {}
    for item in args.configs.split(","):
        how, batch = item.split(":")
        model, tok, options, spec = load_for_generation(None, adapter=args.adapter, dtype=dtype, merge=how == "merged")
        settings = GenerationSettings(prompt="prefill", max_new_tokens=32, batch_size=int(batch))
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            generate_records(records, model, tok, options, settings, Path(tmp) / "p.jsonl", progress=False)
            seconds = time.perf_counter() - started
            outputs[item] = [json.loads(line)["prediction"] for line in (Path(tmp) / "p.jsonl").read_text().splitlines()]
        first = outputs[next(iter(outputs))]
        same = sum(a == b for a, b in zip(first, outputs[item]))
        results.append({"adapter": how, "batch_size": int(batch), "seconds": round(seconds, 1),
                        "records_per_s": round(len(records) / seconds, 2),
                        f"predictions_equal_to_{next(iter(outputs))}": f"{same}/{len(first)}"})
        print(json.dumps(results[-1]), flush=True)
    save_result(args.json, {"adapter": args.adapter, "data": args.data, "n": len(records),
                            "dtype": str(dtype).removeprefix("torch."), "results": results}, "torch", "transformers", "peft")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

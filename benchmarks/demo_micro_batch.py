"""HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/demo_micro_batch.py [--steps 12]

Micro batch 8 against 2 x 4 (gradient accumulation) for the demo's recipe: the first 12 steps of
`cings train` on the demo's training records (runs/demo/data/train.jsonl, from a finished
`cings demo`), CINGS and no_mask modes, bf16 autocast, LoRA r16. Reports the training time, the
final loss (the same batch of 8, so it should agree to rounding) and the peak resident memory
of the process (GNU time's maximum RSS).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from _machine import save_result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--data", default="runs/demo/data/train.jsonl")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--modes", default="context,no_mask")
    parser.add_argument("--micro", default="8,4")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/demo_micro_batch.json"))
    args = parser.parse_args(argv)
    if not Path(args.data).is_file() or not Path("/usr/bin/time").is_file():
        print(f"skipped: needs {args.data} (run `cings demo`) and GNU time")
        return 0
    cings = str(Path(sys.executable).with_name("cings"))
    rows = []
    for mode in args.modes.split(","):
        for micro in args.micro.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                cmd = ["/usr/bin/time", "-f", "maxrss_kb=%M", cings, "train", "--model", "smollm2", "--data", args.data,
                       "--mode", mode, "--max-length", "512", "--output-dir", tmp, "--lora", "--lora-r", "16",
                       "--lora-alpha", "32", "--lora-dropout", "0.05", "--learning-rate", "2e-4", "--epoch-lr-decay",
                       "1.0", "--num-epochs", "1", "--max-steps", str(args.steps), "--seed", "2",
                       "--global-batch-size", "8", "--micro-batch-size", micro, "--precision", "bf16",
                       "--save-strategy", "no", "--logging-steps", "1", "--group-by-length", "--no-progress"]
                text = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
            runtime = float(re.search(r"train_runtime ([\d.]+)", text).group(1))
            loss = float(re.search(r"train_loss ([\d.]+)", text).group(1))
            rss = int(re.search(r"maxrss_kb=(\d+)", text).group(1))
            rows.append({"mode": mode, "micro_batch_size": int(micro), "accumulation": 8 // int(micro),
                         "train_runtime_s": runtime, "train_loss": loss, "peak_rss_gib": round(rss / 2**20, 2)})
            print(json.dumps(rows[-1]), flush=True)
    save_result(args.json, {"steps": args.steps, "global_batch_size": 8, "results": rows}, "torch", "transformers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

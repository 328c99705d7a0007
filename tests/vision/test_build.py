"""cings.vision.build: the folder loads with transformers' own classes, with the LM's and the tower's
weights in place and an image-token count that matches the tower."""

from __future__ import annotations

import json

import pytest
import torch

from cings.vision.build import IMAGE_TOKEN, BuildError, build_vlm, image_token_count, multimodal_template
from tests.vision.conftest import save_tiny_tower


def test_folder_loads_with_transformers_classes(tiny_vlm, tiny_lm, tiny_tower):
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoProcessor, CLIPVisionModel, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_vlm)
    processor = AutoProcessor.from_pretrained(tiny_vlm)
    assert type(processor).__name__ == "LlavaProcessor"
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert model.config.image_token_id == image_id
    assert tok.encode(IMAGE_TOKEN, add_special_tokens=False) == [image_id]
    assert model.config.image_seq_length == 16 and model.config.vision_feature_layer == -2

    batch = processor(images=[Image.new("RGB", (300, 200), (10, 200, 30))], text=[f"{IMAGE_TOKEN}\nWhat is it?"],
                      return_tensors="pt")
    assert int((batch["input_ids"] == image_id).sum()) == 16
    assert tuple(batch["pixel_values"].shape) == (1, 3, 64, 64)

    # the LM's and the tower's weights arrived unchanged; only the projector and the new <image> row are new
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm)
    text = torch.tensor([tok.encode("The quick brown fox", add_special_tokens=False)])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=text).logits[..., :lm.config.vocab_size], lm(input_ids=text).logits, atol=1e-5)
    tower = CLIPVisionModel.from_pretrained(tiny_tower)
    for name, weight in tower.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], weight), name
    record = json.loads((tiny_vlm / "cings_vlm_build.json").read_text())
    assert record["image_tokens"] == 16 and record["vision_feature_select_strategy"] == "default"


def test_chat_template_renders_image_parts(tiny_vlm):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith(f"<|im_start|>user\n{IMAGE_TOKEN}") and text.endswith("<|im_start|>assistant\n")
    plain = [{"role": "user", "content": "hi"}]
    assert processor.apply_chat_template(plain, tokenize=False) == processor.tokenizer.apply_chat_template(plain, tokenize=False)
    assert "{%" in multimodal_template("{{ 'x' }}")


def test_siglip_tower_counts_every_patch(tmp_path, tiny_lm):
    tower = save_tiny_tower(tmp_path / "siglip", kind="siglip")
    report = build_vlm(tower, tiny_lm, tmp_path / "vlm")
    assert report["vision_feature_select_strategy"] == "full" and report["image_tokens"] == 16


def test_token_count_rule():
    assert image_token_count(336, 14, "default", 1) == 576  # LLaVA-1.5's CLIP-L/336
    assert image_token_count(384, 14, "full", 0) == 729  # SigLIP-so400m
    assert image_token_count(64, 16, "default", 1) == 16


def test_refuses_bad_inputs(tmp_path, tiny_lm, tiny_tower, tiny_vlm):
    with pytest.raises(BuildError, match="not empty"):
        build_vlm(tiny_tower, tiny_lm, tiny_vlm)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(BuildError, match="not one"):
        build_vlm(tiny_tower, tiny_lm, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(BuildError, match="no config.json"):
        build_vlm(tmp_path, tiny_lm, tmp_path / "x")
    with pytest.raises(BuildError, match="no such folder"):
        build_vlm(tmp_path / "missing", tiny_lm, tmp_path / "y")
    with pytest.raises(BuildError, match="already has"):
        build_vlm(tiny_tower, tiny_vlm, tmp_path / "z")  # a LLaVA folder's tokenizer already has <image>


def test_cli_build_and_overwrite(tmp_path, tiny_lm, tiny_tower):
    from cings.cli import main

    out = tmp_path / "vlm"
    assert main(["vlm", "build", "--vision-tower", str(tiny_tower), "--language-model", str(tiny_lm), "--output", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "processor_config.json").is_file()
    assert main(["vlm", "build", "--vision-tower", str(tiny_tower), "--language-model", str(tiny_lm), "--output", str(out)]) != 0
    assert main(["vlm", "build", "--vision-tower", str(tiny_tower), "--language-model", str(tiny_lm), "--output", str(out),
                 "--overwrite"]) == 0

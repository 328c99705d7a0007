"""The two image-reliance measurements: AUC and derangement by hand; an image-blind model scores
own = other and AUC 0.5 exactly; the batched, left-padded AUC equals one prompt at a time."""

from __future__ import annotations

import pytest

from cings.vision.reliance import auc, derangement, image_reliance, presence_auc


def test_auc_by_hand():
    assert auc([2, 3], [1]) == 1.0 and auc([1], [2, 3]) == 0.0
    assert auc([1, 3], [2, 2]) == 0.5 and auc([1], [1]) == 0.5
    assert auc([3, 1], [2]) == 0.5
    with pytest.raises(ValueError):
        auc([], [1])


def test_derangement_moves_everyone_and_is_seeded():
    for n in (2, 3, 10, 64):
        d = derangement(n, seed=1)
        assert sorted(d) == list(range(n)) and all(d[i] != i for i in range(n))
    assert derangement(10, 3) == derangement(10, 3)
    with pytest.raises(ValueError):
        derangement(1)


def _blind(tiny_vlm):
    """The tiny VLM with its projector's output zeroed: every image looks the same to the LM."""
    import torch
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_vlm, dtype=torch.float32)
    with torch.no_grad():
        last = model.model.multi_modal_projector.linear_2
        last.weight.zero_()
        last.bias.zero_()
    return model


def _caption_rows(caption_set):
    import json

    from PIL import Image

    rows = json.loads(caption_set.read_text())
    return rows, [Image.open(caption_set.parent / r["image"]).convert("RGB") for r in rows]


def test_image_reliance_sees_dependence_and_none_in_a_blind_model(tiny_vlm, caption_set):
    rows, images = _caption_rows(caption_set)
    seeing = image_reliance(tiny_vlm, rows, images)
    assert seeing["records"] == 4 and seeing["tokens"] > 0
    assert seeing["own_image_loss"] != pytest.approx(seeing["other_image_loss"], abs=1e-7)
    one_by_one = image_reliance(tiny_vlm, rows, images, batch_size=1)
    assert one_by_one["own_image_loss"] == pytest.approx(seeing["own_image_loss"], abs=1e-5)
    assert one_by_one["other_image_loss"] == pytest.approx(seeing["other_image_loss"], abs=1e-5)
    blind = image_reliance(tiny_vlm, rows, images, model=_blind(tiny_vlm))
    assert blind["own_image_loss"] == pytest.approx(blind["other_image_loss"], abs=1e-6)


def test_image_reliance_equals_transformers_own_loss(tiny_vlm, caption_set):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from cings.vision.data import ROLES, ConversationRenderer

    rows, images = _caption_rows(caption_set)
    processor = AutoProcessor.from_pretrained(tiny_vlm)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_vlm, dtype=torch.float32).eval()
    renderer = ConversationRenderer(processor.tokenizer, "<image>", int(model.config.image_seq_length))
    ids, labels = renderer.render([{"role": ROLES[c["from"]], "content": c["value"]} for c in rows[0]["conversations"]])
    pixels = processor.image_processor([images[0]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids]), pixel_values=pixels, labels=torch.tensor([labels])).loss.item()
    got = image_reliance(tiny_vlm, rows[:2], images[:2], model=model, processor=processor, batch_size=2)
    own_first = image_reliance(tiny_vlm, rows[:1] * 2, images[:1] * 2, model=model, processor=processor)
    assert own_first["own_image_loss"] == pytest.approx(expected, abs=1e-5)
    assert got["records"] == 2


def test_presence_auc_batched_equals_one_at_a_time_and_blind_is_chance(tiny_vlm, caption_set):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from cings.vision.data import ConversationRenderer

    rows, images = _caption_rows(caption_set)
    kinds = [r["id"] for r in rows]  # the colour names
    present = [{kinds[i], kinds[(i + 1) % 4]} for i in range(4)]  # every kind present in exactly half
    got = presence_auc(tiny_vlm, images, present, kinds)
    assert got["pairs"] == 16

    processor = AutoProcessor.from_pretrained(tiny_vlm)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_vlm, dtype=torch.float32).eval()
    tok = processor.tokenizer
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    renderer = ConversationRenderer(tok, "<image>", int(model.config.image_seq_length))
    pos, neg = [], []
    with torch.no_grad():
        for image, there in zip(images, present):
            pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
            for kind in kinds:
                ids = torch.tensor([renderer.prompt_ids([{"role": "user", "content": f"<image>\nIs there a {kind} in the image?"}])])
                logits = model(input_ids=ids, pixel_values=pixels).logits[0, -1]
                (pos if kind in there else neg).append((logits[yes] - logits[no]).item())
    assert got["mean_score_present"] == pytest.approx(sum(pos) / len(pos), abs=1e-4)
    assert got["mean_score_absent"] == pytest.approx(sum(neg) / len(neg), abs=1e-4)

    blind = presence_auc(tiny_vlm, images, present, kinds, model=_blind(tiny_vlm))
    assert blind["auc"] == 0.5  # scores depend on the kind only, and each kind is positive as often as negative

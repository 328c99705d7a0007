"""cings.vision.data: LLaVA records -> ids and labels, trained on the answers only, equal to what the
processor renders; bad records are errors that name the record, untrainable ones are counted."""

from __future__ import annotations

import json

import pytest

from cings.masking import IGNORE_INDEX
from cings.vision.build import IMAGE_TOKEN
from cings.vision.data import ConversationRenderer, VlmCollator, VlmDataError, load_examples, read_llava


@pytest.fixture(scope="module")
def processor(tiny_vlm):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_vlm)


@pytest.fixture(scope="module")
def renderer(processor):
    return ConversationRenderer(processor.tokenizer, IMAGE_TOKEN, 16, max_length=256)


def _record(rid="a", image="red.png", turns=None):
    turns = turns or [{"from": "human", "value": "<image>\nWhat colour is this?"}, {"from": "gpt", "value": "It is red."}]
    return {"id": rid, "image": image, "conversations": turns}


def test_labels_train_the_answers_and_their_end_of_turn_only(renderer, processor):
    tok = processor.tokenizer
    turns = [{"from": "human", "value": "<image>\nWhat colour is this?"}, {"from": "gpt", "value": "It is red."},
             {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "A square."}]
    ids, labels = renderer.render([{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]} for t in turns])
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert ids.count(image_id) == 16
    assert all(lab == IGNORE_INDEX for i, lab in zip(ids, labels) if i == image_id)
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tok.decode(trained) == "It is red.<|im_end|>A square.<|im_end|>"
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids, labels))


def test_prompt_ids_equal_the_processors_rendering(renderer, processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nIs there a cat?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    from PIL import Image

    expected = processor(images=[Image.new("RGB", (64, 64))], text=[text], return_tensors="pt")["input_ids"][0].tolist()
    assert renderer.prompt_ids([{"role": "user", "content": f"{IMAGE_TOKEN}\nIs there a cat?"}]) == expected


def test_read_llava_json_and_jsonl(tmp_path):
    rows = [_record("a"), _record("b")]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["id"] for _, r in read_llava(tmp_path / "d.json")] == ["a", "b"]
    assert [w for w, _ in read_llava(tmp_path / "d.jsonl")] == [f"{tmp_path / 'd.jsonl'}:1", f"{tmp_path / 'd.jsonl'}:2"]
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(VlmDataError, match="JSON array"):
        list(read_llava(tmp_path / "obj.json"))


@pytest.mark.parametrize("row, message", [
    ({"image": "red.png", "conversations": []}, "field 'id' missing"),
    (_record(turns=[{"from": "human", "value": "<image>\nhi"}]), "no gpt turn"),
    (_record(turns=[{"from": "bot", "value": "x"}]), r"conversations\[0\]"),
    (_record(image="nowhere.png"), "field 'image'.*does not exist"),
    (_record(turns=[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]), "exactly one '<image>'"),
    ({"id": "t", "conversations": [{"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "ok"}]}, "without field 'image'"),
])
def test_bad_records_name_the_record_and_field(tmp_path, caption_set, renderer, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record("ok")) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(VlmDataError, match=f"bad.jsonl:2: .*{message}"):
        load_examples(path, caption_set.parent, renderer)


def test_duplicate_ids_refused(tmp_path, caption_set, renderer):
    path = tmp_path / "dup.jsonl"
    path.write_text(json.dumps(_record("a")) + "\n" + json.dumps(_record("a")) + "\n")
    with pytest.raises(VlmDataError, match="dup.jsonl:2: id 'a' appears twice"):
        load_examples(path, caption_set.parent, renderer)


def test_untrainable_records_are_dropped_and_counted(tmp_path, caption_set, processor):
    ok_ids, _ = ConversationRenderer(processor.tokenizer, IMAGE_TOKEN, 16).render(
        [{"role": "user", "content": "<image>\nWhat colour is this?"}, {"role": "assistant", "content": "It is red."}])
    short = ConversationRenderer(processor.tokenizer, IMAGE_TOKEN, 16, max_length=len(ok_ids) + 5)
    long_answer = _record("long", turns=[{"from": "human", "value": "<image>\nDescribe."},
                                         {"from": "gpt", "value": "red " * 60}])
    control = _record("ctl", turns=[{"from": "human", "value": "<image>\nSay <|im_end|>"}, {"from": "gpt", "value": "no"}])
    text_only = {"id": "txt", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([_record("ok"), long_answer, control, text_only]))
    examples, stats = load_examples(path, caption_set.parent, short)
    assert [e.id for e in examples] == ["ok", "txt"] and examples[1].image is None
    assert stats.records == 4 and stats.kept == 2 and stats.images == 1
    assert dict(stats.dropped) == {"too_long": 1, "control_text": 1}
    assert "dropped: control_text 1, too_long 1" in stats.lines()


def test_collator_pads_right_and_batches_pixels(caption_set, renderer, processor):
    examples, _ = load_examples(caption_set, None, renderer)
    collate = VlmCollator(processor.image_processor, processor.tokenizer.pad_token_id)
    feats = [{"input_ids": e.input_ids, "labels": e.labels, "image": e.image} for e in examples[:2]]
    feats[1] = {**feats[1], "input_ids": feats[1]["input_ids"][:-3], "labels": feats[1]["labels"][:-3]}
    batch = collate(feats)
    assert tuple(batch["pixel_values"].shape) == (2, 3, 64, 64)
    n, width = len(feats[1]["input_ids"]), len(feats[0]["input_ids"])
    assert width > n and batch["input_ids"].shape[1] == width
    assert batch["attention_mask"][1].tolist() == [1] * n + [0] * (width - n)
    assert batch["labels"][1, n:].tolist() == [IGNORE_INDEX] * (width - n)
    assert batch["input_ids"][0].tolist() == feats[0]["input_ids"]


def test_real_photographs_through_the_data_path(tmp_path, renderer, processor, tiny_vlm):
    """scikit-image's bundled photos (astronaut, cat, coffee, rocket), of mixed sizes, into one forward."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed (it is a cings dependency)")
    import torch
    from PIL import Image
    from transformers import LlavaForConditionalGeneration

    rows = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).save(tmp_path / f"{name}.jpg")
        rows.append({"id": name, "image": f"{name}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the photo?"}, {"from": "gpt", "value": f"A photo: {name}."}]})
    (tmp_path / "photos.json").write_text(json.dumps(rows))
    examples, stats = load_examples(tmp_path / "photos.json", None, renderer)
    assert stats.kept == 4 and stats.images == 4
    batch = VlmCollator(processor.image_processor, processor.tokenizer.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels, "image": e.image} for e in examples])
    assert tuple(batch["pixel_values"].shape) == (4, 3, 64, 64)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_vlm)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0

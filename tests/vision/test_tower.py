"""The study's vision tower: a plain CLIP folder that `vlm build` takes, preprocessing that is the
saved processor's own, a refusal to overwrite what is not ours, and (slow) an accurate default."""

from __future__ import annotations

import json

import pytest

from cings.vision import tower as tw
from cings.vision.scenes import draw, make_scenes

TINY = dict(n_train=64, n_test=32, steps=3, batch_size=16, hidden_size=32, layers=2)


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tower") / "t"
    logs: list[str] = []
    report = tw.train_tower(out, log=logs.append, **TINY)
    return out, report, logs


def test_folder_loads_with_the_clip_classes_and_reports(tiny_trained):
    from transformers import AutoImageProcessor, CLIPVisionModel

    out, report, logs = tiny_trained
    model = CLIPVisionModel.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert AutoImageProcessor.from_pretrained(out).crop_size == {"height": 64, "width": 64}
    saved = json.loads((out / tw.REPORT_FILE).read_text())
    assert saved == report and report["config"]["image_tokens"] == 16
    assert 0 <= report["heldout_label_accuracy"] <= 1 and 0 <= report["heldout_exact_accuracy"] <= 1
    assert report["test_seed"] == report["seed"] + tw.TEST_SEED_OFFSET
    assert any("held-out" in line for line in logs)


def test_reloaded_processor_gives_the_training_pixels(tiny_trained):
    import torch
    from transformers import AutoImageProcessor

    out, _, _ = tiny_trained
    images = [draw(s) for s in make_scenes(5, seed=0)]
    reloaded = AutoImageProcessor.from_pretrained(out)(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(reloaded.float(), tw.pixels(tw.make_processor(), images))


def test_same_seed_same_weights(tmp_path, tiny_trained):
    import torch
    from transformers import CLIPVisionModel

    out, report, _ = tiny_trained
    again = tmp_path / "again"
    assert tw.train_tower(again, **TINY)["heldout_label_accuracy"] == report["heldout_label_accuracy"]
    a, b = CLIPVisionModel.from_pretrained(out).state_dict(), CLIPVisionModel.from_pretrained(again).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vlm_build_takes_it(tmp_path, tiny_trained, tiny_lm):
    from transformers import AutoProcessor

    from cings.vision.build import build_vlm

    out, _, _ = tiny_trained
    build_vlm(out, tiny_lm, tmp_path / "vlm")
    processor = AutoProcessor.from_pretrained(tmp_path / "vlm")
    batch = processor(text="<image>\nWhat is there?", images=[draw(make_scenes(1, seed=0)[0])], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image_id).sum()) == 16


def test_refuses_a_folder_it_did_not_write(tmp_path, tiny_trained):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        tw.train_tower(other, **TINY)
    with pytest.raises(ValueError, match="earlier tower folder"):
        tw.train_tower(other, overwrite=True, **TINY)
    assert (other / "notes.txt").read_text() == "keep"
    out, _, _ = tiny_trained
    with pytest.raises(ValueError, match="not empty"):
        tw.train_tower(out, **TINY)


@pytest.mark.slow
def test_default_tower_tells_the_shapes_apart(tmp_path):
    report = tw.train_tower(tmp_path / "tower")
    assert report["heldout_label_accuracy"] >= 0.95, report
    assert min(report["per_kind"].values()) >= 0.9, report["per_kind"]

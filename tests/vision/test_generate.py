"""cings.vision.generate: one prediction per question, batched answers equal one-at-a-time ones, and a
resumed output keeps its settings."""

from __future__ import annotations

import json

import pytest

from cings.vision.generate import VlmGenerateError, generate_answers


def _questions(folder, n=5):
    names = ["red", "green", "blue", "yellow"]
    rows = [{"question_id": i, "image": f"{names[i % 4]}.png", "text": f"Is there a {names[(i + 1) % 4]} square?",
             "label": "yes" if i % 2 else "no", "split": "random"} for i in range(n)]
    path = folder / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answers_carry_label_and_split_and_batching_changes_nothing(tmp_path, tiny_vlm, caption_set):
    questions = _questions(tmp_path)
    one = generate_answers(tiny_vlm, questions, tmp_path / "one.jsonl", image_folder=caption_set.parent, max_new_tokens=4,
                           batch_size=1)
    assert one == {"output": str(tmp_path / "one.jsonl"), "questions": 5, "generated": 5, "kept": 0}
    generate_answers(tiny_vlm, questions, tmp_path / "four.jsonl", image_folder=caption_set.parent, max_new_tokens=4,
                     batch_size=4)
    a, b = _rows(tmp_path / "one.jsonl"), _rows(tmp_path / "four.jsonl")
    assert [r["id"] for r in a] == ["0", "1", "2", "3", "4"]
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]  # left padding does not change greedy answers
    assert {k for r in a for k in r} == {"id", "prediction", "label", "split", "question", "image"}
    assert a[1]["label"] == "yes" and a[0]["question"] == "Is there a green square?"


def test_resume_adds_missing_ids_and_refuses_other_settings(tmp_path, tiny_vlm, caption_set):
    questions = _questions(tmp_path)
    out = tmp_path / "pred.jsonl"
    generate_answers(tiny_vlm, questions, out, image_folder=caption_set.parent, max_new_tokens=2, batch_size=2)
    full = _rows(out)
    out.write_text("".join(json.dumps(r) + "\n" for r in full[:2]))  # as if killed after the first batch
    report = generate_answers(tiny_vlm, questions, out, image_folder=caption_set.parent, max_new_tokens=2, batch_size=2,
                              resume=True)
    assert report["generated"] == 3 and report["kept"] == 2
    assert _rows(out) == full
    with pytest.raises(VlmGenerateError, match="other settings"):
        generate_answers(tiny_vlm, questions, out, image_folder=caption_set.parent, max_new_tokens=3, resume=True)
    with pytest.raises(VlmGenerateError, match="exists"):
        generate_answers(tiny_vlm, questions, out, image_folder=caption_set.parent)


def test_bad_questions_name_the_line(tmp_path, tiny_vlm, caption_set):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": 1, "image": "red.png", "question": "?"}) + "\n" + json.dumps({"id": 2, "image": "red.png"}) + "\n")
    with pytest.raises(VlmGenerateError, match=r"q.jsonl:2: field 'question' missing"):
        generate_answers(tiny_vlm, path, tmp_path / "o.jsonl", image_folder=caption_set.parent)
    path.write_text(json.dumps({"id": 1, "image": "gone.png", "question": "?"}) + "\n")
    with pytest.raises(VlmGenerateError, match=r"q.jsonl:1: field 'image'.*does not exist"):
        generate_answers(tiny_vlm, path, tmp_path / "o.jsonl", image_folder=caption_set.parent)
    assert not (tmp_path / "o.jsonl").exists()

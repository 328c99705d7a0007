"""cings.pope: the official POPE parser with its quirks, a strict reading, metrics worked by hand."""

from __future__ import annotations

import json

import pytest

from cings.pope import PopeError, evaluate_file, parse_answer, pope_metrics


@pytest.mark.parametrize("text, answer", [
    ("No.", "no"), ("No", "no"), ("No, there is a dog.", "no"), ("Yes, there is no dog.", "no"), ("There is not.", "no"),
    ("Yes", "yes"), ("Yes.", "yes"), ("yes", "yes"),
    # the official rule's quirks: case-sensitive, punctuation kept, first sentence only, anything else is yes
    ("NO", "yes"), ("No!", "yes"), ("no\n", "yes"), ("Nope", "yes"), ("I don't think so", "yes"), ("", "yes"),
    ("Yes. No.", "yes"), ("no,", "no"),
])
def test_official_rule(text, answer):
    assert parse_answer(text) == answer == parse_answer(text, "official")


@pytest.mark.parametrize("text, answer", [
    ("NO", "no"), ("No!", "no"), ("no\n", "no"), ("Nope", "no"), ("I do not see one.", "no"), ("none", "no"),
    ("Yes", "yes"), ("YES!", "yes"), ("", "yes"), ("Yes. No.", "yes"), ("There is a dog", "yes"),
])
def test_strict_rule(text, answer):
    assert parse_answer(text, "strict") == answer


def test_unknown_rule():
    with pytest.raises(PopeError, match="unknown rule"):
        parse_answer("yes", "lenient")


def test_metrics_by_hand():
    # 8 answers: TP 3, FP 1, TN 2, FN 2
    pred = ["yes", "yes", "yes", "yes", "no", "no", "no", "no"]
    gold = ["yes", "yes", "yes", "no", "no", "no", "yes", "yes"]
    m = pope_metrics(pred, gold)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (3, 1, 2, 2, 8)
    assert m["accuracy"] == pytest.approx(100 * 5 / 8)
    assert m["precision"] == pytest.approx(100 * 3 / 4)
    assert m["recall"] == pytest.approx(100 * 3 / 5)
    assert m["f1"] == pytest.approx(100 * 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    assert m["yes_ratio"] == pytest.approx(50.0)


def test_zero_divisions_are_zero_not_errors():
    none_yes = pope_metrics(["no", "no"], ["yes", "no"])
    assert none_yes["precision"] == 0.0 and none_yes["recall"] == 0.0 and none_yes["f1"] == 0.0
    assert none_yes["accuracy"] == 50.0 and none_yes["yes_ratio"] == 0.0
    no_positive = pope_metrics(["yes", "no"], ["no", "no"])
    assert no_positive["recall"] == 0.0 and no_positive["precision"] == 0.0 and no_positive["f1"] == 0.0
    with pytest.raises(PopeError, match="2 predictions for 1 labels"):
        pope_metrics(["yes", "no"], ["yes"])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_file_overall_and_per_split(tmp_path):
    rows = [  # random: TP, TN, FP ("NO" is yes officially), FN; adversarial: TP, FP; one row without a split
        {"id": 1, "prediction": "Yes, there is.", "label": "yes", "split": "random"},
        {"id": 2, "prediction": "No", "label": "no", "split": "random"},
        {"id": 3, "prediction": "NO", "label": "no", "split": "random"},
        {"id": 4, "prediction": "No.", "label": "yes", "split": "random"},
        {"id": 5, "prediction": "Yes", "label": " YES ", "split": "adversarial"},
        {"id": 6, "prediction": "", "label": "no", "split": "adversarial"},
        {"id": 7, "prediction": "There is no cat.", "label": "no"},
    ]
    out = tmp_path / "out" / "metrics.json"
    m = evaluate_file(_write(tmp_path / "p.jsonl", rows), out)
    assert json.loads(out.read_text()) == m
    assert m["n"] == 7 and (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 2, 2, 1)
    assert m["accuracy"] == pytest.approx(400 / 7) and m["yes_ratio"] == pytest.approx(400 / 7)
    assert list(m["splits"]) == ["adversarial", "random"]
    rnd, adv = m["splits"]["random"], m["splits"]["adversarial"]
    assert (rnd["n"], rnd["accuracy"], rnd["precision"], rnd["recall"], rnd["yes_ratio"]) == (4, 50.0, 50.0, 50.0, 50.0)
    assert (adv["n"], adv["accuracy"], adv["precision"], adv["recall"], adv["yes_ratio"]) == (2, 50.0, 50.0, 100.0, 100.0)
    assert adv["f1"] == pytest.approx(200 * 0.5 / 1.5)
    strict = evaluate_file(tmp_path / "p.jsonl", rule="strict")
    assert strict["splits"]["random"]["accuracy"] == 75.0  # "NO" read as no
    assert evaluate_file(_write(tmp_path / "q.jsonl", rows[-1:]))["splits"] == {}


@pytest.mark.parametrize("row, message", [
    ({"id": 9, "prediction": "yes", "label": "maybe"}, "field 'label' must be 'yes' or 'no'"),
    ({"id": 9, "label": "yes"}, "field 'prediction' missing"),
    ({"id": 9, "prediction": 1, "label": "yes"}, "field 'prediction' must be"),
    ({"prediction": "yes", "label": "no"}, "field 'id' missing"),
    ({"id": 1, "prediction": "yes", "label": "no"}, "id '1' appears twice"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    path = _write(tmp_path / "bad.jsonl", [{"id": 1, "prediction": "yes", "label": "yes"}, row])
    with pytest.raises(PopeError, match=f"bad.jsonl:2: {message}"):
        evaluate_file(path)


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(PopeError, match="no predictions"):
        evaluate_file(tmp_path / "e.jsonl")


def test_cli(tmp_path, capsys):
    from cings.cli import main

    path = _write(tmp_path / "p.jsonl", [{"id": 1, "prediction": "Yes", "label": "yes", "split": "popular"},
                                         {"id": 2, "prediction": "Yes", "label": "no", "split": "popular"}])
    out = tmp_path / "m.json"
    assert main(["vlm", "evaluate", "--predictions", str(path), "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert {"accuracy", "precision", "recall", "f1", "yes_ratio", "n", "splits"} <= set(metrics)
    assert metrics["splits"]["popular"]["yes_ratio"] == 100.0
    _write(tmp_path / "bad.jsonl", [{"id": 1, "prediction": "Yes", "label": "y"}])
    assert main(["vlm", "evaluate", "--predictions", str(tmp_path / "bad.jsonl"), "--output", str(out)]) != 0
    assert "bad.jsonl:1" in capsys.readouterr().err

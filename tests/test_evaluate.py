"""`cings evaluate` on prediction files: metrics, and clear errors for bad files."""

import json

import pytest

from cings.evaluate import evaluate_file, read_predictions
from cings.records import RecordError


def write(tmp_path, rows, name="pred.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_metrics_file_holds_percentages_n_and_conflict_rates(tmp_path):
    rows = [{"id": "1", "prediction": "The Denver Broncos", "answers": ["Denver Broncos"], "parametric_answers": ["Carolina"]},
            {"id": "2", "prediction": "Carolina Panthers", "answers": ["Denver Broncos"], "parametric_answers": ["Carolina"]},
            {"id": "3", "prediction": "no idea", "answers": ["Paris"], "parametric_answers": ["Lyon"]},
            {"id": "4", "prediction": "Paris, not Lyon", "answers": ["Paris"], "parametric_answers": ["Lyon"]}]
    metrics, table = evaluate_file(write(tmp_path, rows), tmp_path / "m.json")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["n"] == 4 and saved["acc"] == 50.0 and saved["em"] == 25.0
    assert saved["context_rate"] == 50.0 and saved["memory_rate"] == 50.0
    assert saved["both_rate"] == 25.0 and saved["neither_rate"] == 25.0
    lo, hi = saved["acc_ci"]
    assert lo <= 50.0 <= hi
    assert "acc" in table.read_text()


def test_bad_prediction_files_are_clear_errors(tmp_path):
    with pytest.raises(RecordError, match=r"pred.jsonl:2: field 'prediction' is missing"):
        read_predictions(write(tmp_path, [{"id": "1", "prediction": "x", "answers": []}, {"id": "2", "answers": []}]))
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(RecordError, match="no predictions"):
        read_predictions(empty)


def test_the_metrics_file_keeps_full_precision(tmp_path):
    rows = [{"id": str(i), "prediction": "Paris" if i < 3 else "Lyon", "answers": ["Paris"]} for i in range(7)]
    _, table = evaluate_file(write(tmp_path, rows), tmp_path / "m.json", bootstrap=100)
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["acc"] == 100 * 3 / 7 and any(round(x, 4) != x for x in saved["acc_ci"])
    assert "42.9 [" in table.read_text()

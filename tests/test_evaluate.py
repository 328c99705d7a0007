"""`cings evaluate` on prediction files, and `cings eval-suite` end to end on a tiny model."""

import json

import pytest

from cings.cli import main
from cings.evaluate import evaluate_file, read_predictions
from cings.records import Context, Record, RecordError, write_records

from .conftest import build_tiny_bpe


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


def test_eval_suite_runs_every_entry_and_writes_report_and_chart(tmp_path, capsys):
    from cings.config import load_config
    from cings.train import train

    tok_dir = tmp_path / "tok"
    build_tiny_bpe().save_pretrained(tok_dir)
    records = [Record(id=f"r{i}", instruction=f"Question {i}?", response="Paris", answers=("Paris",),
                      contexts=(Context(text=f"Paris is it {i}.", gold=True), Context(text="Noise.", gold=False)))
               for i in range(6)]
    data = tmp_path / "records.jsonl"
    write_records(records, data)
    train(load_config(None, dict(model_config={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                               "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2},
                                 tokenizer=str(tok_dir), data=str(data), output_dir=str(tmp_path / "run"), max_steps=1,
                                 global_batch_size=2, micro_batch_size=2, save_strategy="no", max_length=256)),
          progress=False)
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""limit: 4
max_new_tokens: 3
entries:
  - {{name: gold, data: {data}, docs: gold, prompt: prefill}}
  - {{name: distract, data: {data}, docs: gold+distractors, ndocs: 2, prompt: input}}
  - {{name: closed, data: {data}, docs: none, prompt: raw}}
""")
    assert main(["eval-suite", "--suite", str(suite), "--model", str(tmp_path / "run"),
                 "--output-dir", str(tmp_path / "eval")]) == 0
    for name in ("gold", "distract", "closed"):
        metrics = json.loads((tmp_path / "eval" / name / "metrics.json").read_text())
        assert metrics["n"] == 4
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| gold" in report or "gold" in report.splitlines()[2]
    assert (tmp_path / "eval" / "report.png").stat().st_size > 1000


def test_the_metrics_file_keeps_full_precision(tmp_path):
    rows = [{"id": str(i), "prediction": "Paris" if i < 3 else "Lyon", "answers": ["Paris"]} for i in range(7)]
    _, table = evaluate_file(write(tmp_path, rows), tmp_path / "m.json", bootstrap=100)
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["acc"] == 100 * 3 / 7 and any(round(x, 4) != x for x in saved["acc_ci"])
    assert "42.9 [" in table.read_text()

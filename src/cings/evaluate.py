"""``cings evaluate``: a predictions file -> metrics (JSON) and a markdown table beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .jsonl import RecordError, iter_jsonl
from .metrics import metrics_table_markdown, score_predictions
from .records import type_name

__all__ = ["read_predictions", "evaluate_file"]


def _strings(row: dict, key: str, where: str) -> None:
    value = row[key]
    if not isinstance(value, list):
        raise RecordError(f"{where}: field '{key}' must be a list of strings, not {type_name(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            # A number or null would be scored as an answer no prediction matches.
            raise RecordError(f"{where}: field '{key}' must be a list of strings; item {i} is {type_name(item)}")


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Checked prediction rows: an object a line with a string ``id`` seen once, a string ``prediction``
    and ``answers`` (and any ``parametric_answers``) as lists of strings."""
    rows = []
    seen: dict[str, int] = {}
    for where, lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise RecordError(f"{where}: a prediction must be a JSON object, not {type_name(row)}")
        for key in ("id", "prediction", "answers"):
            if key not in row:
                raise RecordError(f"{where}: field '{key}' is missing")
        if not isinstance(row["id"], str):
            raise RecordError(f"{where}: field 'id' must be a string, not {type_name(row['id'])}")
        if not isinstance(row["prediction"], str):
            raise RecordError(f"{where}: field 'prediction' must be a string")
        _strings(row, "answers", where)
        if row.get("parametric_answers") is not None:
            _strings(row, "parametric_answers", where)
        if row["id"] in seen:
            # Counted twice, it would weigh twice in every metric.
            raise RecordError(f"{where}: id {row['id']!r} repeats line {seen[row['id']]}")
        seen[row["id"]] = lineno
        rows.append(row)
    if not rows:
        raise RecordError(f"{path}: no predictions (the file is empty)")
    return rows


def evaluate_file(predictions: str | Path, output: str | Path, *, rouge: bool = False, fever: bool = False,
                  bootstrap: int = 1000, seed: int = 0) -> tuple[dict[str, Any], Path]:
    """Score a predictions file; writes ``output`` (JSON) and a markdown table beside it."""
    rows = read_predictions(predictions)
    metrics = score_predictions(rows, rouge=rouge, fever=fever, bootstrap=bootstrap, seed=seed)
    metrics["predictions"] = str(predictions)
    metrics["settings"] = rows[0].get("settings", {})
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    table = output.with_suffix(".md")
    table.write_text(metrics_table_markdown(metrics) + "\n", encoding="utf-8")
    return metrics, table

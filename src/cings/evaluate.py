"""``cings evaluate``: a predictions file -> metrics (JSON) and a markdown table beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .metrics import metrics_table_markdown, score_predictions
from .records import RecordError

__all__ = ["read_predictions", "evaluate_file"]


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such file")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
        for key in ("id", "prediction", "answers"):
            if key not in row:
                raise RecordError(f"{path}:{lineno}: field '{key}' is missing")
        if not isinstance(row["prediction"], str):
            raise RecordError(f"{path}:{lineno}: field 'prediction' must be a string")
        if not isinstance(row["answers"], list):
            raise RecordError(f"{path}:{lineno}: field 'answers' must be a list of strings")
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

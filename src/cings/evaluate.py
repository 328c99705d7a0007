"""``cings evaluate`` (predictions -> metrics) and ``cings eval-suite`` (a list of settings -> one report)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .metrics import metrics_table_markdown, score_predictions
from .records import RecordError

__all__ = ["read_predictions", "evaluate_file", "run_suite", "DEFAULT_SUITE"]

DEFAULT_SUITE = Path(__file__).resolve().parents[2] / "configs" / "eval" / "default.yaml"


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


def _spread_sample(records: list, n: int | None, seed: int) -> list:
    """``n`` records spread over the whole file (seeded), in file order: the first 100 SQuAD questions
    are all about one Super Bowl."""
    if n is None or n >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep]


def run_suite(suite: str | Path | None, *, model: str | None, adapter: str | None = None, gguf_file: str | None = None,
              output_dir: str | Path, limit: int | None = None, batch_size: int = 8,
              max_new_tokens: int | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Generate and evaluate every entry of a suite YAML for one model; returns the report path."""
    import yaml

    from .generate import GenerationSettings, generate_records, load_for_generation
    from .prepare import prepare
    from .records import read_records
    from .report import compare_runs

    suite_path = Path(suite) if suite else DEFAULT_SUITE
    spec = yaml.safe_load(suite_path.read_text(encoding="utf-8"))
    entries = spec.get("entries") if isinstance(spec, dict) else None
    if not entries:
        raise ValueError(f"{suite_path}: a suite needs 'entries': a list of {{name, data, docs, prompt}}")
    limit = limit if limit is not None else spec.get("limit")
    out = Path(output_dir)
    model_obj, tok, options, model_spec = load_for_generation(model, adapter=adapter, gguf_file=gguf_file)
    runs = []
    for entry in entries:
        name = entry["name"]
        data = Path(entry["data"])
        if not data.is_absolute() and not data.exists():
            data = suite_path.parent / data
        if not data.exists():
            raise FileNotFoundError(f"{suite_path}: entry {name}: no data file {entry['data']}")
        fmt = entry.get("format", "records")
        records = list(read_records(data)) if fmt == "records" else prepare(fmt, [data])[0]
        records = _spread_sample(records, entry.get("limit", limit), int(spec.get("seed", 0)))
        settings = GenerationSettings(docs=entry.get("docs", "gold"), ndocs=int(entry.get("ndocs", 1)),
                                      prompt=entry.get("prompt", "prefill"),
                                      max_new_tokens=max_new_tokens or int(entry.get("max_new_tokens", spec.get("max_new_tokens", 300))),
                                      batch_size=batch_size, model=model_spec, adapter=adapter,
                                      extra={"dataset": name})
        pred = out / name / "predictions.jsonl"
        generate_records(records, model_obj, tok, options, settings, pred, resume=resume, progress=progress)
        evaluate_file(pred, out / name / "metrics.json")
        runs.append(f"{name}={out / name / 'metrics.json'}")
    report, _ = compare_runs(runs, out / "report.md", metrics=spec.get("metrics", ["acc", "em", "f1"]),
                             title=f"{model_spec}{' + ' + adapter if adapter else ''}: {suite_path.name}")
    return report
